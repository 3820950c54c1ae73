"""Claim tokens, key rotation and revocation, through the API and the ingest."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.provisioning import check_mosquitto_password, issue_claim_token, rotation_message
from carbonlink.cloud.store import ClaimError, Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch


@pytest.fixture
async def api(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        _, c.headers["X-Test-Installer"] = await create_api_key(store, "acme", "installer", "test")
        yield c


def installer(api: httpx.AsyncClient) -> dict[str, str]:
    """An installer's API key of tenant acme (roles and tenants are tested in tests/api)."""
    return {"Authorization": f"Bearer {api.headers['X-Test-Installer']}"}


def batch(gw: str, seq: int, key: Ed25519PrivateKey) -> bytes:
    rs = (Reading.make("cems-1", "so2", 1_700_000_000_000 + seq, 12.5, "mg/m³"),)
    return sign_batch(Batch(gw, seq, 1_700_000_000_000, rs), key).to_bytes()


async def test_claim_flow_over_the_api(api: httpx.AsyncClient, store: Store) -> None:
    # Without credentials nobody can issue claim tokens.
    r = await api.post("/api/provision/claim-tokens", json={"tenant": "acme", "site": "plant-a"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
    auth = installer(api)
    r = await api.post("/api/provision/claim-tokens", json={"tenant": "acme", "site": "plant-a"}, headers=auth)
    assert r.status_code == 201
    token = r.json()["token"]
    key = Ed25519PrivateKey.generate()
    body = {"token": token, "gateway": "gw-a1", "key": public_key_hex(key)}
    r = await api.post("/api/provision/claim", json=body)
    assert r.status_code == 201, r.text
    creds = r.json()["mqtt"]
    assert r.json()["site"] == "plant-a" and creds["username"] == "gw-a1"
    acc = (await store.registry.broker_accounts())[0]
    assert check_mosquitto_password(creds["password"], acc["mqtt_password_hash"])
    assert creds["password"] not in json.dumps(acc)  # only the hash is kept
    # Reuse is refused, and a refused claim changes nothing.
    r = await api.post("/api/provision/claim", json=body | {"gateway": "gw-a2"})
    assert r.status_code == 410 and "already used" in r.json()["detail"]
    assert await store.registry.get_gateway("gw-a2") is None
    # The claimed gateway's batches are accepted on its site's topic.
    p = IngestProcessor(store)
    assert await p.handle("cl/plant-a/gw-a1/telemetry", batch("gw-a1", 1, key)) is Outcome.COMMITTED


async def test_expired_unknown_and_malformed_claims(store: Store) -> None:
    from carbonlink.cloud import provisioning

    token, _ = await issue_claim_token(store, "acme", "plant-a", 60)
    await store.registry.add_claim_token(provisioning.hash_token("clt_old"), "acme", "plant-a", 0, 1000)
    key = public_key_hex(Ed25519PrivateKey.generate())
    with pytest.raises(ClaimError, match="expired"):
        await provisioning.claim(store, "clt_old", "gw-x", "ed25519", key)
    with pytest.raises(ClaimError, match="unknown claim token"):
        await provisioning.claim(store, "clt_nope", "gw-x", "ed25519", key)
    with pytest.raises(ClaimError, match="64 lowercase hex"):
        await provisioning.claim(store, token, "gw-x", "ed25519", "zz")
    with pytest.raises(ClaimError, match="gateway id"):
        await provisioning.claim(store, token, "gw/evil/#", "ed25519", key)
    # None of the failures used the token up.
    await provisioning.claim(store, token, "gw-x", "ed25519", key)


async def test_rotation_keeps_old_batches_valid_and_refuses_forgeries(api: httpx.AsyncClient, store: Store) -> None:
    from carbonlink.cloud import provisioning

    old = Ed25519PrivateKey.generate()
    token, _ = await issue_claim_token(store, "acme", "plant-a", 600)
    await provisioning.claim(store, token, "gw-r", "ed25519", public_key_hex(old))
    new = Ed25519PrivateKey.generate()
    forged = Ed25519PrivateKey.generate().sign(rotation_message("gw-r", public_key_hex(new))).hex()
    body = {"public_key": public_key_hex(new), "signature": forged}
    r = await api.post("/api/gateways/gw-r/rotate-key", json=body)
    assert r.status_code == 400 and "does not verify" in r.json()["detail"]
    good = old.sign(rotation_message("gw-r", public_key_hex(new))).hex()
    r = await api.post("/api/gateways/gw-r/rotate-key", json=body | {"signature": good})
    assert r.status_code == 200
    p = IngestProcessor(store)
    t = "cl/plant-a/gw-r/telemetry"
    assert await p.handle(t, batch("gw-r", 1, old)) is Outcome.COMMITTED  # signed before the rotation
    assert await p.handle(t, batch("gw-r", 2, new)) is Outcome.COMMITTED
    assert await p.handle(t, batch("gw-r", 3, Ed25519PrivateKey.generate())) is Outcome.REJECTED


async def test_revoked_gateway_is_refused(api: httpx.AsyncClient, store: Store) -> None:
    from carbonlink.cloud import provisioning

    key = Ed25519PrivateKey.generate()
    token, _ = await issue_claim_token(store, "acme", "plant-a", 600)
    await provisioning.claim(store, token, "gw-v", "ed25519", public_key_hex(key))
    assert (await api.post("/api/gateways/gw-v/revoke")).status_code == 401
    r = await api.post("/api/gateways/gw-v/revoke", headers=installer(api))
    assert r.status_code == 200
    p = IngestProcessor(store)
    assert await p.handle("cl/plant-a/gw-v/telemetry", batch("gw-v", 1, key)) is Outcome.REJECTED
    assert "revoked" in (await store.audit.dead_letters())[0]["reason"]
    # A revoked id cannot be claimed again, and loses its broker account.
    token2, _ = await issue_claim_token(store, "acme", "plant-a", 600)
    with pytest.raises(ClaimError, match="revoked"):
        await provisioning.claim(store, token2, "gw-v", "ed25519", public_key_hex(key))
    _, acl = await provisioning.broker_files(store, "$7$1$x$y")
    assert "gw-v" not in acl
