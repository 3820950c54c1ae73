"""PostgreSQL storage through asyncpg: a pool, binary COPY for readings, versioned migrations.

Two layouts, chosen once at the first migration:
- TimescaleDB present: ``readings`` is a hypertable on integer milliseconds with compression (and an
  optional retention policy); ``rollup_minute`` is a continuous aggregate, with hour and day
  aggregates stacked on it.
- Plain PostgreSQL: ``readings`` is partitioned by month (declarative partitioning, partitions made
  ahead of the data by the ingest); ``rollup_minute`` is a table the ingest keeps in the same
  transaction as the readings it summarises.
Either way the queries read the same relations with the same columns, so they give the same answers.

The URL may carry ``?schema=NAME`` (tables live in that schema; tests use one per run) and
``?retention_days=N`` (Timescale only: drop raw chunks older than N days; rollups stay).
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

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

log = logging.getLogger(__name__)

READING_COLS = ("gateway", "device", "point", "ts_ms", "value", "unit", "quality", "seq")
FLAG_COLS = [f"q_{f.lower()}" for f in QUALITY_FLAGS]
PARTITION_PAST_YEARS = 20  # readings older than this, or more than two months ahead, go to readings_default
MIGRATE_LOCK = 0x636C_6D67  # advisory lock ids: one migrator, one partition maker at a time
PARTITION_LOCK = 0x636C_7074

def _c(sql: str) -> str:
    """Binary collation on every text column: SQLite's ordering, and memcmp comparisons in the indexes."""
    return sql.replace(" text ", ' text COLLATE "C" ').replace(" text,", ' text COLLATE "C",')


Migration = Callable[[asyncpg.Connection, bool, int | None], Awaitable[None]]


async def _m1_core(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c("""
    CREATE TABLE gateways (
        id text PRIMARY KEY, site text NOT NULL, alg text NOT NULL, key text NOT NULL,
        revoked boolean NOT NULL DEFAULT false, status text NOT NULL DEFAULT 'unknown',
        status_ms bigint, last_seen_ms bigint, registered_ms bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE batches (
        gateway text NOT NULL, seq bigint NOT NULL, created_ms bigint NOT NULL, received_ms bigint NOT NULL,
        n integer NOT NULL, digest text NOT NULL, payload bytea NOT NULL, PRIMARY KEY (gateway, seq)
    );
    CREATE TABLE latest (
        gateway text NOT NULL, device text NOT NULL, point text NOT NULL, ts_ms bigint NOT NULL,
        value double precision NOT NULL, unit text NOT NULL, quality text NOT NULL,
        PRIMARY KEY (gateway, device, point)
    );
    CREATE TABLE dead_letters (
        id bigserial PRIMARY KEY, received_ms bigint NOT NULL, topic text NOT NULL, gateway text,
        reason text NOT NULL, payload bytea NOT NULL
    );
    CREATE FUNCTION cl_now_ms() RETURNS bigint LANGUAGE sql STABLE
        AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$;
    """))
    # The signed bytes are kept verbatim for proofs; lz4 (PostgreSQL >= 14 built with it) compresses JSON
    # several-fold at a fraction of pglz's CPU, so it cuts the WAL the hot path writes.
    if await con.fetchval("SELECT enumvals::text LIKE '%lz4%' FROM pg_settings"
                          " WHERE name = 'default_toast_compression'"):
        await con.execute("ALTER TABLE batches ALTER COLUMN payload SET COMPRESSION lz4")
    # One index serves identity and the API's queries (device, point, time range): every extra
    # index on the hot table costs ingest throughput.
    readings = _c("""CREATE TABLE readings (
        gateway text NOT NULL, device text NOT NULL, point text NOT NULL, ts_ms bigint NOT NULL,
        value double precision NOT NULL, unit text NOT NULL, quality text NOT NULL, seq bigint NOT NULL,
        PRIMARY KEY (device, point, ts_ms, gateway))""")
    flag_aggs = ", ".join(f"count(*) FILTER (WHERE quality = '{f}')::int AS q_{f.lower()}" for f in QUALITY_FLAGS)
    if not timescale:
        await con.execute(readings + " PARTITION BY RANGE (ts_ms)")
        await con.execute("CREATE TABLE readings_default PARTITION OF readings DEFAULT")
        flag_cols = ", ".join(f"{c} integer NOT NULL DEFAULT 0" for c in FLAG_COLS)
        await con.execute(_c(f"""CREATE TABLE rollup_minute (
            gateway text NOT NULL, device text NOT NULL, point text NOT NULL, minute_ms bigint NOT NULL,
            n integer NOT NULL, {flag_cols}, vmin double precision, vmax double precision, vsum double precision,
            first_ms bigint NOT NULL, last_ms bigint NOT NULL, PRIMARY KEY (device, point, minute_ms, gateway))"""))
        return
    # TimescaleDB (https://docs.timescale.com): integer time in ms, so it needs an integer_now function.
    day = 86_400_000
    await con.execute(readings)
    await con.execute(f"SELECT create_hypertable('readings', 'ts_ms', chunk_time_interval => {7 * day}::bigint)")
    await con.execute("SELECT set_integer_now_func('readings', 'cl_now_ms')")
    await con.execute("ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_orderby = 'ts_ms',"
                      " timescaledb.compress_segmentby = 'gateway, device, point')")
    await con.execute(f"SELECT add_compression_policy('readings', compress_after => {30 * day}::bigint)")
    if retention_days:
        await con.execute(f"SELECT add_retention_policy('readings', drop_after => {retention_days * day}::bigint)")
    await con.execute(f"""CREATE MATERIALIZED VIEW rollup_minute WITH (timescaledb.continuous) AS
        SELECT gateway, device, point, time_bucket(60000::bigint, ts_ms) AS minute_ms, count(*)::int AS n, {flag_aggs},
        min(value) FILTER (WHERE quality = 'N') AS vmin, max(value) FILTER (WHERE quality = 'N') AS vmax,
        sum(value) FILTER (WHERE quality = 'N') AS vsum, min(ts_ms) AS first_ms, max(ts_ms) AS last_ms
        FROM readings GROUP BY gateway, device, point, time_bucket(60000::bigint, ts_ms) WITH NO DATA""")
    await con.execute("ALTER MATERIALIZED VIEW rollup_minute SET (timescaledb.materialized_only = false)")
    await con.execute(f"SELECT add_continuous_aggregate_policy('rollup_minute', start_offset => {7 * day}::bigint,"
                      " end_offset => 60000::bigint, schedule_interval => INTERVAL '1 minute')")
    # Hour and day aggregates for dashboards, stacked on the minute one (hierarchical caggs, Timescale >= 2.9).
    flag_sums = ", ".join(f"sum({c})::int AS {c}" for c in FLAG_COLS)
    for name, width, source in (("rollup_hour", 3_600_000, "rollup_minute"), ("rollup_day", day, "rollup_hour")):
        await con.execute(f"""CREATE MATERIALIZED VIEW {name} WITH (timescaledb.continuous) AS
            SELECT gateway, device, point, time_bucket({width}::bigint, minute_ms) AS bucket_ms,
            sum(n)::int AS n, {flag_sums}, min(vmin) AS vmin, max(vmax) AS vmax, sum(vsum) AS vsum,
            min(first_ms) AS first_ms, max(last_ms) AS last_ms
            FROM {source} GROUP BY gateway, device, point, time_bucket({width}::bigint, minute_ms) WITH NO DATA""")
        await con.execute(f"SELECT add_continuous_aggregate_policy('{name}', start_offset => {30 * day}::bigint,"
                          f" end_offset => {width}::bigint, schedule_interval => INTERVAL '1 hour')")


async def _m2_identity(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c("""
    CREATE TABLE tenants (id text PRIMARY KEY, name text NOT NULL, created_ms bigint NOT NULL);
    CREATE TABLE sites (
        id text PRIMARY KEY, tenant text NOT NULL REFERENCES tenants(id), name text NOT NULL,
        created_ms bigint NOT NULL
    );
    CREATE TABLE claim_tokens (
        token_hash text PRIMARY KEY, tenant text NOT NULL, site text NOT NULL, created_ms bigint NOT NULL,
        expires_ms bigint NOT NULL, used_ms bigint, gateway text
    );
    ALTER TABLE gateways ADD COLUMN tenant text, ADD COLUMN mqtt_username text, ADD COLUMN mqtt_password_hash text;
    CREATE TABLE gateway_keys (
        gateway text NOT NULL, alg text NOT NULL, key text NOT NULL, created_ms bigint NOT NULL,
        retired_ms bigint, PRIMARY KEY (gateway, key)
    );
    """))


async def _m3_shadows_commands(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c("""
    CREATE TABLE shadows (gateway text PRIMARY KEY, version integer NOT NULL, doc text NOT NULL,
        updated_ms bigint NOT NULL);
    CREATE TABLE commands (
        id text PRIMARY KEY, gateway text NOT NULL, name text NOT NULL, args text NOT NULL,
        status text NOT NULL, result text, created_ms bigint NOT NULL, deadline_ms bigint NOT NULL, done_ms bigint
    );
    CREATE INDEX commands_gateway ON commands(gateway, created_ms);
    """))


async def _m4_api_identity(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c("""
    CREATE TABLE api_users (
        username text PRIMARY KEY, tenant text NOT NULL, role text NOT NULL, password_hash text NOT NULL,
        created_ms bigint NOT NULL
    );
    CREATE TABLE api_keys (
        id text PRIMARY KEY, tenant text NOT NULL, role text NOT NULL, name text NOT NULL,
        secret_hash text NOT NULL, created_ms bigint NOT NULL, revoked_ms bigint
    );
    CREATE INDEX gateways_tenant ON gateways(tenant);
    CREATE INDEX dead_letters_gateway ON dead_letters(gateway, id);
    """))


# Versioned migrations, applied in order at open and by `carbonlink cloud migrate`; never edit a shipped one.
async def _m5_dead_letter_replay(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    # Dead letters can be replayed once their cause is fixed; the outcome is kept beside the raw bytes.
    await con.execute(_c("""
    ALTER TABLE dead_letters ADD COLUMN resolved_ms bigint;
    ALTER TABLE dead_letters ADD COLUMN resolution text;
    """))


MIGRATIONS: list[Migration] = [_m1_core, _m2_identity, _m3_shadows_commands, _m4_api_identity,
                               _m5_dead_letter_replay]

# Rows of one tenant: its gateways are the join key for readings, rollups, latest values and dead letters.
IN_TENANT = "gateway IN (SELECT id FROM gateways WHERE tenant = ${})"


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
    ours = {"schema", "retention_days"}
    query = parse_qsl(parts.query)
    opts = {k: v for k, v in query if k in ours}
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k not in ours])))
    schema = opts.get("schema")
    if schema is not None and not (schema.replace("_", "").isalnum() and schema.isascii()):
        raise ValueError(f"schema {schema!r} must be letters, digits and underscores")
    retention = int(opts["retention_days"]) if "retention_days" in opts else None
    return dsn, schema, retention


def _minutes_sql(source: str) -> str:
    """Fold rows of ``source`` into the minute rollups, adding to what is there."""
    flags = ", ".join(f"count(*) FILTER (WHERE quality = '{f}')" for f in QUALITY_FLAGS)
    flag_updates = ", ".join(f"{c} = r.{c} + excluded.{c}" for c in FLAG_COLS)
    return f"""
        INSERT INTO rollup_minute AS r (device, point, minute_ms, gateway, n, {", ".join(FLAG_COLS)},
            vmin, vmax, vsum, first_ms, last_ms)
        SELECT device, point, ts_ms - ts_ms % 60000, gateway, count(*), {flags},
            min(value) FILTER (WHERE quality = 'N'), max(value) FILTER (WHERE quality = 'N'),
            sum(value) FILTER (WHERE quality = 'N'), min(ts_ms), max(ts_ms)
        FROM {source} GROUP BY device, point, ts_ms - ts_ms % 60000, gateway
        ORDER BY device, point, ts_ms - ts_ms % 60000, gateway  -- one lock order for every worker
        ON CONFLICT (device, point, minute_ms, gateway) DO UPDATE SET n = r.n + excluded.n, {flag_updates},
            vmin = least(r.vmin, excluded.vmin), vmax = greatest(r.vmax, excluded.vmax),
            vsum = CASE WHEN r.vsum IS NULL THEN excluded.vsum WHEN excluded.vsum IS NULL THEN r.vsum
                   ELSE r.vsum + excluded.vsum END,
            first_ms = least(r.first_ms, excluded.first_ms), last_ms = greatest(r.last_ms, excluded.last_ms)"""


def _commit_sql(rollups: bool) -> str:
    """The slow path in one statement: insert what is new, roll up and track latest from exactly that."""
    minutes = f", minutes AS ({_minutes_sql('ins')})" if rollups else ""
    return f"""
    WITH ins AS (
        INSERT INTO readings SELECT * FROM stage_readings ON CONFLICT DO NOTHING RETURNING *
    ){minutes}
    , lat AS (
        INSERT INTO latest AS l (gateway, device, point, ts_ms, value, unit, quality)
        SELECT DISTINCT ON (gateway, device, point) gateway, device, point, ts_ms, value, unit, quality
        FROM ins ORDER BY gateway, device, point, ts_ms DESC
        ON CONFLICT (gateway, device, point) DO UPDATE SET ts_ms = excluded.ts_ms, value = excluded.value,
            unit = excluded.unit, quality = excluded.quality WHERE excluded.ts_ms >= l.ts_ms
    )
    SELECT gateway, seq, count(*)::int FROM ins GROUP BY gateway, seq"""


class PostgresStore:
    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = url
        self.dsn, self.schema, self.retention_days = split_url(url)
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.timescale = False
        self._months: set[int] = set()  # month starts (ms) that have a partition
        self._plain_sql, self._timescale_sql = _commit_sql(rollups=True), _commit_sql(rollups=False)
        self._minutes_sql = _minutes_sql("stage_readings")
        self._seen_written: dict[str, int] = {}
        self._units: dict[tuple[str, str, str], str] = {}  # (gateway, device, point) -> registered unit

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open; call await store.open() first")
        return self._pool

    async def _init_connection(self, con: asyncpg.Connection) -> None:
        # Per-connection staging table for the idempotent slow path (readings already stored).
        await con.execute("CREATE TEMP TABLE IF NOT EXISTS stage_readings (gateway text, device text, point text,"
                          " ts_ms bigint, value double precision, unit text, quality text, seq bigint)"
                          " ON COMMIT DELETE ROWS")

    async def open(self) -> None:
        settings = {"search_path": f"{self.schema},public"} if self.schema else {}
        if self.schema:
            con = await asyncpg.connect(self.dsn)
            try:
                await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            finally:
                await con.close()
        await self.migrate(settings)
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self.pool_size,
                                               server_settings=settings, init=self._init_connection)
        async with self.pool.acquire() as con:
            # The layout was fixed by the first migration: plain partitioning has a default partition.
            self.timescale = bool(await con.fetchval("SELECT to_regclass('readings_default') IS NULL"))
            if not self.timescale:
                now = now_ms()
                await self.ensure_partitions({month_start_ms(now), next_month_ms(month_start_ms(now)),
                                              next_month_ms(next_month_ms(month_start_ms(now)))})

    async def migrate(self, settings: dict[str, str] | None = None) -> int:
        """Apply pending migrations under an advisory lock (workers may start together); returns the version."""
        con = await asyncpg.connect(self.dsn, server_settings=settings or (
            {"search_path": f"{self.schema},public"} if self.schema else {}))
        try:
            async with con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
                current = await con.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
                timescale = False
                if current == 0:
                    timescale = await self._try_timescale(con)
                else:
                    timescale = bool(await con.fetchval("SELECT to_regclass('readings_default') IS NULL"))
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
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # --- partitions (plain PostgreSQL) ---------------------------------------------------------------

    async def ensure_partitions(self, months: set[int]) -> None:
        """Make monthly partitions; rows already parked in readings_default for that month move in."""
        now = now_ms()
        low = month_start_ms(now - PARTITION_PAST_YEARS * 365 * 86_400_000)
        high = next_month_ms(next_month_ms(next_month_ms(month_start_ms(now))))
        wanted = {m for m in months if low <= m < high} - self._months
        if not wanted:
            return
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            existing = {r[0] for r in await con.fetch(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                " WHERE i.inhparent = 'readings'::regclass")}
            for m in sorted(wanted):
                name = "readings_p" + time.strftime("%Y%m", time.gmtime(m // 1000))
                if name in existing:
                    continue
                end = next_month_ms(m)
                await con.execute(f"CREATE TABLE {name} (LIKE readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
                await con.execute(f"WITH moved AS (DELETE FROM readings_default WHERE ts_ms >= {m} AND ts_ms < {end}"
                                  f" RETURNING *) INSERT INTO {name} SELECT * FROM moved")
                await con.execute(f"ALTER TABLE readings ATTACH PARTITION {name} FOR VALUES FROM ({m}) TO ({end})")
        self._months |= wanted

    async def _partitions_for(self, items: list[PendingBatch]) -> None:
        days = {ts // 86_400_000 for p in items for _, _, ts, _, _, _ in p.rows}
        months = {month_start_ms(d * 86_400_000) for d in days}
        if months - self._months:
            await self.ensure_partitions(months)

    # --- gateways ----------------------------------------------------------------------------------------

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str, *,
                               tenant: str | None = None) -> None:
        if tenant is not None:
            await self.ensure_site(tenant, site)
        await self.pool.execute(
            "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant) VALUES ($1,$2,$3,$4,$5,$6)"
            " ON CONFLICT(id) DO UPDATE SET site=excluded.site, alg=excluded.alg, key=excluded.key, revoked=false,"
            " tenant=coalesce(excluded.tenant, gateways.tenant)",
            gateway_id, site, alg, key, now_ms(), tenant)

    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None:
        row = await self.pool.fetchrow("SELECT id, site, alg, key, revoked, tenant FROM gateways WHERE id = $1",
                                       gateway_id)
        if row is None:
            return None
        previous = await self.pool.fetch(
            "SELECT key FROM gateway_keys WHERE gateway = $1 AND key != $2 AND retired_ms > $3",
            gateway_id, row["key"], now_ms() - KEY_GRACE_MS)
        return GatewayRecord(row["id"], row["site"], row["alg"], row["key"], row["revoked"],
                             tuple(r["key"] for r in previous), row["tenant"])

    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None:
        await self.pool.execute("UPDATE gateways SET status = $1, status_ms = $2 WHERE id = $3",
                                status, ts_ms, gateway_id)

    # --- writes --------------------------------------------------------------------------------------------

    async def commit_batch(self, batch: Batch, raw: bytes, received_ms: int) -> CommitResult:
        return (await self.commit_many([PendingBatch.from_batch(batch, raw, received_ms)]))[0]

    async def commit_many(self, items: list[PendingBatch]) -> list[CommitResult]:
        """Commit many batches in one transaction: one COPY for all their readings (group commit)."""
        if not items:
            return []
        if not self.timescale:
            await self._partitions_for(items)
        for attempt in range(6):
            try:
                async with self.pool.acquire() as con, con.transaction():
                    return await self._commit_many(con, items)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as exc:
                # Two workers touching the same rollup/latest rows; the transaction is gone, so redo it.
                if attempt == 5:
                    raise
                log.info("commit retried after %s", type(exc).__name__)
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _commit_many(self, con: asyncpg.Connection, items: list[PendingBatch]) -> list[CommitResult]:
        first: dict[tuple[str, int], int] = {}
        for i, p in enumerate(items):
            first.setdefault((p.gateway, p.seq), i)
        uniq = [items[i] for i in first.values()]
        new = await con.fetch(
            "INSERT INTO batches(gateway, seq, created_ms, received_ms, n, digest, payload)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::int[], $6::text[],"
            " $7::bytea[]) ON CONFLICT DO NOTHING RETURNING gateway, seq",
            [p.gateway for p in uniq], [p.seq for p in uniq], [p.created_ms for p in uniq],
            [p.received_ms for p in uniq], [len(p.rows) for p in uniq], [p.digest for p in uniq],
            [p.raw for p in uniq])
        new_keys = {(r[0], r[1]) for r in new}
        old = [p for p in uniq if (p.gateway, p.seq) not in new_keys]
        stored_digest: dict[tuple[str, int], str] = {}
        if old:
            for r in await con.fetch(
                    "SELECT b.gateway, b.seq, b.digest FROM batches b JOIN unnest($1::text[], $2::bigint[])"
                    " AS u(gateway, seq) ON b.gateway = u.gateway AND b.seq = u.seq",
                    [p.gateway for p in old], [p.seq for p in old]):
                stored_digest[(r[0], r[1])] = r[2]
        fresh = [p for p in uniq if (p.gateway, p.seq) in new_keys]
        records, wrong = await self._check_units(con, fresh)
        for p in fresh:
            if (p.gateway, p.seq) in wrong:
                await con.execute(
                    "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES ($1,$2,$3,$4,$5)",
                    p.received_ms, f"unit-check/{p.gateway}", p.gateway, unit_reason(p.seq, wrong[(p.gateway, p.seq)]),
                    p.raw)
        inserted_by_batch: dict[tuple[str, int], int] = {}
        if records:
            # COPY into the session's staging table, then INSERT ... SELECT: plain inserts first, since a
            # reading already stored is rare (a gateway that lost its outbox state); when one is there,
            # the savepoint rolls back and one statement inserts what is new, folds exactly those rows
            # into the minute rollups and the latest values, and counts them per batch.
            await con.copy_records_to_table("stage_readings", records=records, columns=READING_COLS)
            try:
                async with con.transaction():
                    await con.execute("INSERT INTO readings SELECT * FROM stage_readings")
                fast = True
            except asyncpg.UniqueViolationError:
                fast = False
            if fast:
                if not self.timescale:
                    await con.execute(self._minutes_sql)
                await self._upsert_latest(con, fresh, self._units)
                inserted_by_batch = {(p.gateway, p.seq): len(p.rows) - len(wrong.get((p.gateway, p.seq), ()))
                                     for p in fresh}
            else:
                for r in await con.fetch(self._plain_sql if not self.timescale else self._timescale_sql):
                    inserted_by_batch[(r[0], r[1])] = r[2]
            await con.execute("TRUNCATE stage_readings")
        seen: dict[str, int] = {}
        for p in fresh:
            seen[p.gateway] = max(seen.get(p.gateway, 0), p.received_ms)
        # last_seen is a presence hint: written at most once a second per gateway, so concurrent workers
        # do not queue on the same gateway rows in every transaction.
        seen = {g: ms for g, ms in seen.items() if ms - self._seen_written.get(g, 0) >= 1000}
        self._seen_written.update(seen)
        if seen:
            gws = sorted(seen)
            await con.execute(
                "UPDATE gateways g SET last_seen_ms = greatest(coalesce(g.last_seen_ms, 0), u.ms)"
                " FROM unnest($1::text[], $2::bigint[]) AS u(id, ms) WHERE g.id = u.id",
                gws, [seen[g] for g in gws])
        out: list[CommitResult] = []
        for i, p in enumerate(items):
            key = (p.gateway, p.seq)
            if first[key] == i and key in new_keys:
                n = inserted_by_batch.get(key, 0)
                bad = len(wrong.get(key, ()))
                out.append(CommitResult("committed", n, len(p.rows) - n - bad, bad))
            else:
                # Same seq, same content: a redelivery. Same seq, other content: a replay or a gateway
                # that lost its state (see SqliteStore.commit_batch).
                digest = stored_digest.get(key) or (items[first[key]].digest if key in new_keys else None)
                out.append(CommitResult("duplicate" if digest == p.digest else "conflict", 0, len(p.rows)))
        return out

    async def _check_units(self, con: asyncpg.Connection, fresh: list[PendingBatch]
                           ) -> tuple[list[tuple[Any, ...]], dict[tuple[str, int], list[str]]]:
        """Rows to store, and per batch the readings whose unit is not their point's registered one.

        The registered unit is the first one stored for (gateway, device, point), i.e. the unit in
        ``latest`` (mismatches never reach it); cached per store, so the hot path is one dict lookup a row.
        """
        units = self._units
        # A batch has a few distinct (device, point, unit): look at those, not at every row.
        distinct = [{(r[0], r[1], r[4]) for r in p.rows} for p in fresh]
        missing = {(p.gateway, d, pt) for p, ds in zip(fresh, distinct, strict=True) for d, pt, _ in ds} - units.keys()
        if missing:
            keys = sorted(missing)
            for r in await con.fetch(
                    "SELECT l.gateway, l.device, l.point, l.unit FROM latest l JOIN unnest($1::text[], $2::text[],"
                    " $3::text[]) AS u(gateway, device, point) ON l.gateway = u.gateway AND l.device = u.device"
                    " AND l.point = u.point", [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]):
                units[(r[0], r[1], r[2])] = r[3]
        records: list[tuple[Any, ...]] = []
        wrong: dict[tuple[str, int], list[str]] = {}
        for p, ds in zip(fresh, distinct, strict=True):
            gw, seq = p.gateway, p.seq
            if all((units.get((gw, d, pt)) or units.setdefault((gw, d, pt), u)) == u for d, pt, u in ds):
                records += [(gw, d, pt, ts, v, u, q, seq) for d, pt, ts, v, u, q in p.rows]
                continue
            for d, pt, ts, v, u, q in p.rows:
                unit = units.get((gw, d, pt)) or units.setdefault((gw, d, pt), u)  # the first unit registers
                if unit == u:
                    records.append((gw, d, pt, ts, v, u, q, seq))
                else:
                    wrong.setdefault((gw, seq), []).append(f"{d}/{pt}@{ts} in {u!r}, registered {unit!r}")
        return records, wrong

    @staticmethod
    async def _upsert_latest(con: asyncpg.Connection, fresh: list[PendingBatch],
                             units: dict[tuple[str, str, str], str]) -> None:
        last: dict[tuple[str, str, str], tuple[int, float, str, str]] = {}
        for p in fresh:
            gw = p.gateway
            for d, pt, ts, v, u, q in p.rows:
                if units.get((gw, d, pt), u) != u:
                    continue  # refused by the unit check
                cur = last.get((gw, d, pt))
                if cur is None or ts >= cur[0]:
                    last[(gw, d, pt)] = (ts, v, u, q)
        keys = sorted(last)  # one lock order for every worker
        vals = [last[k] for k in keys]
        await con.execute(
            "INSERT INTO latest AS l (gateway, device, point, ts_ms, value, unit, quality)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::float8[], $6::text[],"
            " $7::text[]) ON CONFLICT (gateway, device, point) DO UPDATE SET ts_ms = excluded.ts_ms,"
            " value = excluded.value, unit = excluded.unit, quality = excluded.quality"
            " WHERE excluded.ts_ms >= l.ts_ms",
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [v[0] for v in vals],
            [v[1] for v in vals], [v[2] for v in vals], [v[3] for v in vals])

    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None,
                          received_ms: int) -> None:
        await self.pool.execute(
            "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES ($1,$2,$3,$4,$5)",
            received_ms, topic, gateway, reason, raw)

    # --- reads ----------------------------------------------------------------------------------------------

    async def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(sql, *args)]

    async def list_gateways(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE tenant = $1", (tenant,)) if tenant is not None else ("", ())
        return await self._rows(
            "SELECT id, tenant, site, alg, status, status_ms, last_seen_ms, revoked::int AS revoked,"
            " (SELECT count(*) FROM batches b WHERE b.gateway = g.id) AS batches FROM gateways g"
            + where + " ORDER BY id", *args)

    async def list_devices(self, tenant: str | None = None) -> list[dict[str, Any]]:
        where, args = (" WHERE " + IN_TENANT.format(1), (tenant,)) if tenant is not None else ("", ())
        return await self._rows(
            "SELECT gateway, device, count(*) AS points, max(ts_ms) AS last_ts_ms FROM latest"
            + where + " GROUP BY gateway, device ORDER BY gateway, device", *args)

    async def latest(self, device: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if device:
            args.append(device)
            where.append(f"device = ${len(args)}")
        if tenant is not None:
            args.append(tenant)
            where.append(IN_TENANT.format(len(args)))
        sql = "SELECT gateway, device, point, ts_ms, value, unit, quality FROM latest"
        rows = await self._rows(sql + (" WHERE " + " AND ".join(where) if where else "")
                                + " ORDER BY gateway, device, point", *args)
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def readings(self, q: ReadingQuery) -> list[dict[str, Any]]:
        where: list[str] = ["device = $1"]
        args: list[Any] = [q.device]
        for col, val in (("point", q.point), ("gateway", q.gateway)):
            if val is not None:
                args.append(val)
                where.append(f"{col} = ${len(args)}")
        if q.start_ms is not None:
            args.append(q.start_ms)
            where.append(f"ts_ms >= ${len(args)}")
        if q.end_ms is not None:
            args.append(q.end_ms)
            where.append(f"ts_ms < ${len(args)}")
        if q.after is not None:
            args.extend([q.after[0], q.after[1]])
            where.append(f"(ts_ms > ${len(args) - 1} OR (ts_ms = ${len(args) - 1} AND point > ${len(args)}))")
        if q.tenant is not None:
            args.append(q.tenant)
            where.append(IN_TENANT.format(len(args)))
        args.append(q.limit)
        rows = await self._rows(
            "SELECT gateway, device, point, ts_ms, value, unit, quality, seq FROM readings WHERE "
            + " AND ".join(where) + f" ORDER BY ts_ms, point COLLATE \"C\" LIMIT ${len(args)}", *args)
        for r in rows:
            r["ts"] = format_ts(r["ts_ms"])
        return rows

    async def dead_letters(self, limit: int = 100, tenant: str | None = None,
                           before_id: int | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            args.append(tenant)
            where.append(IN_TENANT.format(len(args)))
        if before_id is not None:
            args.append(before_id)
            where.append(f"id < ${len(args)}")
        args.append(limit)
        rows = await self._rows(
            "SELECT id, received_ms, topic, gateway, reason, resolved_ms, resolution, payload FROM dead_letters"
            + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY id DESC LIMIT ${len(args)}", *args)
        for r in rows:
            payload = bytes(r.pop("payload"))
            r["size"] = len(payload)
            r["payload_preview"] = payload[:256].decode("utf-8", "replace")
        return rows

    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        if tenant is not None:
            w = " WHERE " + IN_TENANT.format(1)
            row = await self.pool.fetchrow(
                f"SELECT (SELECT count(*) FROM readings{w}) AS readings, (SELECT count(*) FROM batches{w}) AS batches,"
                f" (SELECT count(*) FROM dead_letters{w}) AS dead_letters,"
                " (SELECT count(*) FROM gateways WHERE tenant = $1) AS gateways", tenant)
            return {k: int(v) for k, v in dict(row).items()} if row else {}
        row = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM readings) AS readings, (SELECT count(*) FROM batches) AS batches,"
            " (SELECT count(*) FROM dead_letters) AS dead_letters, (SELECT count(*) FROM gateways) AS gateways")
        return {k: int(v) for k, v in dict(row).items()} if row else {}

    # --- data plane: rollups and completeness ------------------------------------------------------------

    async def hour_rollups(self, q: SeriesQuery) -> list[dict[str, Any]]:
        where, args = ["device = $1", "minute_ms >= $2", "minute_ms < $3"], [q.device, q.start_ms, q.end_ms]
        for col, val in (("point", q.point), ("gateway", q.gateway)):
            if val is not None:
                args.append(val)
                where.append(f"{col} = ${len(args)}")
        if q.tenant is not None:
            args.append(q.tenant)
            where.append(IN_TENANT.format(len(args)))
        flags = ", ".join(f"sum({c})::int AS {c}" for c in FLAG_COLS)
        return await self._rows(
            "SELECT gateway, device, point, (minute_ms / 3600000) * 3600000 AS hour_ms, sum(n)::int AS n, "
            + flags + ", min(vmin) AS vmin, max(vmax) AS vmax, sum(vsum) AS vsum,"
            " (count(*) FILTER (WHERE q_n > 0))::int AS valid_minutes, min(first_ms) AS first_ms,"
            " max(last_ms) AS last_ms FROM rollup_minute WHERE " + " AND ".join(where)
            + " GROUP BY gateway, device, point, hour_ms"
            " ORDER BY point COLLATE \"C\", gateway COLLATE \"C\", hour_ms", *args)

    async def seq_gaps(self, gateway: str, limit: int = 1000) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT min(seq), max(seq), count(*) FROM batches WHERE gateway = $1",
                                       gateway)
        gaps = await self._rows(
            "SELECT seq + 1 AS first, nxt - 1 AS last FROM (SELECT seq, lead(seq) OVER (ORDER BY seq) AS nxt"
            " FROM batches WHERE gateway = $1) t WHERE nxt > seq + 1 ORDER BY first LIMIT $2", gateway, limit)
        return seq_gap_summary(gateway, tuple(row) if row else None, gaps)

    async def late_batches(self, gateway: str, min_delay_ms: int, limit: int = 1000) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT seq, created_ms, received_ms, n, received_ms - created_ms AS delay_ms FROM batches"
            " WHERE gateway = $1 AND received_ms - created_ms >= $2 ORDER BY seq LIMIT $3",
            gateway, min_delay_ms, limit)

    # --- identity and provisioning (mirrors SqliteStore) -------------------------------------------------

    async def ensure_site(self, tenant: str, site: str) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await self._ensure_site(con, tenant, site)

    @staticmethod
    async def _ensure_site(con: asyncpg.Connection, tenant: str, site: str) -> None:
        await con.execute("INSERT INTO tenants(id, name, created_ms) VALUES ($1,$1,$2) ON CONFLICT DO NOTHING",
                          tenant, now_ms())
        owner = await con.fetchval("SELECT tenant FROM sites WHERE id = $1", site)
        if owner is not None and owner != tenant:
            raise ClaimError(f"site {site!r} belongs to another tenant")
        await con.execute("INSERT INTO sites(id, tenant, name, created_ms) VALUES ($1,$2,$1,$3)"
                          " ON CONFLICT DO NOTHING", site, tenant, now_ms())

    async def add_claim_token(self, token_hash: str, tenant: str, site: str, created_ms: int,
                              expires_ms: int) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await self._ensure_site(con, tenant, site)
            await con.execute(
                "INSERT INTO claim_tokens(token_hash, tenant, site, created_ms, expires_ms) VALUES ($1,$2,$3,$4,$5)",
                token_hash, tenant, site, created_ms, expires_ms)

    async def redeem_claim(self, token_hash: str, gateway_id: str, alg: str, key: str, mqtt_username: str,
                           mqtt_password_hash: str, now: int) -> tuple[str, str]:
        """Use a claim token once to register a gateway; returns (tenant, site)."""
        async with self.pool.acquire() as con, con.transaction():
            tok = await con.fetchrow("SELECT tenant, site, expires_ms, used_ms FROM claim_tokens"
                                     " WHERE token_hash = $1 FOR UPDATE", token_hash)
            if tok is None:
                raise ClaimError("unknown claim token; ask the operator for a new one")
            if tok["used_ms"] is not None:
                raise ClaimError("this claim token was already used; claim tokens work once")
            if tok["expires_ms"] <= now:
                raise ClaimError("this claim token has expired; ask the operator for a new one")
            gw = await con.fetchrow("SELECT revoked, tenant FROM gateways WHERE id = $1", gateway_id)
            if gw is not None and gw["revoked"]:
                raise ClaimError(f"gateway {gateway_id!r} is revoked; use a new gateway id")
            if gw is not None and gw["tenant"] not in (None, tok["tenant"]):
                raise ClaimError(f"gateway id {gateway_id!r} is taken")
            await con.execute(
                "INSERT INTO gateways(id, site, alg, key, registered_ms, tenant, mqtt_username, mqtt_password_hash)"
                " VALUES ($1,$2,$3,$4,$5,$6,$7,$8) ON CONFLICT(id) DO UPDATE SET site=excluded.site,"
                " alg=excluded.alg, key=excluded.key, tenant=excluded.tenant, mqtt_username=excluded.mqtt_username,"
                " mqtt_password_hash=excluded.mqtt_password_hash",
                gateway_id, tok["site"], alg, key, now, tok["tenant"], mqtt_username, mqtt_password_hash)
            await con.execute("UPDATE gateway_keys SET retired_ms = $1 WHERE gateway = $2 AND retired_ms IS NULL",
                              now, gateway_id)
            await con.execute(
                "INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES ($1,$2,$3,$4)"
                " ON CONFLICT (gateway, key) DO UPDATE SET alg = excluded.alg, created_ms = excluded.created_ms,"
                " retired_ms = NULL", gateway_id, alg, key, now)
            await con.execute("UPDATE claim_tokens SET used_ms = $1, gateway = $2 WHERE token_hash = $3",
                              now, gateway_id, token_hash)
        return str(tok["tenant"]), str(tok["site"])

    async def rotate_key(self, gateway_id: str, new_key: str, now: int) -> None:
        async with self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow("SELECT alg, key FROM gateways WHERE id = $1 FOR UPDATE", gateway_id)
            if row is None:
                raise ClaimError(f"gateway {gateway_id!r} is not registered")
            await con.execute("INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES ($1,$2,$3,$4)"
                              " ON CONFLICT DO NOTHING", gateway_id, row["alg"], row["key"], now)
            await con.execute("UPDATE gateway_keys SET retired_ms = $1 WHERE gateway = $2 AND key = $3",
                              now, gateway_id, row["key"])
            await con.execute(
                "INSERT INTO gateway_keys(gateway, alg, key, created_ms) VALUES ($1,$2,$3,$4)"
                " ON CONFLICT (gateway, key) DO UPDATE SET alg = excluded.alg, created_ms = excluded.created_ms,"
                " retired_ms = NULL", gateway_id, row["alg"], new_key, now)
            await con.execute("UPDATE gateways SET key = $1 WHERE id = $2", new_key, gateway_id)

    async def set_revoked(self, gateway_id: str, revoked: bool) -> bool:
        status = await self.pool.execute("UPDATE gateways SET revoked = $1 WHERE id = $2", revoked, gateway_id)
        return status != "UPDATE 0"

    async def broker_accounts(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT id, site, mqtt_username, mqtt_password_hash, revoked::int AS revoked FROM gateways"
            " WHERE mqtt_username IS NOT NULL ORDER BY id")

    async def list_tenants(self) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, name, created_ms FROM tenants ORDER BY id")

    async def list_sites(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, tenant, name, created_ms FROM sites WHERE tenant = $1 ORDER BY id", tenant)

    # --- API users and keys (mirrors SqliteStore) --------------------------------------------------------

    async def add_user(self, username: str, tenant: str, role: str, password_hash: str, now: int) -> bool:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("INSERT INTO tenants(id, name, created_ms) VALUES ($1,$1,$2) ON CONFLICT DO NOTHING",
                              tenant, now)
            status = await con.execute(
                "INSERT INTO api_users(username, tenant, role, password_hash, created_ms) VALUES ($1,$2,$3,$4,$5)"
                " ON CONFLICT DO NOTHING", username, tenant, role, password_hash, now)
        return bool(status == "INSERT 0 1")

    async def get_user(self, username: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM api_users WHERE username = $1", username)
        return rows[0] if rows else None

    async def list_users(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT username, tenant, role, created_ms FROM api_users WHERE tenant = $1"
                                " ORDER BY username", tenant)

    async def delete_user(self, tenant: str, username: str) -> bool:
        status = await self.pool.execute("DELETE FROM api_users WHERE tenant = $1 AND username = $2",
                                         tenant, username)
        return bool(status == "DELETE 1")

    async def add_api_key(self, key_id: str, tenant: str, role: str, name: str, secret_hash: str,
                          now: int) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("INSERT INTO tenants(id, name, created_ms) VALUES ($1,$1,$2) ON CONFLICT DO NOTHING",
                              tenant, now)
            await con.execute(
                "INSERT INTO api_keys(id, tenant, role, name, secret_hash, created_ms) VALUES ($1,$2,$3,$4,$5,$6)",
                key_id, tenant, role, name, secret_hash, now)

    async def get_api_key(self, key_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM api_keys WHERE id = $1", key_id)
        return rows[0] if rows else None

    async def list_api_keys(self, tenant: str) -> list[dict[str, Any]]:
        return await self._rows("SELECT id, tenant, role, name, created_ms, revoked_ms FROM api_keys"
                                " WHERE tenant = $1 ORDER BY created_ms, id", tenant)

    async def revoke_api_key(self, tenant: str, key_id: str, now: int) -> bool:
        status = await self.pool.execute("UPDATE api_keys SET revoked_ms = $1 WHERE tenant = $2 AND id = $3"
                                         " AND revoked_ms IS NULL", now, tenant, key_id)
        return bool(status == "UPDATE 1")

    # --- device shadows and commands (mirrors SqliteStore; cloud/shadows.py, cloud/commands.py) ---------

    async def get_shadow(self, gateway: str) -> tuple[int, dict[str, Any]] | None:
        row = await self.pool.fetchrow("SELECT version, doc FROM shadows WHERE gateway = $1", gateway)
        return (int(row["version"]), json.loads(row["doc"])) if row else None

    async def put_shadow(self, gateway: str, expected_version: int, doc: dict[str, Any], updated_ms: int) -> bool:
        """Compare-and-set: writes version expected+1 only if the stored version is still ``expected``."""
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        if expected_version == 0:
            status = await self.pool.execute(
                "INSERT INTO shadows(gateway, version, doc, updated_ms) VALUES ($1, 1, $2, $3)"
                " ON CONFLICT DO NOTHING", gateway, text, updated_ms)
            return status == "INSERT 0 1"
        status = await self.pool.execute(
            "UPDATE shadows SET version = version + 1, doc = $1, updated_ms = $2 WHERE gateway = $3 AND version = $4",
            text, updated_ms, gateway, expected_version)
        return status == "UPDATE 1"

    async def add_command(self, command_id: str, gateway: str, name: str, args: dict[str, Any],
                          created_ms: int, deadline_ms: int) -> None:
        await self.pool.execute(
            "INSERT INTO commands(id, gateway, name, args, status, created_ms, deadline_ms)"
            " VALUES ($1,$2,$3,$4,'pending',$5,$6)", command_id, gateway, name, json.dumps(args), created_ms,
            deadline_ms)

    async def finish_command(self, command_id: str, status: str, result: dict[str, Any] | None,
                             done_ms: int) -> bool:
        """Record a command's end once; a late result after a timeout is kept but does not change status."""
        text = json.dumps(result) if result is not None else None
        done = await self.pool.execute(
            "UPDATE commands SET status = $1, result = $2, done_ms = $3 WHERE id = $4 AND status = 'pending'",
            status, text, done_ms, command_id)
        if done == "UPDATE 1":
            return True
        await self.pool.execute("UPDATE commands SET result = coalesce(result, $1)"
                                " WHERE id = $2 AND status = 'timeout'",
                                text, command_id)
        return False

    async def get_command(self, command_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM commands WHERE id = $1", command_id)
        return _command_row(rows[0]) if rows else None

    async def list_commands(self, gateway: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self._rows("SELECT * FROM commands WHERE gateway = $1 ORDER BY created_ms DESC LIMIT $2",
                                gateway, limit)
        return [_command_row(r) for r in rows]

    # --- dead-letter replay ------------------------------------------------------------------------

    async def dead_letter_raw(self, letter_id: int) -> tuple[str, bytes, int | None] | None:
        row = await self.pool.fetchrow("SELECT topic, payload, resolved_ms FROM dead_letters WHERE id = $1", letter_id)
        return (str(row[0]), bytes(row[1]), row[2]) if row else None

    async def resolve_dead_letter(self, letter_id: int, resolution: str, ts_ms: int) -> None:
        await self.pool.execute("UPDATE dead_letters SET resolved_ms = $1, resolution = $2 WHERE id = $3",
                                ts_ms, resolution, letter_id)

    async def unresolved_dead_letters(self, limit: int = 1000) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT id FROM dead_letters WHERE resolved_ms IS NULL ORDER BY id LIMIT $1", limit)
        return [int(r[0]) for r in rows]


def _command_row(r: dict[str, Any]) -> dict[str, Any]:
    r["args"] = json.loads(r["args"])
    r["result"] = json.loads(r["result"]) if r["result"] is not None else None
    return r
