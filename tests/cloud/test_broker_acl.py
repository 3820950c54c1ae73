"""A real Mosquitto started with the generated password and ACL files keeps each gateway to its own topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud import provisioning
from carbonlink.cloud.store import open_store
from carbonlink.edge.identity import public_key_hex
from tests.services import own_mosquitto


async def test_generated_acl_confines_each_gateway(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
    await store.open()
    creds = {}
    for gw in ("gw-1", "gw-2"):
        token, _ = await provisioning.issue_claim_token(store, "acme", "site-a", 600)
        res = await provisioning.claim(store, token, gw, "ed25519", public_key_hex(Ed25519PrivateKey.generate()))
        creds[gw] = res.mqtt_password
    passwd, acl = await provisioning.broker_files(store, provisioning.mosquitto_password_hash("ingest-pw"))
    await store.close()
    (tmp_path / "passwd").write_text(passwd)
    (tmp_path / "acl").write_text(acl)
    conf = f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n"
    with own_mosquitto(conf, anonymous=False) as (_url, port, _d):
        def client(user: str, password: str, cid: str) -> aiomqtt.Client:
            return aiomqtt.Client("127.0.0.1", port, username=user, password=password, identifier=cid,
                                  protocol=aiomqtt.ProtocolVersion.V5)

        # Wrong password and no password are refused at connect.
        with pytest.raises(aiomqtt.MqttError):
            async with client("gw-1", "wrong", "x1"):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", port, identifier="anon"):
                pass
        async with client(provisioning.INGEST_USER, "ingest-pw", "ingest") as ingest, \
                client("gw-1", creds["gw-1"], "gw1") as gw1:
            await ingest.subscribe("cl/+/+/telemetry", qos=1)
            await gw1.publish("cl/site-a/gw-2/telemetry", b"forged", qos=1)  # another gateway's topic
            await gw1.publish("cl/site-a/gw-1/ack", b"self-ack", qos=1)  # only the cloud may ack
            await gw1.publish("cl/site-a/gw-1/telemetry", b"own", qos=1)
            got = []
            async with asyncio.timeout(5):
                async for m in ingest.messages:
                    got.append((str(m.topic), m.payload))
                    if m.payload == b"own":
                        break
            await asyncio.sleep(0.3)
            assert got == [("cl/site-a/gw-1/telemetry", b"own")]
            # Reading another gateway's acks: Mosquitto 2.0 grants the SUBACK but checks the ACL on
            # delivery, so what counts is that nothing of gw-2's ever reaches gw-1.
            await gw1.subscribe("cl/site-a/gw-2/ack", qos=1)
            await gw1.subscribe("cl/site-a/gw-1/ack", qos=1)
            await ingest.publish("cl/site-a/gw-2/ack", b"for gw-2", qos=1)
            await ingest.publish("cl/site-a/gw-1/ack", b"for gw-1", qos=1)
            seen = []
            async with asyncio.timeout(5):
                async for m in gw1.messages:
                    seen.append(m.payload)
                    if m.payload == b"for gw-1":
                        break
            await asyncio.sleep(0.3)
            assert seen == [b"for gw-1"]
