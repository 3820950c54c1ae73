"""PostgreSQL schema migrations, applied in order under an advisory lock; never edit one that has shipped.

Migrations 1-5 built the first schema (text-keyed readings); 6 moves readings to integer series ids.
``timescale`` says whether TimescaleDB was found when the first migration ran (hypertables and
compression instead of monthly partitions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg

from .migrations_shared import CARBON_ASSETS_M12, CARBON_DAYS_M11, CARBON_M7
from .model import FLAG_COLS, QUALITY_FLAGS


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


# 6: integer series ids. The text key (gateway, device, point, ts) capped COPY at ~150,000 rows/s;
# readings are now (series, ts_ms) with the point registry in ``series``. Hour rollups are a table kept
# by the store's refresher from dirty-hour marks the ingest writes, on plain PostgreSQL and TimescaleDB
# alike; events, the audit log and the anchoring tables join the schema, so proofs work here too.
async def _m6_series(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    day = 86_400_000
    flag_cols = ", ".join(f"{c} integer NOT NULL DEFAULT 0" for c in FLAG_COLS)
    await con.execute(_c("""
    CREATE TABLE series (
        id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, gateway text NOT NULL, device text NOT NULL,
        point text NOT NULL, unit text NOT NULL, created_ms bigint NOT NULL, UNIQUE (gateway, device, point)
    );
    CREATE INDEX series_device ON series (device, point);
    INSERT INTO series (gateway, device, point, unit, created_ms)
        SELECT gateway, device, point, unit, 0 FROM latest ORDER BY gateway, device, point;
    """))
    if timescale:
        for view in ("rollup_day", "rollup_hour", "rollup_minute"):
            await con.execute(f"DROP MATERIALIZED VIEW IF EXISTS {view} CASCADE")
    else:
        await con.execute("DROP TABLE IF EXISTS rollup_minute")
    await con.execute("ALTER TABLE readings RENAME TO readings_v1")
    if not timescale:
        await con.execute("ALTER TABLE readings_default RENAME TO readings_v1_default")
    await con.execute("""CREATE TABLE readings (
        series integer NOT NULL, ts_ms bigint NOT NULL, value double precision NOT NULL, quality text NOT NULL,
        seq bigint NOT NULL, PRIMARY KEY (series, ts_ms))""" + ("" if timescale else " PARTITION BY RANGE (ts_ms)"))
    if timescale:
        await con.execute(f"SELECT create_hypertable('readings', 'ts_ms', chunk_time_interval => {7 * day}::bigint)")
        await con.execute("SELECT set_integer_now_func('readings', 'cl_now_ms')")
        await con.execute("ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_orderby = 'ts_ms',"
                          " timescaledb.compress_segmentby = 'series')")
        await con.execute(f"SELECT add_compression_policy('readings', compress_after => {30 * day}::bigint)")
        if retention_days:
            await con.execute(f"SELECT add_retention_policy('readings', drop_after => {retention_days * day}::bigint)")
    else:
        await con.execute("CREATE TABLE readings_default PARTITION OF readings DEFAULT")
    await con.execute("""INSERT INTO readings (series, ts_ms, value, quality, seq)
        SELECT s.id, r.ts_ms, r.value, r.quality, r.seq FROM readings_v1 r
        JOIN series s ON s.gateway = r.gateway AND s.device = r.device AND s.point = r.point""")
    await con.execute("DROP TABLE readings_v1 CASCADE")
    await con.execute(_c(f"""
    ALTER TABLE latest RENAME TO latest_v1;
    CREATE TABLE latest (series integer PRIMARY KEY, ts_ms bigint NOT NULL, value double precision NOT NULL,
        quality text NOT NULL);
    INSERT INTO latest SELECT s.id, l.ts_ms, l.value, l.quality FROM latest_v1 l
        JOIN series s ON s.gateway = l.gateway AND s.device = l.device AND s.point = l.point;
    DROP TABLE latest_v1;
    CREATE TABLE rollup_hour (
        series integer NOT NULL, hour_ms bigint NOT NULL, n integer NOT NULL, {flag_cols},
        vmin double precision, vmax double precision, vsum double precision, valid_minutes integer NOT NULL,
        first_ms bigint NOT NULL, last_ms bigint NOT NULL, PRIMARY KEY (series, hour_ms)
    );
    CREATE TABLE rollup_dirty (gateway text NOT NULL, hour_ms bigint NOT NULL, gen bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway, hour_ms));
    INSERT INTO rollup_dirty (gateway, hour_ms)
        SELECT DISTINCT s.gateway, r.ts_ms - r.ts_ms % 3600000 FROM readings r JOIN series s ON s.id = r.series;
    CREATE TABLE anchor_pending (gateway text NOT NULL, hour_ms bigint NOT NULL, gen bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway, hour_ms));
    INSERT INTO anchor_pending SELECT gateway, hour_ms, 0 FROM rollup_dirty;
    CREATE TABLE events (
        gateway text NOT NULL, id text NOT NULL, kind text NOT NULL, severity text NOT NULL, ts_ms bigint NOT NULL,
        received_ms bigint NOT NULL, device text, point text, body text NOT NULL, raw bytea NOT NULL,
        PRIMARY KEY (gateway, id)
    );
    CREATE INDEX events_gateway_ts ON events (gateway, ts_ms);
    CREATE INDEX events_kind_ts ON events (kind, ts_ms);
    CREATE TABLE audit_log (
        id bigserial PRIMARY KEY, ts_ms bigint NOT NULL, actor text NOT NULL, tenant text, action text NOT NULL,
        subject text, detail text NOT NULL DEFAULT '{{}}'
    );
    CREATE TABLE anchor_state (key text PRIMARY KEY, value text NOT NULL);
    CREATE TABLE anchor_dirty (site text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
        PRIMARY KEY (site, start_ms, end_ms));
    CREATE TABLE anchor_jobs (
        id bigserial PRIMARY KEY, site text NOT NULL, start_ms bigint NOT NULL, end_ms bigint NOT NULL,
        part integer NOT NULL, window_id text NOT NULL UNIQUE, count integer NOT NULL, root text NOT NULL,
        state text NOT NULL, attempts integer NOT NULL DEFAULT 0, last_error text,
        next_try_ms bigint NOT NULL DEFAULT 0, chain_id bigint, contract text, tx_hash text, block bigint,
        created_ms bigint NOT NULL, updated_ms bigint NOT NULL, UNIQUE (site, start_ms, end_ms, part)
    );
    CREATE INDEX anchor_jobs_state ON anchor_jobs (state, next_try_ms);
    CREATE TABLE anchor_leaves (series integer NOT NULL, ts_ms bigint NOT NULL, job bigint NOT NULL,
        leaf bytea NOT NULL, PRIMARY KEY (series, ts_ms));
    CREATE INDEX anchor_leaves_job ON anchor_leaves (job);
    CREATE TABLE store_state (key text PRIMARY KEY, value text NOT NULL);
    """))
    # A batch's identity is now its signature (deterministic for Ed25519 and HMAC), not a second hash.
    await con.execute("UPDATE batches SET digest = coalesce(convert_from(payload, 'UTF8')::json ->> 'sig', digest)")


# 7: carbon accounting (cloud/carbon/sqlstore.py): stacks and their series, stack-hours in whole grams,
# revisions, allowances and allowance warnings.
async def _m7_carbon(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(CARBON_M7)


# 8: rules as data (versions per rule, rule-set versions, content-addressed sets for delivery by hash),
# alerts with their lifecycle, silences, the provenance of derived readings, readings derived in the cloud.
async def _m8_rules(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c("""
    CREATE TABLE rule_versions (
        tenant text NOT NULL, rule text NOT NULL, version integer NOT NULL, doc text, hash text NOT NULL,
        placement text NOT NULL, created_ms bigint NOT NULL, created_by text NOT NULL, comment text NOT NULL,
        PRIMARY KEY (tenant, rule, version)
    );
    CREATE TABLE rule_sets (
        tenant text NOT NULL, version integer NOT NULL, hash text NOT NULL, cloud_hash text NOT NULL,
        doc text NOT NULL, rules integer NOT NULL, silences integer NOT NULL, created_ms bigint NOT NULL,
        created_by text NOT NULL, reason text NOT NULL, PRIMARY KEY (tenant, version)
    );
    CREATE TABLE rule_blobs (
        tenant text NOT NULL, hash text NOT NULL, doc text NOT NULL, bytes integer NOT NULL,
        created_ms bigint NOT NULL, PRIMARY KEY (tenant, hash)
    );
    CREATE TABLE silences (
        tenant text NOT NULL, id text NOT NULL, rule text, gateway text, device text, point text,
        start_ms bigint NOT NULL, end_ms bigint NOT NULL, reason text NOT NULL, created_by text NOT NULL,
        created_ms bigint NOT NULL, ended_ms bigint, ended_by text, PRIMARY KEY (tenant, id)
    );
    CREATE INDEX silences_end ON silences (tenant, end_ms);
    CREATE TABLE alerts (
        tenant text NOT NULL, id text NOT NULL, rule text NOT NULL, subject text NOT NULL, gateway text NOT NULL,
        device text, point text, version integer NOT NULL, severity text NOT NULL, state text NOT NULL,
        ts_ms bigint NOT NULL, raised_ms bigint, since_ms bigint, cleared_ms bigint, cleared_by text,
        acked_ms bigint, acked_by text, silenced_by text, note text NOT NULL, values_json text NOT NULL,
        evidence text NOT NULL, sources text NOT NULL, duplicate_of text, updated_ms bigint NOT NULL,
        PRIMARY KEY (tenant, id)
    );
    CREATE INDEX alerts_tenant_ts ON alerts (tenant, ts_ms, id);
    CREATE INDEX alerts_open ON alerts (tenant, rule, subject, state);
    CREATE TABLE rule_derivations (
        gateway text NOT NULL, device text NOT NULL, point text NOT NULL, from_ts bigint NOT NULL,
        hash text NOT NULL, rule text NOT NULL, version integer NOT NULL, unit text NOT NULL, rule_text text NOT NULL,
        inputs text NOT NULL, event text, received_ms bigint NOT NULL,
        PRIMARY KEY (gateway, device, point, from_ts, hash)
    );
    CREATE TABLE derived_readings (
        tenant text NOT NULL, gateway text NOT NULL, device text NOT NULL, point text NOT NULL,
        ts_ms bigint NOT NULL, value double precision NOT NULL, unit text NOT NULL, quality text NOT NULL,
        rule text NOT NULL, version integer NOT NULL, rule_hash text NOT NULL, window_start bigint,
        window_end bigint, inputs text NOT NULL, created_ms bigint NOT NULL,
        PRIMARY KEY (gateway, device, point, ts_ms)
    );
    CREATE INDEX derived_readings_tenant ON derived_readings (tenant, device, point, ts_ms);
    """))


# Cloud rules over what every ingest worker committed: the commit queues each new batch here in its own
# transaction; one evaluator at a time (a lease) takes them in (gateway, seq) order and deletes them.
# Anomaly models by hash, per tenant, for gateways to fetch (cloud/model_delivery.py).
_RULES_QUEUE = """
    CREATE TABLE rules_pending (id bigserial PRIMARY KEY, gateway text NOT NULL, seq bigint NOT NULL,
                                UNIQUE (gateway, seq));
    CREATE TABLE leases (name text PRIMARY KEY, owner text NOT NULL, until_ms bigint NOT NULL);
    CREATE TABLE model_blobs (tenant text NOT NULL, sha256 text NOT NULL, model_id text NOT NULL,
                              version integer NOT NULL, onnx bytea NOT NULL, bytes integer NOT NULL,
                              created_ms bigint NOT NULL, created_by text NOT NULL, PRIMARY KEY (tenant, sha256));
"""


async def _m_rules_queue(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(_c(_RULES_QUEUE))


async def _m10_users_per_tenant(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    """10: a username is unique within its tenant, not across tenants; logins name the tenant (cloud/auth.py)."""
    await con.execute("""
    ALTER TABLE api_users DROP CONSTRAINT api_users_pkey;
    ALTER TABLE api_users ADD PRIMARY KEY (tenant, username);
    CREATE INDEX api_users_username ON api_users (username);
    """)


USERS_PER_TENANT = _m10_users_per_tenant  # tests migrate up to it


# 11: per stack and local day (UTC+8) sums of the stack-hours (migrations_shared.py).
async def _m11_carbon_days(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(CARBON_DAYS_M11)


# 12: solar inverters and forest plots accounted per hour like the stacks (migrations_shared.py).
async def _m12_carbon_assets(con: asyncpg.Connection, timescale: bool, retention_days: int | None) -> None:
    await con.execute(CARBON_ASSETS_M12)


MIGRATIONS: list[Migration] = [_m1_core, _m2_identity, _m3_shadows_commands, _m4_api_identity,
                               _m5_dead_letter_replay, _m6_series, _m7_carbon, _m8_rules, _m_rules_queue,
                               _m10_users_per_tenant, _m11_carbon_days, _m12_carbon_assets]
