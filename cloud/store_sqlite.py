"""SQLite (WAL) storage: the embedded default, no setup."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiosqlite

from carbonlink.kernel.wire import Batch, format_ts, now_ms

from .store import (
    KEY_GRACE_MS,
    QUALITY_FLAGS,
    ClaimError,
    CommitResult,
    GatewayRecord,
    PendingBatch,
    ReadingQuery,
    SeriesQuery,
    seq_gap_summary,
    unit_reason,
)

# Versioned migrations, applied in order at open; never edit one that has shipped.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE gateways (
        id TEXT PRIMARY KEY, site TEXT NOT NULL, alg TEXT NOT NULL, key TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'unknown',
        status_ms INTEGER, last_seen_ms INTEGER, registered_ms INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE batches (
        gateway TEXT NOT NULL, seq INTEGER NOT NULL, created_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL, n INTEGER NOT NULL, digest TEXT NOT NULL, payload BLOB NOT NULL,
        PRIMARY KEY (gateway, seq)
    );
    CREATE TABLE readings (
        gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL,
        value REAL NOT NULL, unit TEXT NOT NULL, quality TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (gateway, device, point, ts_ms)
    ) WITHOUT ROWID;
    CREATE INDEX readings_device_ts ON readings(device, ts_ms);
    CREATE TABLE latest (
        gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL,
        value REAL NOT NULL, unit TEXT NOT NULL, quality TEXT NOT NULL,
        PRIMARY KEY (gateway, device, point)
    );
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT, received_ms INTEGER NOT NULL, topic TEXT NOT NULL,
        gateway TEXT, reason TEXT NOT NULL, payload BLOB NOT NULL
    );
    """,
    # 2: identity and provisioning: tenants, sites, one-time claim tokens, broker credentials, key history.
    """
    CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_ms INTEGER NOT NULL);
    CREATE TABLE sites (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants(id), name TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE claim_tokens (
        token_hash TEXT PRIMARY KEY, tenant TEXT NOT NULL, site TEXT NOT NULL, created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL, used_ms INTEGER, gateway TEXT
    );
    ALTER TABLE gateways ADD COLUMN tenant TEXT;
    ALTER TABLE gateways ADD COLUMN mqtt_username TEXT;
    ALTER TABLE gateways ADD COLUMN mqtt_password_hash TEXT;
    CREATE TABLE gateway_keys (
        gateway TEXT NOT NULL, alg TEXT NOT NULL, key TEXT NOT NULL, created_ms INTEGER NOT NULL,
        retired_ms INTEGER, PRIMARY KEY (gateway, key)
    );
    """,
    # Device shadows (one compare-and-set document per gateway) and cloud-to-gateway commands.
    """
    CREATE TABLE IF NOT EXISTS shadows (
        gateway TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL, updated_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS commands (
        id TEXT PRIMARY KEY, gateway TEXT NOT NULL, name TEXT NOT NULL, args TEXT NOT NULL,
        status TEXT NOT NULL, result TEXT, created_ms INTEGER NOT NULL, deadline_ms INTEGER NOT NULL,
        done_ms INTEGER
    );
    CREATE INDEX IF NOT EXISTS commands_gateway ON commands(gateway, created_ms);
    """,
    # 4: API users and keys (hashes only), tenant-scoped lookups.
    """
    CREATE TABLE api_users (
        username TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, password_hash TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL,
        secret_hash TEXT NOT NULL, created_ms INTEGER NOT NULL, revoked_ms INTEGER
    );
    CREATE INDEX gateways_tenant ON gateways(tenant);
    CREATE INDEX dead_letters_gateway ON dead_letters(gateway, id);
    """,
    # 5: dead letters can be replayed once their cause is fixed; the outcome is kept beside the raw bytes.
    """
    ALTER TABLE dead_letters ADD COLUMN resolved_ms INTEGER;
    ALTER TABLE dead_letters ADD COLUMN resolution TEXT;
    """,
]

# Rows of one tenant: its gateways are the join key for readings, latest values and dead letters.
IN_TENANT = "gateway IN (SELECT id FROM gateways WHERE tenant = ?)"


class SqliteStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self._db: aiosqlite.Connection | None = None
        self._units: dict[tuple[str, str, str], str] = {}  # (gateway, device, point) -> registered unit

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open; call await store.open() first")
        return self._db

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self.migrate()

    async def migrate(self) -> int:
        await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = await (await self.db.execute("SELECT max(version) FROM schema_version")).fetchone()
        current = (row[0] if row else None) or 0
        for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in (s for s in sql.split(";") if s.strip()):
                    await self.db.execute(stmt)
                await self.db.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        return len(MIGRATIONS)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str, *,
                               tenant: str | None = None) -> None:
        if tenant is not None:
            await self.ensure_site(tenant, site)
        await self.db.execute(
            "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant)"
            " VALUES (?,?,?,?,strftime('%s','now')*1000,?) ON CONFLICT(id) DO UPDATE SET site=excluded.site,"
            " alg=excluded.alg, key=excluded.key, revoked=0, tenant=coalesce(excluded.tenant, gateways.tenant)",
            (gateway_id, site, alg, key, tenant),
        )

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = await (await self.db.execute(
            "SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id = ?", (gateway_id,))).fetchone()
        if not row:
            return None
        previous = await (await self.db.execute(
            "SELECT key FROM gateway_keys WHERE gateway = ? AND key != ? AND retired_ms > ?",
            (gateway_id, row[3], now_ms() - KEY_GRACE_MS))).fetchall()
        return GatewayRecord(row[0], row[1], row[2], row[3], bool(row[4]), tuple(r[0] for r in previous), row[5])

    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None:
        await self.db.execute("UPDATE gateways SET status = ?, status_ms = ? WHERE id = ?",
                              (status, ts_ms, gateway_id))

    async def commit_batch(self, batch: Batch, raw: bytes, received_ms: int) -> CommitResult:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute(
                "INSERT OR IGNORE INTO batches(gateway, seq, created_ms, received_ms, n, digest, payload)"
                " VALUES (?,?,?,?,?,?,?)",
                (batch.gateway, batch.seq, batch.created_ms, received_ms, len(batch.readings),
                 batch.digest(), raw),
            )
            if cur.rowcount == 0:
                row = await (await db.execute("SELECT digest FROM batches WHERE gateway = ? AND seq = ?",
                                              (batch.gateway, batch.seq))).fetchone()
                await db.execute("ROLLBACK")
                # Same seq, same content: a redelivery. Same seq, other content: a replay or a gateway
                # that lost its state; storing nothing and saying "duplicate" would lose its readings.
                status = "duplicate" if row and row[0] == batch.digest() else "conflict"
                return CommitResult(status, 0, len(batch.readings))
            rows, wrong = await self._check_units(batch)
            if wrong:
                await db.execute(
                    "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES (?,?,?,?,?)",
                    (received_ms, f"unit-check/{batch.gateway}", batch.gateway, unit_reason(batch.seq, wrong), raw))
            before = db.total_changes
            await db.executemany(
                "INSERT OR IGNORE INTO readings(gateway, device, point, ts_ms, value, unit, quality, seq)"
                " VALUES (?,?,?,?,?,?,?,?)", rows)
            inserted = db.total_changes - before
            await db.executemany(
                "INSERT INTO latest(gateway, device, point, ts_ms, value, unit, quality) VALUES (?,?,?,?,?,?,?)"
                " ON CONFLICT(gateway, device, point) DO UPDATE SET ts_ms=excluded.ts_ms, value=excluded.value,"
                " unit=excluded.unit, quality=excluded.quality WHERE excluded.ts_ms >= latest.ts_ms",
                [r[:7] for r in rows])
            await db.execute("UPDATE gateways SET last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE id = ?",
                             (received_ms, batch.gateway))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return CommitResult("committed", inserted, len(rows) - inserted, len(wrong))

    async def _check_units(self, batch: Batch) -> tuple[list[tuple[Any, ...]], list[str]]:
        """Split a batch's rows into those whose unit is their point's registered one and the others."""
        gw = batch.gateway
        missing = {(gw, r.device, r.point) for r in batch.readings} - self._units.keys()
        if missing:
            for d, pt, u in await (await self.db.execute(
                    "SELECT device, point, unit FROM latest WHERE gateway = ?", (gw,))).fetchall():
                self._units[(gw, d, pt)] = u
        rows: list[tuple[Any, ...]] = []
        wrong: list[str] = []
        for r in batch.readings:
            unit = self._units.setdefault((gw, r.device, r.point), r.unit)  # the first unit seen registers
            if unit == r.unit:
                rows.append((gw, r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, batch.seq))
            else:
                wrong.append(f"{r.device}/{r.point}@{r.ts_ms} in {r.unit!r}, registered {unit!r}")
        return rows, wrong

    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None,
                          received_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES (?,?,?,?,?)",
            (received_ms, topic, gateway, reason, raw))

    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = await self.db.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]

    async def list_gateways(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        return await self._rows(
            "SELECT id, tenant, site, alg, status, status_ms, last_seen_ms, revoked,"
            " (SELECT count(*) FROM batches b WHERE b.gateway = g.id) AS batches FROM gateways g"
            + where + " ORDER BY id", args)

    async def list_devices(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE " + IN_TENANT, (tenant,)) if tenant is not None else ("", ())
        return await self._rows(
            "SELECT gateway, device, count(*) AS points, max(ts_ms) AS last_ts_ms FROM latest"
            + where + " GROUP BY gateway, device ORDER BY gateway, device", args)

    async def latest(self, device: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if device:
            where.append("device = ?")
            args.append(device)
        if tenant is not None:
            where.append(IN_TENANT)
            args.append(tenant)
        sql = "SELECT gateway, device, point, ts_ms, value, unit, quality FROM latest"
        rows = await self._rows(sql + (" WHERE " + " AND ".join(where) if where else "")
                                + " ORDER BY gateway, device, point", tuple(args))
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def readings(self, q: ReadingQuery) -> list[dict[str, Any]]:
        where: list[str] = ["device = ?"]
        args: list[str | int] = [q.device]
        if q.point is not None:
            where.append("point = ?")
            args.append(q.point)
        if q.gateway is not None:
            where.append("gateway = ?")
            args.append(q.gateway)
        if q.start_ms is not None:
            where.append("ts_ms >= ?")
            args.append(q.start_ms)
        if q.end_ms is not None:
            where.append("ts_ms < ?")
            args.append(q.end_ms)
        if q.after is not None:
            where.append("(ts_ms > ? OR (ts_ms = ? AND point > ?))")
            args.extend([q.after[0], q.after[0], q.after[1]])
        if q.tenant is not None:
            where.append(IN_TENANT)
            args.append(q.tenant)
        sql = ("SELECT gateway, device, point, ts_ms, value, unit, quality, seq FROM readings WHERE "
               + " AND ".join(where) + " ORDER BY ts_ms, point LIMIT ?")
        rows = await self._rows(sql, (*args, q.limit))
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def dead_letters(self, limit: int = 100, tenant: str | None = None,
                           before_id: int | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append(IN_TENANT)
            args.append(tenant)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        rows = await self._rows(
            "SELECT id, received_ms, topic, gateway, reason, resolved_ms, resolution, payload FROM dead_letters"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?", (*args, limit))
        for r in rows:
            payload = bytes(r.pop("payload"))
            r["size"] = len(payload)
            r["payload_preview"] = payload[:256].decode("utf-8", "replace")
        return rows

    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        out = {}
        where, args = (" WHERE " + IN_TENANT, (tenant,)) if tenant is not None else ("", ())
        for name, sql in (("readings", "SELECT count(*) FROM readings" + where),
                          ("batches", "SELECT count(*) FROM batches" + where),
                          ("dead_letters", "SELECT count(*) FROM dead_letters" + where),
                          ("gateways", "SELECT count(*) FROM gateways"
                           + (" WHERE tenant = ?" if tenant is not None else ""))):
            row = await (await self.db.execute(sql, args)).fetchone()
            out[name] = int(row[0]) if row else 0
        return out



    # --- identity and provisioning -----------------------------------------------------------------

    async def ensure_site(self, tenant: str, site: str) -> None:
        await self.db.execute("INSERT OR IGNORE INTO tenants(id, name, created_ms) VALUES (?,?,?)",
                              (tenant, tenant, now_ms()))
        row = await (await self.db.execute("SELECT tenant FROM sites WHERE id = ?", (site,))).fetchone()
        if row and row[0] != tenant:
            raise ClaimError(f"site {site!r} belongs to another tenant")
        await self.db.execute("INSERT OR IGNORE INTO sites(id, tenant, name, created_ms) VALUES (?,?,?,?)",
                              (site, tenant, site, now_ms()))

    async def add_claim_token(self, token_hash: str, tenant: str, site: str, created_ms: int,
                              expires_ms: int) -> None:
        await self.ensure_site(tenant, site)
        await self.db.execute(
            "INSERT INTO claim_tokens(token_hash, tenant, site, created_ms, expires_ms) VALUES (?,?,?,?,?)",
            (token_hash, tenant, site, created_ms, expires_ms))

    async def redeem_claim(self, token_hash: str, gateway_id: str, alg: str, key: str, mqtt_username: str,
                           mqtt_password_hash: str, now: int) -> tuple[str, str]:
        """Use a claim token once to register a gateway; returns (tenant, site)."""
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            tok = await (await db.execute(
                "SELECT tenant, site, expires_ms, used_ms FROM claim_tokens WHERE token_hash = ?",
                (token_hash,))).fetchone()
            if tok is None:
                raise ClaimError("unknown claim token; ask the operator for a new one")
            if tok[3] is not None:
                raise ClaimError("this claim token was already used; claim tokens work once")
            if tok[2] <= now:
                raise ClaimError("this claim token has expired; ask the operator for a new one")
            gw = await (await db.execute("SELECT revoked, tenant FROM gateways WHERE id = ?",
                                         (gateway_id,))).fetchone()
            if gw is not None and gw[0]:
                raise ClaimError(f"gateway {gateway_id!r} is revoked; use a new gateway id")
            if gw is not None and gw[1] not in (None, tok[0]):
                raise ClaimError(f"gateway id {gateway_id!r} is taken")
            await db.execute(
                "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant, mqtt_username, mqtt_password_hash)"
                " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET site=excluded.site, alg=excluded.alg,"
                " key=excluded.key, tenant=excluded.tenant, mqtt_username=excluded.mqtt_username,"
                " mqtt_password_hash=excluded.mqtt_password_hash",
                (gateway_id, tok[1], alg, key, now, tok[0], mqtt_username, mqtt_password_hash))
            await db.execute("UPDATE gateway_keys SET retired_ms = ? WHERE gateway = ? AND retired_ms IS NULL",
                             (now, gateway_id))
            await db.execute("INSERT OR REPLACE INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)",
                             (gateway_id, alg, key, now))
            await db.execute("UPDATE claim_tokens SET used_ms = ?, gateway = ? WHERE token_hash = ?",
                             (now, gateway_id, token_hash))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return str(tok[0]), str(tok[1])

    async def rotate_key(self, gateway_id: str, new_key: str, now: int) -> None:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            row = await (await db.execute("SELECT alg, key FROM gateways WHERE id = ?", (gateway_id,))).fetchone()
            if row is None:
                raise ClaimError(f"gateway {gateway_id!r} is not registered")
            await db.execute("INSERT OR IGNORE INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)",
                             (gateway_id, row[0], row[1], now))
            await db.execute("UPDATE gateway_keys SET retired_ms = ? WHERE gateway = ? AND key = ?",
                             (now, gateway_id, row[1]))
            await db.execute("INSERT OR REPLACE INTO gateway_keys(gateway, alg, key, created_ms) VALUES (?,?,?,?)",
                             (gateway_id, row[0], new_key, now))
            await db.execute("UPDATE gateways SET key = ? WHERE id = ?", (new_key, gateway_id))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    async def set_revoked(self, gateway_id: str, revoked: bool) -> bool:
        cur = await self.db.execute("UPDATE gateways SET revoked = ? WHERE id = ?", (int(revoked), gateway_id))
        return cur.rowcount > 0

    async def broker_accounts(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT id, site, mqtt_username, mqtt_password_hash, revoked FROM gateways"
            " WHERE mqtt_username IS NOT NULL ORDER BY id")

    async def list_tenants(self) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, name, created_ms FROM tenants ORDER BY id")

    async def list_sites(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, tenant, name, created_ms FROM sites WHERE tenant = ? ORDER BY id",
                                (tenant,))

    # --- API users and keys --------------------------------------------------------------------------

    async def add_user(self, username: str, tenant: str, role: str, password_hash: str, now: int) -> bool:
        await self.db.execute("INSERT OR IGNORE INTO tenants(id, name, created_ms) VALUES (?,?,?)",
                              (tenant, tenant, now))
        cur = await self.db.execute(
            "INSERT OR IGNORE INTO api_users(username, tenant, role, password_hash, created_ms) VALUES (?,?,?,?,?)",
            (username, tenant, role, password_hash, now))
        return cur.rowcount == 1

    async def get_user(self, username: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM api_users WHERE username = ?", (username,))
        return rows[0] if rows else None

    async def list_users(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT username, tenant, role, created_ms FROM api_users WHERE tenant = ?"
                                " ORDER BY username", (tenant,))

    async def delete_user(self, tenant: str, username: str) -> bool:
        cur = await self.db.execute("DELETE FROM api_users WHERE tenant = ? AND username = ?", (tenant, username))
        return cur.rowcount == 1

    async def add_api_key(self, key_id: str, tenant: str, role: str, name: str, secret_hash: str,
                          now: int) -> None:
        await self.db.execute("INSERT OR IGNORE INTO tenants(id, name, created_ms) VALUES (?,?,?)",
                              (tenant, tenant, now))
        await self.db.execute(
            "INSERT INTO api_keys(id, tenant, role, name, secret_hash, created_ms) VALUES (?,?,?,?,?,?)",
            (key_id, tenant, role, name, secret_hash, now))

    async def get_api_key(self, key_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM api_keys WHERE id = ?", (key_id,))
        return rows[0] if rows else None

    async def list_api_keys(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, tenant, role, name, created_ms, revoked_ms FROM api_keys"
                                " WHERE tenant = ? ORDER BY created_ms, id", (tenant,))

    async def revoke_api_key(self, tenant: str, key_id: str, now: int) -> bool:
        cur = await self.db.execute("UPDATE api_keys SET revoked_ms = ? WHERE tenant = ? AND id = ?"
                                    " AND revoked_ms IS NULL", (now, tenant, key_id))
        return cur.rowcount == 1

    # --- data plane: group commit, hourly rollups, completeness ----------------------------------
    # SQLite computes rollups from the raw readings at query time: it holds one site's data, not a
    # province's. cloud/store_postgres.py keeps minute rollup tables instead; both give the same rows.

    async def commit_many(self, items: list[PendingBatch]) -> list[CommitResult]:
        return [await self.commit_batch(p.to_batch(), p.raw, p.received_ms) for p in items]

    async def hour_rollups(self, q: SeriesQuery) -> list[dict[str, Any]]:
        flags = ", ".join(f"sum(quality = '{f}') AS q_{f.lower()}" for f in QUALITY_FLAGS)
        where, args = ["device = ?", "ts_ms >= ?", "ts_ms < ?"], [q.device, q.start_ms, q.end_ms]
        if q.point is not None:
            where.append("point = ?")
            args.append(q.point)
        if q.gateway is not None:
            where.append("gateway = ?")
            args.append(q.gateway)
        if q.tenant is not None:
            where.append(IN_TENANT)
            args.append(q.tenant)
        return await self._rows(
            "SELECT gateway, device, point, (ts_ms / 3600000) * 3600000 AS hour_ms, count(*) AS n, " + flags + ","
            " min(CASE WHEN quality = 'N' THEN value END) AS vmin, max(CASE WHEN quality = 'N' THEN value END) AS vmax,"
            " sum(CASE WHEN quality = 'N' THEN value END) AS vsum,"
            " count(DISTINCT CASE WHEN quality = 'N' THEN ts_ms / 60000 END) AS valid_minutes,"
            " min(ts_ms) AS first_ms, max(ts_ms) AS last_ms FROM readings WHERE " + " AND ".join(where)
            + " GROUP BY gateway, device, point, hour_ms ORDER BY point, gateway, hour_ms", tuple(args))

    async def seq_gaps(self, gateway: str, limit: int = 1000) -> dict[str, Any]:
        row = await (await self.db.execute(
            "SELECT min(seq), max(seq), count(*) FROM batches WHERE gateway = ?", (gateway,))).fetchone()
        gaps = await self._rows(
            "SELECT seq + 1 AS first, nxt - 1 AS last FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt"
            " FROM batches WHERE gateway = ?) WHERE nxt > seq + 1 ORDER BY first LIMIT ?", (gateway, limit))
        return seq_gap_summary(gateway, row, gaps)

    async def late_batches(self, gateway: str, min_delay_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT seq, created_ms, received_ms, n, received_ms - created_ms AS delay_ms FROM batches"
            " WHERE gateway = ? AND received_ms - created_ms >= ? ORDER BY seq LIMIT ?",
            (gateway, min_delay_ms, limit))

    # --- device shadows and commands (cloud/shadows.py, cloud/commands.py) -------------------

    async def get_shadow(self, gateway: str) -> tuple[int, dict[str, Any]] | None:
        row = await (await self.db.execute("SELECT version, doc FROM shadows WHERE gateway = ?",
                                           (gateway,))).fetchone()
        return (int(row[0]), json.loads(row[1])) if row else None

    async def put_shadow(self, gateway: str, expected_version: int, doc: dict[str, Any], updated_ms: int) -> bool:
        """Compare-and-set: writes version expected+1 only if the stored version is still ``expected``."""
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        if expected_version == 0:
            cur = await self.db.execute(
                "INSERT OR IGNORE INTO shadows(gateway, version, doc, updated_ms) VALUES (?, 1, ?, ?)",
                (gateway, text, updated_ms))
        else:
            cur = await self.db.execute(
                "UPDATE shadows SET version = version + 1, doc = ?, updated_ms = ? WHERE gateway = ? AND version = ?",
                (text, updated_ms, gateway, expected_version))
        return cur.rowcount == 1

    async def add_command(self, command_id: str, gateway: str, name: str, args: dict[str, Any],
                          created_ms: int, deadline_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO commands(id, gateway, name, args, status, created_ms, deadline_ms)"
            " VALUES (?,?,?,?,'pending',?,?)", (command_id, gateway, name, json.dumps(args), created_ms, deadline_ms))

    async def finish_command(self, command_id: str, status: str, result: dict[str, Any] | None,
                             done_ms: int) -> bool:
        """Record a command's end once; a late result after a timeout is kept but does not change status."""
        cur = await self.db.execute(
            "UPDATE commands SET status = ?, result = ?, done_ms = ? WHERE id = ? AND status = 'pending'",
            (status, json.dumps(result) if result is not None else None, done_ms, command_id))
        if cur.rowcount == 1:
            return True
        await self.db.execute("UPDATE commands SET result = coalesce(result, ?) WHERE id = ? AND status = 'timeout'",
                              (json.dumps(result) if result is not None else None, command_id))
        return False

    async def get_command(self, command_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM commands WHERE id = ?", (command_id,))
        return _command_row(rows[0]) if rows else None

    async def list_commands(self, gateway: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._rows("SELECT * FROM commands WHERE gateway = ? ORDER BY created_ms DESC LIMIT ?",
                                (gateway, limit))
        return [_command_row(r) for r in rows]

    # --- dead-letter replay ------------------------------------------------------------------------

    async def dead_letter_raw(self, letter_id: int) -> tuple[str, bytes, int | None] | None:
        row = await (await self.db.execute(
            "SELECT topic, payload, resolved_ms FROM dead_letters WHERE id = ?", (letter_id,))).fetchone()
        return (str(row[0]), bytes(row[1]), row[2]) if row else None

    async def resolve_dead_letter(self, letter_id: int, resolution: str, ts_ms: int) -> None:
        await self.db.execute("UPDATE dead_letters SET resolved_ms = ?, resolution = ? WHERE id = ?",
                              (ts_ms, resolution, letter_id))

    async def unresolved_dead_letters(self, limit: int = 1000) -> list[int]:
        rows = await (await self.db.execute(
            "SELECT id FROM dead_letters WHERE resolved_ms IS NULL ORDER BY id LIMIT ?", (limit,))).fetchall()
        return [int(r[0]) for r in rows]


def _command_row(r: dict[str, Any]) -> dict[str, Any]:
    r["args"] = json.loads(r["args"])
    r["result"] = json.loads(r["result"]) if r["result"] is not None else None
    return r
