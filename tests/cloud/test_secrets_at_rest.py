"""Secrets at rest (issue 10 §4): the database and its folder are the owner's only, and a copy of the
database alone does not let anyone sign as an HMAC node. SQLite and PostgreSQL."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from carbonlink.cloud import provisioning
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.provisioning import issue_claim_token
from carbonlink.cloud.secretbox import SecretBox, SecretKeyError, create_key_file, key_id, parse_ring
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import ClaimError, Store, open_store
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.cloud.store.conftest import throwaway_store

K1, K2 = bytes(range(32)), bytes(range(32, 64))
SECRET = "5e" * 32
T0 = 1_767_225_600_000


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with throwaway_store(request.param, tmp_path, "clsec_") as s:
        yield s


def node_batch(gw: str, seq: int, secret: str = SECRET) -> bytes:
    rs = (Reading.make("tree-1", "t", T0 + seq, 21.5, "°C"),)
    return sign_batch(Batch(gw, seq, T0, rs), bytes.fromhex(secret)).to_bytes()


async def stored_keys(store: Store) -> list[str]:
    rows = await store.db.fetch("SELECT key FROM gateways UNION ALL SELECT key FROM gateway_keys")
    return [r["key"] for r in rows]


async def test_sqlite_database_and_folder_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new-folder" / "cloud.sqlite"
    async with open_store(f"sqlite:///{path}") as s:
        await s.registry.ensure_site("acme", "plant-a")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                assert stat.S_IMODE(os.stat(f"{path}{suffix}").st_mode) == 0o600, suffix
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_node_secret_is_sealed_and_still_verifies(store: Store) -> None:
    await store.registry.use_secrets(SecretBox([K1]))
    token, _ = await issue_claim_token(store, "acme", "forest-a", 600)
    await provisioning.claim(store, token, "node-1", "hmac-sha256", SECRET)
    keys = await stored_keys(store)
    assert keys and all(k.startswith(f"enc1:{key_id(K1)}:") for k in keys)
    assert all(SECRET not in k for k in keys)
    rec = await store.registry.get_gateway("node-1")
    assert rec is not None and rec.key == SECRET
    assert await IngestProcessor(store).handle("cl/forest-a/node-1/telemetry", node_batch("node-1", 1)) \
        is Outcome.COMMITTED


async def test_a_copy_of_the_database_alone_signs_nothing(store: Store) -> None:
    await store.registry.use_secrets(SecretBox([K1]))
    await store.registry.register_gateway("node-2", "forest-a", "hmac-sha256", SECRET, tenant="acme")
    # The thief's cloud: same rows, no key.
    thief = Store(store.db)
    with pytest.raises(SecretKeyError, match="CARBONLINK_SECRET_KEY"):
        await thief.registry.get_gateway("node-2")
    with pytest.raises(SecretKeyError, match=rf"sealed with key id.*{key_id(K1)}.*CARBONLINK_SECRET_KEY"):
        await thief.registry.use_secrets(None)
    with pytest.raises(SecretKeyError, match="not in the key ring"):
        await thief.registry.use_secrets(SecretBox([K2]))
    # A sealed secret moved to another row does not open (the row is its associated data).
    sealed = (await store.db.fetchrow("SELECT key FROM gateways WHERE id = 'node-2'") or {})["key"]
    await store.registry.register_gateway("node-3", "forest-a", "ed25519", "00" * 32, tenant="acme")
    await store.db.execute("UPDATE gateways SET alg = 'hmac-sha256', key = ? WHERE id = 'node-3'", sealed)
    with pytest.raises(SecretKeyError, match="altered or moved"):
        await store.registry.get_gateway("node-3")


async def test_plain_secrets_are_sealed_at_start_and_rotate(store: Store) -> None:
    # Secrets from before encryption (or a bare store): plain in both tables.
    await store.registry.register_gateway("node-4", "forest-a", "hmac-sha256", SECRET, tenant="acme")
    await store.db.execute("INSERT INTO gateway_keys(gateway, alg, key, created_ms, retired_ms) VALUES (?,?,?,?,?)",
                           "node-4", "hmac-sha256", "77" * 32, T0, None)
    assert SECRET in await stored_keys(store)
    # Production refuses to run with plain secrets and no key; the message says what to set.
    with pytest.raises(SecretKeyError, match=r"plain text.*CARBONLINK_SECRET_KEY"):
        await Store(store.db).registry.use_secrets(None, plain_allowed=False)
    assert await store.registry.use_secrets(SecretBox([K1])) == 2
    assert all(k.startswith(f"enc1:{key_id(K1)}:") for k in await stored_keys(store))
    assert await store.registry.use_secrets(SecretBox([K1])) == 0  # idempotent
    # Rotation: a new first key re-seals everything; then the old key can go.
    assert await store.registry.use_secrets(SecretBox([K2, K1])) == 2
    fresh = Store(store.db)
    await fresh.registry.use_secrets(SecretBox([K2]))
    rec = await fresh.registry.get_gateway("node-4")
    assert rec is not None and rec.key == SECRET
    assert await IngestProcessor(fresh).handle("cl/forest-a/node-4/telemetry", node_batch("node-4", 1)) \
        is Outcome.COMMITTED


async def test_without_a_key_an_hmac_claim_is_refused_in_production(store: Store) -> None:
    await store.registry.use_secrets(None, plain_allowed=False)
    token, _ = await issue_claim_token(store, "acme", "forest-a", 600)
    with pytest.raises(ClaimError, match=r"no secret key.*CARBONLINK_SECRET_KEY"):
        await provisioning.claim(store, token, "node-5", "hmac-sha256", SECRET)
    assert await store.registry.get_gateway("node-5") is None


def test_settings_key_ring(tmp_path: Path) -> None:
    # Development: generated once, 0600 in a 0700 folder, then reused.
    path = tmp_path / "keys" / "secret.key"
    dev = CloudSettings(environment="development", secret_key_file=path)
    box = dev.secret_box()
    assert box is not None and path.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = dev.secret_box()
    assert again is not None and again.current == box.current
    assert create_key_file(path)[0] == parse_ring(path.read_text(), "x")[0]  # a second creator keeps the first key
    # A key file others may read is refused, naming the fix.
    path.chmod(0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        dev.secret_box()
    # Production: no generated key; the environment wins over a file; several keys rotate.
    prod = CloudSettings(environment="production", jwt_secret="j" * 40, secret_key_file=tmp_path / "none")
    assert prod.secret_box() is None
    ring = CloudSettings(environment="production", jwt_secret="j" * 40,
                         secret_key=SecretStr(f"{K2.hex()},{K1.hex()}")).secret_box()
    assert ring is not None and ring.current == key_id(K2) and ring.key_ids == [key_id(K2), key_id(K1)]
    with pytest.raises(SecretKeyError, match=r"64 hex digits.*openssl rand -hex 32"):
        CloudSettings(secret_key=SecretStr("short"), secret_key_file=path).secret_box()


async def test_cli_commands_open_sealed_secrets_when_the_key_ring_is_at_hand(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from carbonlink.cloud.secretbox import read_key_file
    from carbonlink.commands.common import open_store as cli_open_store

    for var in ("CARBONLINK_SECRET_KEY", "CARBONLINK_ENVIRONMENT", "CARBONLINK_JWT_SECRET"):
        monkeypatch.delenv(var, raising=False)
    key_file = tmp_path / "secret.key"
    db = f"sqlite:///{tmp_path / 'c.sqlite'}"
    async with open_store(db) as s:
        await s.registry.use_secrets(SecretBox(create_key_file(key_file)))
        await s.registry.register_gateway("node-6", "forest-a", "hmac-sha256", SECRET, tenant="acme")
    monkeypatch.setenv("CARBONLINK_SECRET_KEY_FILE", str(key_file))
    s = await cli_open_store(db)
    try:
        rec = await s.registry.get_gateway("node-6")
        assert rec is not None and rec.key == SECRET and read_key_file(key_file)
    finally:
        await s.close()
    # Elsewhere, without the ring: a clear error (a RuntimeError the commands print), and no key is made.
    monkeypatch.setenv("CARBONLINK_SECRET_KEY_FILE", str(tmp_path / "absent.key"))
    s = await cli_open_store(db)
    try:
        with pytest.raises(RuntimeError, match="no secret key is set"):
            await s.registry.get_gateway("node-6")
    finally:
        await s.close()
    assert not (tmp_path / "absent.key").exists()
