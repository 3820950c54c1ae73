"""A claim never takes over an identity (issue 10 §2): 409 and nothing changes; replacing a key is
rotate-key (signed by the old key) or an admin's audited re-key. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from carbonlink.cloud import provisioning
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.provisioning import check_mosquitto_password, issue_claim_token
from carbonlink.cloud.store import open_store
from carbonlink.commands.users import gateway_app
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.cloud.api.conftest import KEYS, T0, Api
from tests.cloud.api.test_auth import assert_problem


def _batch(gw: str, seq: int, key: Ed25519PrivateKey) -> bytes:
    rs = (Reading.make("cems-9", "so2", T0 + seq, 1.5, "mg/m³"),)
    return sign_batch(Batch(gw, seq, T0, rs), key).to_bytes()


async def _snapshot(api: Api, gw: str) -> tuple[object, ...]:
    row = await api.store.db.fetchrow("SELECT site, alg, key, tenant, mqtt_username, mqtt_password_hash, revoked"
                                      " FROM gateways WHERE id = ?", gw)
    keys = await api.store.db.fetch("SELECT key, retired_ms FROM gateway_keys WHERE gateway = ? ORDER BY key", gw)
    return (row, keys)


async def test_claiming_a_registered_id_is_409_and_changes_nothing(api: Api) -> None:
    admin = api.as_("admin")
    token = (await api.client.post("/api/provision/claim-tokens", headers=admin,
                                   json={"tenant": "acme", "site": "plant-a"})).json()["token"]
    first = await api.client.post("/api/provision/claim", json={"token": token, "gateway": "gw-c",
                                                                "key": public_key_hex(Ed25519PrivateKey.generate())})
    assert first.status_code == 201, first.text
    before = await _snapshot(api, "gw-c")

    # A second token, even of the same tenant and another site, cannot take the id over.
    token2, _ = await issue_claim_token(api.store, "acme", "plant-z", 600)
    thief = Ed25519PrivateKey.generate()
    r = await api.client.post("/api/provision/claim", json={"token": token2, "gateway": "gw-c",
                                                            "key": public_key_hex(thief)})
    body = assert_problem(r, 409)
    assert "already registered" in body["detail"] and "rotate-key" in body["detail"]
    assert await _snapshot(api, "gw-c") == before
    assert check_mosquitto_password(first.json()["mqtt"]["password"], str(before[0]["mqtt_password_hash"]))  # type: ignore[index]
    # Another tenant's gateway (seeded gw-b of "other"): the same answer, which tells nothing about that tenant.
    before_b = await _snapshot(api, "gw-b")
    r = await api.client.post("/api/provision/claim", json={"token": token2, "gateway": "gw-b",
                                                            "key": public_key_hex(thief)})
    assert assert_problem(r, 409)["detail"] == body["detail"].replace("'gw-c'", "'gw-b'")
    assert await _snapshot(api, "gw-b") == before_b
    # The thief's key signs nothing the cloud accepts; the refused claims did not use the token up.
    p = IngestProcessor(api.store)
    assert await p.handle("cl/plant-z/gw-c/telemetry", _batch("gw-c", 1, thief)) is Outcome.REJECTED
    ok = await api.client.post("/api/provision/claim", json={"token": token2, "gateway": "gw-d",
                                                             "key": public_key_hex(Ed25519PrivateKey.generate())})
    assert ok.status_code == 201, ok.text


async def test_concurrent_claims_of_one_id_register_it_once(api: Api) -> None:
    tokens = [(await issue_claim_token(api.store, "acme", "plant-a", 600))[0] for _ in range(6)]
    keys = [Ed25519PrivateKey.generate() for _ in tokens]
    results = await asyncio.gather(*(provisioning.claim(api.store, t, "gw-race", "ed25519", public_key_hex(k))
                                     for t, k in zip(tokens, keys, strict=True)), return_exceptions=True)
    winners = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all("already registered" in str(r) for r in results if isinstance(r, BaseException))
    rec = await api.store.registry.get_gateway("gw-race")
    assert rec is not None and rec.key == public_key_hex(keys[winners[0]])


async def test_admin_re_key_is_audited_and_withdraws_the_old_key_at_once(api: Api) -> None:
    new = Ed25519PrivateKey.generate()
    body = {"key": public_key_hex(new), "reason": "gateway stolen from the stack at plant-a"}
    for role in ("operator", "installer", "analyst"):
        assert_problem(await api.client.post("/api/gateways/gw-a/re-key", headers=api.as_(role), json=body), 403)
    assert_problem(await api.client.post("/api/gateways/gw-a/re-key", headers=api.as_("other-admin"), json=body), 404)
    assert_problem(await api.client.post("/api/gateways/gw-a/re-key", headers=api.as_("admin"),
                                         json=body | {"reason": ""}), 422)
    assert await api.store.audit.log() == []
    r = await api.client.post("/api/gateways/gw-a/re-key", headers=api.as_("admin"), json=body)
    assert r.status_code == 200, r.text
    password = r.json()["mqtt"]["password"]
    row = await api.store.db.fetchrow("SELECT site, tenant, mqtt_password_hash FROM gateways WHERE id = 'gw-a'")
    assert row is not None and row["site"] == "plant-a" and row["tenant"] == "acme"
    assert check_mosquitto_password(password, row["mqtt_password_hash"])
    [entry] = await api.store.audit.log("acme")
    assert entry["action"] == "gateway.re-key" and entry["subject"] == "gw-a"
    assert entry["actor"].startswith("key:") and entry["detail"]["reason"] == body["reason"]
    assert password not in str(entry)
    p = IngestProcessor(api.store)
    assert await p.handle("cl/plant-a/gw-a/telemetry", _batch("gw-a", 50, KEYS["gw-a"])) is Outcome.REJECTED
    assert await p.handle("cl/plant-a/gw-a/telemetry", _batch("gw-a", 51, new)) is Outcome.COMMITTED


def test_re_key_on_the_host_is_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARBONLINK_SECRET_KEY_FILE", str(tmp_path / "secret.key"))
    db = f"sqlite:///{tmp_path / 'c.sqlite'}"
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()

    async def setup() -> None:
        async with open_store(db) as s:
            token, _ = await issue_claim_token(s, "acme", "plant-a", 600)
            await provisioning.claim(s, token, "gw-h", "ed25519", public_key_hex(old))

    async def state() -> tuple[str, list[dict[str, object]]]:
        async with open_store(db) as s:
            rec = await s.registry.get_gateway("gw-h")
            assert rec is not None
            return rec.key, await s.audit.log()

    asyncio.run(setup())
    cli = typer.Typer()
    cli.add_typer(gateway_app, name="gateway")
    res = CliRunner().invoke(cli, ["gateway", "re-key", "gw-h", "--key", public_key_hex(new), "--reason", "lost",
                                   "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    key, log = asyncio.run(state())
    assert key == public_key_hex(new)
    assert log[0]["action"] == "gateway.re-key" and str(log[0]["actor"]).startswith("cli:")
    assert (tmp_path / "secret.key").exists()  # the CLI uses the cloud's key ring (generated in development)
    res = CliRunner().invoke(cli, ["gateway", "re-key", "gw-nope", "--key", public_key_hex(new), "--reason", "x" * 5,
                                   "--db", db])
    assert res.exit_code == 2 and "not registered" in res.output
