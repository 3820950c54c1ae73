"""A real Mosquitto started with the generated password and ACL files keeps each gateway to its own topics."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import httpx
import pytest
from click.testing import Result
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from carbonlink.cloud import provisioning
from carbonlink.cloud.api import create_app
from carbonlink.cloud.store import ClaimError, Store, open_store
from carbonlink.commands.faults.lab import stop_process
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel import ids
from carbonlink.kernel.ports import port_open
from tests.services import free_port, own_mosquitto, require


@contextlib.contextmanager
def acl_broker(folder: Path, passwd: str, acl: str) -> Iterator[int]:
    """A private Mosquitto with these password and ACL files (written into folder), no anonymous users;
    yields its port."""
    (folder / "passwd").write_text(passwd)
    (folder / "acl").write_text(acl)
    conf = f"password_file {folder / 'passwd'}\nacl_file {folder / 'acl'}\n"
    with own_mosquitto(conf, anonymous=False) as (_url, port, _d):
        yield port


async def received(client: aiomqtt.Client, until: bytes, with_topic: bool = False) -> list:
    """What the client receives, in order, up to and including the payload ``until`` (5 s at most)."""
    got: list = []
    async with asyncio.timeout(5):
        async for m in client.messages:
            got.append((str(m.topic), m.payload) if with_topic else m.payload)
            if m.payload == until:
                return got
    return got


def ids_group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


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
    with acl_broker(tmp_path, passwd, acl) as port:
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
            got = await received(ingest, until=b"own", with_topic=True)
            await asyncio.sleep(0.3)
            assert got == [("cl/site-a/gw-1/telemetry", b"own")]
            # Reading another gateway's acks: Mosquitto 2.0 grants the SUBACK but checks the ACL on
            # delivery, so what counts is that nothing of gw-2's ever reaches gw-1.
            await gw1.subscribe("cl/site-a/gw-2/ack", qos=1)
            await gw1.subscribe("cl/site-a/gw-1/ack", qos=1)
            await ingest.publish("cl/site-a/gw-2/ack", b"for gw-2", qos=1)
            await ingest.publish("cl/site-a/gw-1/ack", b"for gw-1", qos=1)
            seen = await received(gw1, until=b"for gw-1")
            await asyncio.sleep(0.3)
            assert seen == [b"for gw-1"]


# --- reserved account names and duplicate users (issue 10 §2) -------------------------------------------

@pytest.mark.parametrize("gateway", ["carbonlink-ingest", "CarbonLink-Ingest", "carbonlink-ingest-control",
                                     "carbonlink-anchor", "admin", "Mosquitto"])
async def test_a_claim_never_takes_a_cloud_account_name(any_store: Store, gateway: str) -> None:
    token, _ = await provisioning.issue_claim_token(any_store, "acme", "site-a", 600)
    key = public_key_hex(Ed25519PrivateKey.generate())
    with pytest.raises(ClaimError, match="reserved for the cloud's own broker accounts"):
        await provisioning.claim(any_store, token, gateway, "ed25519", key)
    with pytest.raises(ClaimError, match="reserved"):  # an ESP32 node's claim: the same namespace
        await provisioning.claim(any_store, token, gateway, "hmac-sha256", "ab" * 32)
    assert await any_store.registry.get_gateway(gateway) is None
    await provisioning.claim(any_store, token, "gw-ok", "ed25519", key)  # the refusals did not use the token


async def test_the_claim_api_answers_409_and_keeps_the_token(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
    await store.open()
    try:
        token, _ = await provisioning.issue_claim_token(store, "acme", "site-a", 600)
        key = public_key_hex(Ed25519PrivateKey.generate())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)), base_url="http://t") as c:
            r = await c.post("/api/provision/claim",
                             json={"token": token, "gateway": provisioning.INGEST_USER, "key": key})
            assert r.status_code == 409 and "reserved" in r.json()["detail"]
            r = await c.post("/api/provision/claim", json={"token": token, "gateway": "gw-1", "key": key})
            assert r.status_code == 201
    finally:
        await store.close()


async def _account(store: Store, gateway: str, username: str) -> None:
    """A broker account written to the store directly, as an old release or a hand edit could have."""
    token, _ = await provisioning.issue_claim_token(store, "acme", "site-a", 600)
    await store.registry.redeem_claim(provisioning.hash_token(token), gateway, "ed25519",
                                      public_key_hex(Ed25519PrivateKey.generate()), username,
                                      provisioning.mosquitto_password_hash("pw", iterations=1), 1)


@pytest.mark.parametrize(("gateway", "username", "says"), [
    ("carbonlink-ingest", "carbonlink-ingest", "already used by the cloud's own account"),
    ("Carbonlink-Ingest", "Carbonlink-Ingest", "reserved"),
    ("gw-2", "gw-1", "already used by gateway 'gw-1'"),
])
async def test_broker_files_refuse_a_user_twice_or_a_reserved_one(any_store: Store, gateway: str, username: str,
                                                                  says: str) -> None:
    await _account(any_store, "gw-1", "gw-1")
    await _account(any_store, gateway, username)
    with pytest.raises(provisioning.BrokerFilesError, match=says):
        await provisioning.broker_files(any_store, provisioning.mosquitto_password_hash("x", iterations=1))


def test_reserved_names_live_in_the_kernel() -> None:
    assert ids.is_reserved_account(provisioning.INGEST_USER)
    assert ids.is_reserved_account("CARBONLINK-whatever") and not ids.is_reserved_account("gw-carbonlink-1")
    with pytest.raises(ValueError, match="reserved"):
        ids.check_account_id("node", "root")
    assert ids.check_account_id("node", "tree-0007") == "tree-0007"


# --- the files Mosquitto reads: owner, group, mode --------------------------------------------------------

def _broker_files_cli(tmp_path: Path, *args: str) -> Result:
    from carbonlink.commands.provision import app

    return CliRunner().invoke(app, ["broker-files", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", *args])


def _claimed(tmp_path: Path, *gateways: str) -> dict[str, str]:
    async def go() -> dict[str, str]:
        store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
        await store.open()
        try:
            creds = {}
            for gw in gateways:
                token, _ = await provisioning.issue_claim_token(store, "acme", "site-a", 600)
                res = await provisioning.claim(store, token, gw, "ed25519",
                                               public_key_hex(Ed25519PrivateKey.generate()))
                creds[gw] = res.mqtt_password
            return creds
        finally:
            await store.close()

    return asyncio.run(go())


def test_broker_files_are_readable_by_the_brokers_group(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and ids_group("mosquitto") is not None, "root and a 'mosquitto' group",
            "run as root with Debian's mosquitto installed (apt-get install -y mosquitto)")
    _claimed(tmp_path, "gw-1")
    pw = tmp_path / "secrets" / "ingest.password"
    out = tmp_path / "auth"
    r = _broker_files_cli(tmp_path, "--out", str(out), "--ingest-password-file", str(pw), "--json")
    assert r.exit_code == 0, r.output
    gid = ids_group("mosquitto")
    for name in ("passwd", "acl"):
        st = (out / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, gid), name
    assert stat.S_IMODE(out.stat().st_mode) == 0o750 and out.stat().st_gid == gid
    assert stat.S_IMODE(pw.stat().st_mode) == 0o600  # the cloud's password itself stays owner-only
    assert pw.read_text().strip() not in r.output  # it was written to the file, not printed
    first = (out / "passwd").read_text()
    # Run again: the same password file, so the cloud and the broker keep agreeing.
    assert _broker_files_cli(tmp_path, "--out", str(out), "--ingest-password-file", str(pw)).exit_code == 0
    entry = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert provisioning.check_mosquitto_password(pw.read_text().strip(), entry[provisioning.INGEST_USER])
    assert first != (out / "passwd").read_text()  # a new salt, the same password
    assert not list(out.glob(".*.tmp"))


def test_private_mode_and_clear_errors(tmp_path: Path) -> None:
    _claimed(tmp_path, "gw-1")
    out = tmp_path / "auth"
    r = _broker_files_cli(tmp_path, "--out", str(out), "--private", "--ingest-password-file", str(tmp_path / "pw"))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    r = _broker_files_cli(tmp_path, "--out", str(out), "--group", "no-such-group-xyz")
    assert r.exit_code != 0 and "no such group" in r.output
    r = _broker_files_cli(tmp_path, "--out", str(out), "--owner", "no-such-user-xyz")
    assert r.exit_code != 0 and "no such user" in r.output


def test_broker_files_refuse_to_write_a_duplicate_user(tmp_path: Path) -> None:
    _claimed(tmp_path, "gw-1")

    async def add() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
        await store.open()
        try:
            await _account(store, "carbonlink-ingest", "carbonlink-ingest")
        finally:
            await store.close()

    asyncio.run(add())
    out = tmp_path / "auth"
    r = _broker_files_cli(tmp_path, "--out", str(out), "--private")
    assert r.exit_code != 0 and "carbonlink-ingest" in r.output and "Revoke" in r.output
    assert not (out / "passwd").exists()


def test_mosquitto_running_as_its_own_user_opens_the_files(tmp_path: Path) -> None:
    """The failure the issue saw ("Unable to open pwfile"): mosquitto drops to user mosquitto first."""
    require(os.geteuid() == 0 and ids_group("mosquitto") is not None, "root and a 'mosquitto' user and group",
            "run as root with Debian's mosquitto installed (apt-get install -y mosquitto)")
    creds = _claimed(tmp_path, "gw-1")
    base = Path(tempfile.mkdtemp(prefix="cl-broker-files-"))  # pytest's tmp_path is 0700: mosquitto cannot enter
    try:
        base.chmod(0o711)
        out = base / "auth"
        r = _broker_files_cli(tmp_path, "--out", str(out), "--ingest-password-file", str(tmp_path / "pw"))
        assert r.exit_code == 0, r.output
        # Started as root without a `user` line, mosquitto switches to user mosquitto before it opens them.
        port = free_port()
        conf = base / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npersistence false\n"
                        f"password_file {out / 'passwd'}\nacl_file {out / 'acl'}\n")
        require(shutil.which("mosquitto") is not None, "the mosquitto binary", "apt-get install -y mosquitto")
        proc = subprocess.Popen([str(shutil.which("mosquitto")), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            for _ in range(100):
                if port_open(port, timeout=0.1) or proc.poll() is not None:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""

            async def connect() -> None:
                async with aiomqtt.Client("127.0.0.1", port, username="gw-1", password=creds["gw-1"],
                                          identifier="gw1") as c:
                    await c.publish("cl/site-a/gw-1/status", b"online", qos=1)

            asyncio.run(connect())
        finally:
            stop_process(proc, 5)
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_the_reader_account_only_reads_telemetry_and_writes_its_outbox(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.sqlite'}")
    await store.open()
    token, _ = await provisioning.issue_claim_token(store, "acme", "site-a", 600)
    gw_pw = (await provisioning.claim(store, token, "gw-1", "ed25519",
                                      public_key_hex(Ed25519PrivateKey.generate()))).mqtt_password
    passwd, acl = await provisioning.broker_files(store, provisioning.mosquitto_password_hash("ingest-pw"),
                                                  provisioning.mosquitto_password_hash("reader-pw"))
    await store.close()
    with acl_broker(tmp_path, passwd, acl) as port:
        def client(user: str, password: str, cid: str) -> aiomqtt.Client:
            return aiomqtt.Client("127.0.0.1", port, username=user, password=password, identifier=cid)

        async with client(provisioning.READER_USER, "reader-pw", "reader") as reader, \
                client(provisioning.INGEST_USER, "ingest-pw", "ingest") as ingest, \
                client("gw-1", gw_pw, "gw1") as gw1:
            await reader.subscribe("cl/#", qos=1)
            await ingest.subscribe("cl/#", qos=1)
            await ingest.publish("cl/site-a/gw-1/ack", b"an ack", qos=1)  # the reader may not see acks
            await reader.publish("cl/site-a/gw-1/ack", b"forged by reader", qos=1)  # nor write anything under cl/
            await reader.publish("carbonlink/nodered/alerts", b"alert", qos=1)
            await gw1.publish("cl/site-a/gw-1/telemetry", b"telemetry", qos=1)
            seen = await received(reader, until=b"telemetry")
            assert seen == [b"telemetry"]
            got = await received(ingest, until=b"telemetry")
            assert got == [b"an ack", b"telemetry"]  # the reader's forgery was dropped


def test_the_installers_cli_refuses_a_reserved_id_before_making_a_key(tmp_path: Path) -> None:
    from carbonlink.commands.provision import app

    r = CliRunner().invoke(app, ["claim", "--api", "http://127.0.0.1:9", "--token", "clt_x", "--gateway",
                                 "carbonlink-ingest", "--out", str(tmp_path), "--json"])
    assert r.exit_code != 0 and "reserved" in r.output
    assert not (tmp_path / "gateway.key").exists()
    r = CliRunner().invoke(app, ["node", "--api", "http://127.0.0.1:9", "--token", "clt_x", "--node", "Admin",
                                 "--mqtt-host", "h", "--soil", "t@34", "--out", str(tmp_path / "config.json")])
    assert r.exit_code != 0 and "reserved" in r.output
