"""The registry: tenants, sites, gateways, their keys and broker accounts, claim tokens, presence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from carbonlink.kernel.wire import now_ms

from .db import Database
from .model import KEY_GRACE_MS, ClaimError, GatewayRecord

# Rows of one tenant: its gateways are the join key for readings, latest values and dead letters.
IN_TENANT = "gateway IN (SELECT id FROM gateways WHERE tenant = ?)"
_GATEWAY_UPSERT = (
    "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant) VALUES (?,?,?,?,?,?)"
    " ON CONFLICT(id) DO UPDATE SET site = excluded.site, alg = excluded.alg, key = excluded.key,"
    " revoked = ?, tenant = coalesce(excluded.tenant, gateways.tenant)")


class Registry:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str, *,
                               tenant: str | None = None) -> None:
        """Register (or re-register, un-revoking) a gateway with its key: an operator's action on the host."""
        if tenant is not None:
            await self.ensure_site(tenant, site)
        await self.db.execute(_GATEWAY_UPSERT, gateway_id, site, alg, key, now_ms(), tenant, False)

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = await self.db.fetchrow("SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id = ?",
                                     gateway_id)
        if row is None:
            return None
        previous = await self.db.fetch(
            "SELECT key FROM gateway_keys WHERE gateway = ? AND key != ? AND retired_ms > ?",
            gateway_id, row["key"], now_ms() - KEY_GRACE_MS)
        return GatewayRecord(row["id"], row["site"], row["alg"], row["key"], bool(row["revoked"]),
                             tuple(r["key"] for r in previous), row["tenant"])

    async def get_gateways(self, gateway_ids: Sequence[str]) -> dict[str, GatewayRecord]:
        """Several gateways' records in two queries, by id; unknown ids are absent.

        The ingest looks up a whole group's gateways at once: one round trip per gateway is what
        limits a worker carrying thousands of gateways (docs/scaling.md).
        """
        ids = list(dict.fromkeys(gateway_ids))
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self.db.fetch(f"SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id IN ({marks})",
                                   *ids)
        previous: dict[str, list[str]] = {}
        if rows:
            for r in await self.db.fetch(f"SELECT gateway, key FROM gateway_keys WHERE gateway IN ({marks})"
                                         " AND retired_ms > ?", *ids, now_ms() - KEY_GRACE_MS):
                previous.setdefault(r["gateway"], []).append(r["key"])
        return {r["id"]: GatewayRecord(r["id"], r["site"], r["alg"], r["key"], bool(r["revoked"]),
                                       tuple(k for k in previous.get(r["id"], ()) if k != r["key"]), r["tenant"])
                for r in rows}

    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None:
        await self.db.execute("UPDATE gateways SET status = ?, status_ms = ? WHERE id = ?", status, ts_ms, gateway_id)

    async def set_gateway_statuses(self, updates: Sequence[tuple[str, str, int]]) -> None:
        """(gateway, status, ts_ms) updates in one round trip, applied in order (the last for a gateway wins).

        Thousands of gateways coming back after a broker restart each publish ``online``: one commit each
        would hold the ingest for tens of seconds.
        """
        if updates:
            await self.db.executemany("UPDATE gateways SET status = ?, status_ms = ? WHERE id = ?",
                                      [(status, ts, gw) for gw, status, ts in updates])

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
        async with self.db.transaction() as tx:
            tok = await tx.fetchrow("SELECT tenant, site, expires_ms, used_ms FROM claim_tokens WHERE token_hash = ?",
                                    token_hash)
            if tok is None:
                raise ClaimError("unknown claim token; ask the operator for a new one")
            if tok["used_ms"] is not None:
                raise ClaimError("this claim token was already used; claim tokens work once")
            if tok["expires_ms"] <= now:
                raise ClaimError("this claim token has expired; ask the operator for a new one")
            gw = await tx.fetchrow("SELECT revoked, tenant FROM gateways WHERE id = ?", gateway_id)
            if gw is not None and gw["revoked"]:
                raise ClaimError(f"gateway {gateway_id!r} is revoked; use a new gateway id")
            if gw is not None and gw["tenant"] not in (None, tok["tenant"]):
                raise ClaimError(f"gateway id {gateway_id!r} is taken")
            await tx.execute(
                "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant, mqtt_username, mqtt_password_hash)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET site = excluded.site, alg = excluded.alg,"
                " key = excluded.key, tenant = excluded.tenant, mqtt_username = excluded.mqtt_username,"
                " mqtt_password_hash = excluded.mqtt_password_hash",
                gateway_id, tok["site"], alg, key, now, tok["tenant"], mqtt_username, mqtt_password_hash)
            await tx.execute("UPDATE gateway_keys SET retired_ms = ? WHERE gateway = ? AND retired_ms IS NULL",
                             now, gateway_id)
            await tx.execute(
                "INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)"
                " ON CONFLICT (gateway, key) DO UPDATE SET alg = excluded.alg, created_ms = excluded.created_ms,"
                " retired_ms = NULL", gateway_id, alg, key, now)
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

    async def broker_accounts(self) -> list[dict[str, Any]]:
        rows = await self.db.fetch(
            "SELECT id, site, mqtt_username, mqtt_password_hash, revoked FROM gateways"
            " WHERE mqtt_username IS NOT NULL ORDER BY id")
        for r in rows:
            r["revoked"] = int(bool(r["revoked"]))
        return rows
