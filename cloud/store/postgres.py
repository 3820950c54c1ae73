"""PostgreSQL through asyncpg: a pool for statements, one more for exports, binary COPY, monthly partitions.

Two layouts, chosen once at the first migration:
- TimescaleDB present: ``readings`` is a hypertable on integer milliseconds with compression (and an
  optional retention policy).
- Plain PostgreSQL: ``readings`` is partitioned by month (declarative partitioning, partitions made
  ahead of the data by the ingest; rows for a month without one wait in ``readings_default``).
Either way the queries read the same relations with the same columns.

The URL may carry ``?schema=NAME`` (tables live in that schema; tests use one per run) and
``?retention_days=N`` (Timescale only: drop raw chunks older than N days; rollups stay).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from carbonlink.kernel.wire import now_ms

from .db import Conn, Database, numbered
from .migrations_postgres import MIGRATIONS

log = logging.getLogger(__name__)

MIGRATE_LOCK = 0x636C_6D67  # advisory lock ids: one migrator, one partition maker at a time
PARTITION_LOCK = 0x636C_7074
SNAPSHOT_ID = re.compile(r"[0-9A-F]+(-[0-9A-F]+)+")  # as pg_export_snapshot() writes it
PARTITION_PAST_YEARS = 20  # readings older than this, or more than two months ahead, wait in readings_default


def month_start_ms(ts_ms: int) -> int:
    t = time.gmtime(ts_ms // 1000)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000


def next_month_ms(start_ms: int) -> int:
    t = time.gmtime(start_ms // 1000)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000


def split_url(url: str) -> tuple[str, str | None, int | None]:
    """(dsn for asyncpg, schema, retention_days) from a storage URL with our own query parameters."""
    parts = urlsplit(url)
    ours = {"schema", "retention_days", "lock_timeout_ms"}
    query = parse_qsl(parts.query)
    opts = {k: v for k, v in query if k in ours}
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in ours])))
    schema = opts.get("schema")
    if schema is not None:
        check_schema(schema)
    retention = int(opts["retention_days"]) if "retention_days" in opts else None
    return dsn, schema, retention


def check_schema(schema: str) -> str:
    """``schema`` if it is letters, digits and underscores (it is put into SQL as a quoted name), else ValueError."""
    if not (schema.replace("_", "").isalnum() and schema.isascii()):
        raise ValueError(f"schema {schema!r} must be letters, digits and underscores")
    return schema


async def drop_schema(dsn: str, schema: str) -> None:
    """Drop a schema and everything in it, if it exists: how tests and benches remove the schema they made."""
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f'DROP SCHEMA IF EXISTS "{check_schema(schema)}" CASCADE')
    finally:
        await con.close()


def lock_timeout_of(url: str) -> int:
    """``?lock_timeout_ms=N`` (default 5000): how long a statement waits for a lock before failing."""
    for k, v in parse_qsl(urlsplit(url).query):
        if k == "lock_timeout_ms":
            return int(v)
    return 5000


class _PgConn(Conn):
    def __init__(self, con: asyncpg.Connection | asyncpg.Pool, db: PostgresDatabase) -> None:
        self.con, self.db = con, db

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        t = time.perf_counter()
        rows = [dict(r) for r in await self.con.fetch(numbered(sql), *args)]
        self.db.observe(sql, t)
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        t = time.perf_counter()
        status = await self.con.execute(numbered(sql), *args)
        self.db.observe(sql, t)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        t = time.perf_counter()
        await self.con.executemany(numbered(sql), rows)
        self.db.observe(sql, t)

    async def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        t = time.perf_counter()
        await self.con.copy_records_to_table(table, records=rows, columns=list(columns))
        self.db.observe(f"INSERT INTO {table}", t)

    @staticmethod
    def _unnest(sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[str, list[list[Any]]]:
        source = "SELECT * FROM unnest(" + ", ".join(f"?::{t}[]" for t in types) + ")"
        columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in types]
        return sql.replace("{rows}", source), columns

    async def bulk(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            text, columns = self._unnest(sql, types, rows)
            await self.execute(text, *columns)

    async def bulk_returning(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
                             ) -> list[dict[str, Any]]:
        if not rows:
            return []
        text, columns = self._unnest(sql, types, rows)
        return await self.fetch(text, *columns)


class PostgresDatabase(_PgConn, Database):
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self.dsn, self.schema, self.retention_days = split_url(url)
        self.lock_timeout_ms = lock_timeout_of(url)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._export_pool: asyncpg.Pool | None = None
        self.timescale = False
        self._months: set[int] = set()  # month starts (ms) that have a partition
        self._snapshot_lock = asyncio.Lock()
        self.db = self
        self.con = None  # type: ignore[assignment]  # the pool, once open

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open; call await store.open() first")
        return self._pool

    @property
    def settings(self) -> dict[str, str]:
        # A lock held elsewhere (a migration, an operator's LOCK, a stuck transaction) makes a statement
        # fail after lock_timeout, so the ingest counts the store as unavailable and retries, instead of
        # hanging with its messages unacknowledged and /health still saying ok.
        base = {"lock_timeout": f"{self.lock_timeout_ms}ms"}
        return {**base, "search_path": f"{self.schema},public"} if self.schema else base

    async def open(self) -> None:
        if self.schema:
            con = await asyncpg.connect(self.dsn)
            try:
                await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await con.close()
        await self.migrate()
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                               server_settings=self.settings)
        self.con = self._pool
        # Exports get connections of their own: a long CSV never waits for, or holds up, the ingest's pool.
        self._export_pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=2,
                                                      server_settings=self.settings)
        self.timescale = bool(await self.pool.fetchval("SELECT to_regclass('readings_default') IS NULL"))
        if not self.timescale:
            now = now_ms()
            first = month_start_ms(now)
            await self.ensure_partitions({first, next_month_ms(first), next_month_ms(next_month_ms(first))})

    async def migrate(self) -> int:
        """Apply pending migrations under an advisory lock (workers may start together); returns the version."""
        # No lock timeout here: a second worker starting at the same time waits for the first one's migration.
        con = await asyncpg.connect(self.dsn, server_settings={**self.settings, "lock_timeout": "0"})
        try:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
                if current == 0:
                    timescale = await self._try_timescale(con)
                else:
                    timescale = bool(await con.fetchval(
                        "SELECT to_regclass('readings_default') IS NULL AND to_regclass('readings') IS NOT NULL"))
                for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
                    await step(con, timescale, self.retention_days)
                    await con.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
                    log.info("storage schema migrated to version %d (%s)", version,
                             "timescaledb" if timescale else "partitioned")
        finally:
            await con.close()
        return len(MIGRATIONS)

    @staticmethod
    async def _try_timescale(con: asyncpg.Connection) -> bool:
        """Use TimescaleDB when the server offers it and it loads; otherwise plain partitioning."""
        if not await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"):
            return False
        try:
            async with con.transaction():  # a savepoint: a failed CREATE EXTENSION must not abort the migration
                await con.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            return True
        except asyncpg.PostgresError as exc:  # e.g. not in shared_preload_libraries
            log.warning("timescaledb is available but cannot be loaded (%s); using plain partitioning", exc)
            return False

    async def close(self) -> None:
        for pool in (self._export_pool, self._pool):
            if pool is not None:
                await pool.close()
        self._pool = self._export_pool = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.pool.acquire() as con, con.transaction():
            yield _PgConn(con, self)

    @contextlib.asynccontextmanager
    async def read_snapshot(self, n: int) -> AsyncIterator[list[Conn]]:
        """Up to ``n`` connections (one fewer than the pool holds, at least one) in read-only REPEATABLE
        READ transactions that all see one snapshot: the first exports it (``pg_export_snapshot``), the
        others import it. One read split over several server processes, as consistent as one statement.
        The connections are taken under a lock, so two such readers never wait for each other's last one."""
        n = max(1, min(n, self.pool_size - 1))
        async with contextlib.AsyncExitStack() as stack:
            async with self._snapshot_lock:
                cons = [await stack.enter_async_context(self.pool.acquire()) for _ in range(n)]
            snapshot = ""
            for con in cons:
                await stack.enter_async_context(con.transaction(isolation="repeatable_read", readonly=True))
                if not snapshot:
                    snapshot = str(await con.fetchval("SELECT pg_export_snapshot()"))
                    if not SNAPSHOT_ID.fullmatch(snapshot):
                        raise RuntimeError(f"unexpected snapshot id {snapshot!r}")
                else:
                    await con.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            yield [_PgConn(con, self) for con in cons]

    async def stream(self, sql: str, *args: Any, chunk: int = 2000) -> AsyncIterator[list[dict[str, Any]]]:
        if self._export_pool is None:
            raise RuntimeError("store is not open; call await store.open() first")
        async with self._export_pool.acquire() as con, con.transaction(readonly=True):
            cursor = await con.cursor(numbered(sql), *args)
            while rows := await cursor.fetch(chunk):
                yield [dict(r) for r in rows]

    def is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError | asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
            return True
        if isinstance(exc, asyncpg.PostgresError):
            code = getattr(exc, "sqlstate", "") or ""
            # 08 connection, 53 resources (disk full, out of memory), 57 operator intervention (shutdown),
            # 58 system error, 40 serialization/deadlock (retryable), 55P03 lock not available, 25006 read-only.
            return code[:2] in ("08", "53", "57", "58", "40") or code in ("55P03", "25006")
        return False

    # --- partitions (plain PostgreSQL) ------------------------------------------------------------------

    async def ensure_partitions(self, months: set[int]) -> None:
        """Make monthly partitions; rows already parked in readings_default for that month move in."""
        now = now_ms()
        low = month_start_ms(now - PARTITION_PAST_YEARS * 365 * 86_400_000)
        high = next_month_ms(next_month_ms(next_month_ms(month_start_ms(now))))
        wanted = {m for m in months if low <= m < high} - self._months
        if not wanted or self.timescale:
            return
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            existing = {r[0] for r in await con.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'readings'::regclass")}
            for m in sorted(wanted):
                name = "readings_m" + time.strftime("%Y%m", time.gmtime(m // 1000))
                if name in existing:
                    continue
                end = next_month_ms(m)
                await con.execute(f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                await con.execute(f"WITH moved AS (DELETE FROM readings_default WHERE ts_ms >= {m} AND ts_ms < {end}"
                                  f" RETURNING *) INSERT INTO {name} SELECT * FROM moved")
                await con.execute(f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ({m}) TO ({end})")
        self._months |= wanted

    async def lock_for(self, tx: Conn, name: str) -> None:
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", f"carbonlink:{name}")

    async def prepare_for(self, timestamps: set[int]) -> None:
        """Partitions for the months these readings fall in, made before the commit that needs them."""
        if self.timescale:
            return
        months = {month_start_ms(ts) for ts in timestamps}
        if months - self._months:
            await self.ensure_partitions(months)
