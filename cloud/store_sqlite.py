"""SQLite (WAL) storage: the embedded default, no setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite

from carbonlink.wire import Batch, format_ts

from .store import CommitResult, GatewayRecord, ReadingQuery

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
]


class SqliteStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url.removeprefix("sqlite:///"))
        self._db: aiosqlite.Connection | None = None

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

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str) -> None:
        await self.db.execute(
            "INSERT INTO gateways(id, site, alg, key, registered_ms) VALUES (?,?,?,?,strftime('%s','now')*1000)"
            " ON CONFLICT(id) DO UPDATE SET site=excluded.site, alg=excluded.alg, key=excluded.key, revoked=0",
            (gateway_id, site, alg, key),
        )

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = await (await self.db.execute(
            "SELECT id, site, alg, key, revoked FROM gateways WHERE id = ?", (gateway_id,))).fetchone()
        return GatewayRecord(row[0], row[1], row[2], row[3], bool(row[4])) if row else None

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
            rows = [(batch.gateway, r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, batch.seq)
                    for r in batch.readings]
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
        return CommitResult("committed", inserted, len(rows) - inserted)

    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None,
                          received_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES (?,?,?,?,?)",
            (received_ms, topic, gateway, reason, raw))

    async def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = await self.db.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]

    async def list_gateways(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT id, site, alg, status, status_ms, last_seen_ms, revoked,"
            " (SELECT count(*) FROM batches b WHERE b.gateway = g.id) AS batches FROM gateways g ORDER BY id")

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT gateway, device, count(*) AS points, max(ts_ms) AS last_ts_ms FROM latest"
            " GROUP BY gateway, device ORDER BY gateway, device")

    async def latest(self, device: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT gateway, device, point, ts_ms, value, unit, quality FROM latest"
        rows = await (self._rows(sql + " WHERE device = ? ORDER BY point", (device,)) if device
                      else self._rows(sql + " ORDER BY gateway, device, point"))
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
        sql = ("SELECT gateway, device, point, ts_ms, value, unit, quality, seq FROM readings WHERE "
               + " AND ".join(where) + " ORDER BY ts_ms, point LIMIT ?")
        rows = await self._rows(sql, (*args, q.limit))
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT id, received_ms, topic, gateway, reason, payload FROM dead_letters ORDER BY id DESC LIMIT ?",
            (limit,))
        for r in rows:
            payload = bytes(r.pop("payload"))
            r["size"] = len(payload)
            r["payload_preview"] = payload[:256].decode("utf-8", "replace")
        return rows

    async def counts(self) -> dict[str, int]:
        out = {}
        for name, sql in (("readings", "SELECT count(*) FROM readings"),
                          ("batches", "SELECT count(*) FROM batches"),
                          ("dead_letters", "SELECT count(*) FROM dead_letters"),
                          ("gateways", "SELECT count(*) FROM gateways")):
            row = await (await self.db.execute(sql)).fetchone()
            out[name] = int(row[0]) if row else 0
        return out


