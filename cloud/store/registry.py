"""The registry: tenants, sites, gateways, their keys and broker accounts, claim tokens, presence.

An Ed25519 gateway's key is public and stored as it is. An HMAC node's key is its secret: with a
secret box (cloud/secretbox.py, key from the settings) it is stored sealed, and ``use_secrets`` seals
any plain or old-key secret when the cloud starts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from carbonlink.kernel.wire import now_ms

from .db import Database
from .model import KEY_GRACE_MS, ClaimError, GatewayRecord

if TYPE_CHECKING:
    from carbonlink.cloud.secretbox import SecretBox

log = logging.getLogger(__name__)
HMAC_ALG = "hmac-sha256"

# Rows of one tenant: its gateways are the join key for readings, latest values and dead letters.
IN_TENANT = "gateway IN (SELECT id FROM gateways WHERE tenant = ?)"
ALREADY_REGISTERED = ("gateway id {!r} is already registered; a claim never replaces a gateway: the gateway"
                      " rotates its own key (rotate-key), or an admin re-keys it (audited)")
_GATEWAY_UPSERT = (
    "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT(id) DO UPDATE SET site = excluded.site, alg = excluded.alg, key = excluded.key,"
    " revoked = ?, tenant = coalesce(excluded.tenant, gateways.tenant)")


class Registry:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.box: SecretBox | None = None
        # Without a box, may node secrets be stored in plain text? Yes for a bare store (tests, tools);
        # the cloud service says no outside development (cloud/service.py).
        self.plain_secrets_allowed = True

    # --- node secrets at rest ----------------------------------------------------------------------

    @staticmethod
    def _context(gateway_id: str) -> str:
        return f"carbonlink gateway key {gateway_id}"

    def _seal(self, gateway_id: str, alg: str, key: str) -> str:
        """What to store for ``key``: a public key as is; a node's secret sealed when there is a box."""
        if alg != HMAC_ALG:
            return key
        if self.box is not None:
            return self.box.seal(key, self._context(gateway_id))
        if not self.plain_secrets_allowed:
            raise ClaimError("this cloud has no secret key, so it cannot keep an HMAC node's secret: set"
                             " CARBONLINK_SECRET_KEY or CARBONLINK_SECRET_KEY_FILE and restart")
        return key

    def _open(self, gateway_id: str, stored: str) -> str:
        from carbonlink.cloud.secretbox import SecretBox, SecretKeyError

        if not SecretBox.is_sealed(stored):
            return stored
        if self.box is None:
            raise SecretKeyError(f"gateway {gateway_id!r} has a sealed secret and no secret key is set: set"
                                 " CARBONLINK_SECRET_KEY or CARBONLINK_SECRET_KEY_FILE to the key it was sealed with")
        return self.box.open(stored, self._context(gateway_id))

    def attach_secrets(self, box: SecretBox | None) -> None:
        """Open sealed secrets with ``box`` from now on, sealing nothing now (tools that only read)."""
        self.box = box

    async def use_secrets(self, box: SecretBox | None, *, plain_allowed: bool = False) -> int:
        """Take ``box`` for node secrets and seal what is not yet sealed under its current key.

        Plain secrets (from before encryption, or from a store without a box) and secrets sealed with an
        older key of the ring are (re-)sealed; returns how many. Without a box: a clear error when sealed
        secrets exist (nothing could check those nodes' batches), or plain ones and ``plain_allowed`` is off.
        """
        from carbonlink.cloud.secretbox import SecretBox, SecretKeyError

        self.box, self.plain_secrets_allowed = box, plain_allowed
        rows = await self.db.fetch("SELECT 'g' AS t, id AS gateway, key FROM gateways WHERE alg = ?"
                                   " UNION ALL SELECT 'k' AS t, gateway, key FROM gateway_keys WHERE alg = ?",
                                   HMAC_ALG, HMAC_ALG)
        if box is None:
            sealed = sorted({SecretBox.key_id_of(r["key"]) for r in rows if SecretBox.is_sealed(r["key"])})
            if sealed:
                raise SecretKeyError(
                    f"the database holds node secrets sealed with key id(s) {', '.join(sealed)} but no secret key"
                    " is set: set CARBONLINK_SECRET_KEY (or CARBONLINK_SECRET_KEY_FILE) to that key")
            plain = len({r["gateway"] for r in rows})
            if plain and not plain_allowed:
                raise SecretKeyError(
                    f"the database holds {plain} HMAC node secret(s) in plain text and no secret key is set: set"
                    " CARBONLINK_SECRET_KEY (make one with `openssl rand -hex 32`); they are sealed at start")
            return 0
        todo = [r for r in rows if not SecretBox.is_sealed(r["key"]) or SecretBox.key_id_of(r["key"]) != box.current]
        async with self.db.transaction() as tx:
            for r in todo:
                secret = self._open(r["gateway"], r["key"])
                new = box.seal(secret, self._context(r["gateway"]))
                table, column = ("gateways", "id") if r["t"] == "g" else ("gateway_keys", "gateway")
                await tx.execute(f"UPDATE {table} SET key = ? WHERE {column} = ? AND key = ?",
                                 new, r["gateway"], r["key"])
        if todo:
            log.info("sealed %d node secret(s) under key id %s", len(todo), box.current)
        return len(todo)

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str, *,
                               tenant: str | None = None) -> None:
        """Register (or re-register, un-revoking) a gateway with its key: an operator's action on the host."""
        if tenant is not None:
            await self.ensure_site(tenant, site)
        stored = self._seal(gateway_id, alg, key)
        await self.db.execute(_GATEWAY_UPSERT, gateway_id, site, alg, stored, now_ms(), tenant, False)

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = await self.db.fetchrow("SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id = ?",
                                     gateway_id)
        if row is None:
            return None
        previous = await self.db.fetch(
            "SELECT key FROM gateway_keys WHERE gateway = ? AND key != ? AND retired_ms > ?",
            gateway_id, row["key"], now_ms() - KEY_GRACE_MS)
        key = self._open(gateway_id, row["key"])
        older = tuple(dict.fromkeys(k for k in (self._open(gateway_id, r["key"]) for r in previous) if k != key))
        return GatewayRecord(row["id"], row["site"], row["alg"], key, bool(row["revoked"]), older, row["tenant"])

    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None:
        await self.db.execute("UPDATE gateways SET status = ?, status_ms = ? WHERE id = ?", status, ts_ms, gateway_id)

    async def set_revoked(self, gateway_id: str, revoked: bool) -> bool:
        return await self.db.execute("UPDATE gateways SET revoked = ? WHERE id = ?", revoked, gateway_id) > 0

    async def list_gateways(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        rows = await self.db.fetch(
            "SELECT id, tenant, site, alg, status, status_ms, last_seen_ms, revoked,"
            " (SELECT count(*) FROM batches b WHERE b.gateway = g.id) AS batches FROM gateways g"
            + where + " ORDER BY id", *args)
        for r in rows:
            r["revoked"] = int(bool(r["revoked"]))
        return rows

    async def list_tenants(self) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT id, name, created_ms FROM tenants ORDER BY id")

    async def list_sites(self, tenant: str) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT id, tenant, name, created_ms FROM sites WHERE tenant = ? ORDER BY id",
                                   tenant)

    async def ensure_site(self, tenant: str, site: str) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO tenants(id, name, created_ms) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                             tenant, tenant, now_ms())
            owner = await tx.fetchval("SELECT tenant FROM sites WHERE id = ?", site)
            if owner is not None and owner != tenant:
                raise ClaimError(f"site {site!r} belongs to another tenant")
            await tx.execute("INSERT INTO sites(id, tenant, name, created_ms) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
                             site, tenant, site, now_ms())

    # --- claims and keys ---------------------------------------------------------------------------

    async def add_claim_token(self, token_hash: str, tenant: str, site: str, created_ms: int,
                              expires_ms: int) -> None:
        await self.ensure_site(tenant, site)
        await self.db.execute(
            "INSERT INTO claim_tokens(token_hash, tenant, site, created_ms, expires_ms) VALUES (?,?,?,?,?)",
            token_hash, tenant, site, created_ms, expires_ms)

    async def redeem_claim(self, token_hash: str, gateway_id: str, alg: str, key: str, mqtt_username: str,
                           mqtt_password_hash: str, now: int) -> tuple[str, str]:
        """Use a claim token once to register a gateway; returns (tenant, site)."""
        key = self._seal(gateway_id, alg, key)
        async with self.db.transaction() as tx:
            tok = await tx.fetchrow("SELECT tenant, site, expires_ms, used_ms FROM claim_tokens WHERE token_hash = ?",
                                    token_hash)
            if tok is None:
                raise ClaimError("unknown claim token; ask the operator for a new one")
            if tok["used_ms"] is not None:
                raise ClaimError("this claim token was already used; claim tokens work once")
            if tok["expires_ms"] <= now:
                raise ClaimError("this claim token has expired; ask the operator for a new one")
            gw = await tx.fetchrow("SELECT revoked FROM gateways WHERE id = ?", gateway_id)
            if gw is not None and gw["revoked"]:
                raise ClaimError(f"gateway {gateway_id!r} is revoked; use a new gateway id")
            if gw is not None:
                raise ClaimError(ALREADY_REGISTERED.format(gateway_id))
            # DO NOTHING, not DO UPDATE: a claim racing another for the same id must lose, not take it over.
            inserted = await tx.execute(
                "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant, mqtt_username, mqtt_password_hash)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO NOTHING",
                gateway_id, tok["site"], alg, key, now, tok["tenant"], mqtt_username, mqtt_password_hash)
            if inserted != 1:
                raise ClaimError(ALREADY_REGISTERED.format(gateway_id))
            await tx.execute("INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                             " ON CONFLICT (gateway, key) DO NOTHING", gateway_id, alg, key, now)
            await tx.execute("UPDATE claim_tokens SET used_ms = ?, gateway = ? WHERE token_hash = ?",
                             now, gateway_id, token_hash)
        return str(tok["tenant"]), str(tok["site"])

    async def rotate_key(self, gateway_id: str, new_key: str, now: int) -> None:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("SELECT alg, key FROM gateways WHERE id = ?", gateway_id)
            if row is None:
                raise ClaimError(f"gateway {gateway_id!r} is not registered")
            await tx.execute("INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                             " ON CONFLICT DO NOTHING", gateway_id, row["alg"], row["key"], now)
            await tx.execute("UPDATE gateway_keys SET retired_ms = ? WHERE gateway = ? AND key = ?",
                             now, gateway_id, row["key"])
            await tx.execute(
                "INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                " ON CONFLICT (gateway, key) DO UPDATE SET alg = excluded.alg, created_ms = excluded.created_ms,"
                " retired_ms = NULL", gateway_id, row["alg"], new_key, now)
            await tx.execute("UPDATE gateways SET key = ? WHERE id = ?", new_key, gateway_id)

    async def re_key(self, gateway_id: str, alg: str, key: str, mqtt_password_hash: str, now: int) -> GatewayRecord:
        """An operator's replacement of a gateway's key and broker password (a lost or stolen key).

        Unlike ``rotate_key`` the old key gets no grace: whoever holds it may be the reason for this.
        Returns the gateway as it was before (its tenant and site stay).
        """
        key = self._seal(gateway_id, alg, key)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow("SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id = ?",
                                    gateway_id)
            if row is None:
                raise ClaimError(f"gateway {gateway_id!r} is not registered")
            if row["revoked"]:
                raise ClaimError(f"gateway {gateway_id!r} is revoked; a revoked gateway is not re-keyed")
            withdrawn = now - KEY_GRACE_MS - 1  # retired so long ago that no grace is left
            await tx.execute("INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                             " ON CONFLICT DO NOTHING", gateway_id, row["alg"], row["key"], now)
            await tx.execute("UPDATE gateway_keys SET retired_ms = ? WHERE gateway = ? AND key != ?"
                             " AND (retired_ms IS NULL OR retired_ms > ?)", withdrawn, gateway_id, key, withdrawn)
            await tx.execute(
                "INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                " ON CONFLICT (gateway, key) DO UPDATE SET alg = excluded.alg, created_ms = excluded.created_ms,"
                " retired_ms = NULL", gateway_id, alg, key, now)
            await tx.execute("UPDATE gateways SET alg = ?, key = ?, mqtt_username = ?, mqtt_password_hash = ?"
                             " WHERE id = ?", alg, key, gateway_id, mqtt_password_hash, gateway_id)
        return GatewayRecord(row["id"], row["site"], row["alg"], self._open(gateway_id, row["key"]), False, (),
                             row["tenant"])

    async def broker_accounts(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, site, mqtt_username, mqtt_password_hash, revoked FROM gateways"
            " WHERE mqtt_username IS NOT NULL ORDER BY id")
        for r in rows:
            r["revoked"] = int(bool(r["revoked"]))
        return rows
