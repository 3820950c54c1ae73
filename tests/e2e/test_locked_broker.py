"""The cloud and a gateway against a locked-down Mosquitto: the project's own password and ACL files, TLS only.

A private CA is made in the test; the broker gets a TLS listener with a server certificate from it. The
cloud connects as the ingest account (password from a file, CARBONLINK_MQTT_PASSWORD_FILE), the gateway
with the credentials its claim returned. Round trip: batch → ack, shadow desired → reported, command →
result. A second, claimed gateway tries to read the first one's topics and forge acks, and gets nothing
through (issue 10 §3).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import httpx
import pytest
import yaml

from carbonlink.cloud import provisioning
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.service import running_cloud
from carbonlink.cloud.store import open_store
from carbonlink.cloud.store.postgres import drop_schema
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.identity import load_or_create_key, public_key_hex
from carbonlink.kernel.mqtturl import MqttUrl
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.services import free_port, own_mosquitto, require_postgres, until
from tests.tlsfiles import make_ca

SITE = "site-locked"
TENANT = "acme"


@pytest.fixture(params=["sqlite", "postgres"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A storage URL on either back end (PostgreSQL in a throwaway schema)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloud.sqlite'}"
        return
    base, schema = require_postgres(), "cllocked_" + uuid.uuid4().hex[:12]
    yield f"{base}?schema={schema}"
    await drop_schema(base, schema)


async def test_cloud_and_gateway_round_trip_on_a_locked_tls_broker(tmp_path: Path, db: str) -> None:
    gw, other = "gw-" + uuid.uuid4().hex[:6], "gw-" + uuid.uuid4().hex[:6]
    pki = make_ca(tmp_path / "pki")

    # Provisioning as an operator would: two claims, the broker files, the ingest password in a file.
    store = open_store(db)
    await store.open()
    (tmp_path / "gw").mkdir()
    gw_key = load_or_create_key(tmp_path / "gw" / "gw.key")
    creds = {}
    for name, pub in ((gw, public_key_hex(gw_key)), (other, public_key_hex(load_or_create_key(tmp_path / "o.key")))):
        token, _ = await provisioning.issue_claim_token(store, TENANT, SITE, 600)
        creds[name] = (await provisioning.claim(store, token, name, "ed25519", pub)).mqtt_password
    _, operator_key = await create_api_key(store, TENANT, "operator", "test")
    ingest_pw = "ingest-" + uuid.uuid4().hex
    passwd, acl = await provisioning.broker_files(store, provisioning.mosquitto_password_hash(ingest_pw))
    await store.close()
    (tmp_path / "passwd").write_text(passwd)
    (tmp_path / "acl").write_text(acl)
    pw_file = tmp_path / "ingest.password"
    pw_file.write_text(ingest_pw + "\n")
    pw_file.chmod(0o600)

    tls_port = free_port()
    conf = (f"password_file {tmp_path / 'passwd'}\nacl_file {tmp_path / 'acl'}\n"
            f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
            f"keyfile {pki.server_key}\ntls_version tlsv1.2\n")
    with own_mosquitto(conf, anonymous=False):
        broker = f"mqtts://127.0.0.1:{tls_port}?cafile={pki.ca}"

        # TLS is really checked: a client that does not trust the test CA is refused.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(**MqttUrl.parse(f"mqtts://127.0.0.1:{tls_port}").client_kwargs()
                                      | {"username": gw, "password": creds[gw]}, identifier="no-ca"):
                pass
        # And the locked broker refuses the cloud without its credentials.
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client(**MqttUrl.parse(broker).client_kwargs(), identifier="no-creds"):
                pass

        cloud_url = MqttUrl.from_env(broker, {"CARBONLINK_MQTT_USERNAME": provisioning.INGEST_USER,
                                              "CARBONLINK_MQTT_PASSWORD_FILE": str(pw_file)})
        assert ingest_pw not in str(cloud_url) and ingest_pw not in repr(cloud_url)
        async with ModbusDeviceHost(CemsStack().fill, port=free_port()) as sim, \
                running_cloud(db, cloud_url, http_port=free_port()) as cloud:
            await asyncio.wait_for(cloud.control.connected.wait(), 15)
            assert cloud.ingest.state == "connected"
            http = httpx.AsyncClient(base_url=cloud.dashboard_url.rstrip("/"), timeout=30,
                                     headers={"X-API-Key": operator_key})
            # The other gateway: its own credentials, trying to read the first one's traffic.
            spy = aiomqtt.Client(**MqttUrl.parse(broker).client_kwargs() | {"username": other,
                                                                             "password": creds[other]},
                                 identifier="spy")
            async with spy:
                for t in (f"cl/{SITE}/{gw}/#", f"cl/{SITE}/+/telemetry", "cl/#"):
                    await spy.subscribe(t, qos=1)
                cfg_path = tmp_path / "gw" / "gateway.yaml"
                cfg_path.write_text(yaml.safe_dump({
                    "gateway": {"id": gw, "site": SITE, "key_file": str(tmp_path / "gw" / "gw.key"),
                                "data_dir": str(tmp_path / "gw" / "edge")},
                    "mqtt": {"url": broker, "username": gw, "password": creds[gw], "ack_timeout_s": 2},
                    "batch": {"max_readings": 500, "max_age_s": 0.3},
                    "devices": [{"id": "cems", "driver": "modbus_tcp", "host": "127.0.0.1", "port": sim.port,
                                 "poll_interval_s": 0.5, "pointmap": "cems"}]}))
                agent = EdgeAgent(load_gateway_config(cfg_path), config_path=cfg_path)
                await agent.start()
                try:
                    # Batch → committed → acked, over TLS with each side's own account.
                    await until(lambda: agent.uplink.counters.batches_acked >= 2, 20)
                    assert cloud.ingest.counters.batches_committed >= 2
                    # Shadow: desired set through the API reaches the gateway, which reports it.
                    r = await http.patch(f"/api/gateways/{gw}/shadow",
                                         json={"state": {"desired": {"log_level": "WARNING"}}})
                    assert r.status_code == 200, r.text

                    async def reported() -> bool:
                        s = (await http.get(f"/api/gateways/{gw}/shadow")).json()
                        return s["state"]["reported"].get("log_level") == "WARNING"
                    await until(reported, 20)
                    # Command → result.
                    r = await http.post(f"/api/gateways/{gw}/commands", json={"name": "read_now",
                                                                              "args": {"device": "cems"}})
                    assert r.status_code == 200 and r.json()["status"] == "ok", r.text

                    # The spy forges acks and telemetry for the first gateway, then publishes its own
                    # status as a barrier (one client's messages arrive in order).
                    acked_before = agent.uplink.counters.batches_acked
                    refused_before = agent.uplink.counters.batches_refused + agent.uplink.counters.bogus_acks
                    forged_ack = json.dumps({"seq": 1, "status": "rejected", "reason": "forged"}).encode()
                    await spy.publish(f"cl/{SITE}/{gw}/ack", forged_ack, qos=1)
                    await spy.publish(f"cl/{SITE}/{gw}/telemetry", b"forged-telemetry", qos=1)
                    await spy.publish(f"cl/{SITE}/{gw}/cmd/read_now", b"forged-command", qos=1)
                    await spy.publish(f"cl/{SITE}/{other}/status", b"online", qos=1)
                    await until(lambda: agent.uplink.counters.batches_acked > acked_before + 2, 20)
                finally:
                    await agent.stop()
                # A message the spy may read (its own ack topic, from the cloud's account) closes the window:
                # everything before it was delivered or dropped. Nothing of the first gateway's traffic
                # (telemetry, acks, shadow, commands, forgeries) reached the spy.
                async with aiomqtt.Client(**cloud_url.client_kwargs(), identifier="marker") as cl:
                    await cl.publish(f"cl/{SITE}/{other}/ack", b"marker", qos=1)
                seen = []
                async with asyncio.timeout(10):
                    async for m in spy.messages:
                        seen.append((str(m.topic), m.payload))
                        if m.payload == b"marker":
                            break
                assert seen == [(f"cl/{SITE}/{other}/ack", b"marker")]
                assert agent.uplink.counters.batches_refused + agent.uplink.counters.bogus_acks == refused_before
                # The forged telemetry never reached the ingest either: no dead letter, no rejection.
                assert cloud.ingest.counters.rejected_messages == 0
                assert not any(b"forged" in bytes(d.get("raw") or b"") for d in await cloud.store.audit.dead_letters())
            await http.aclose()
