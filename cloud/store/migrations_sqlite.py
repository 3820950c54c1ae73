"""SQLite schema migrations, applied in order at open; never edit one that has shipped.

Migrations 1-5 built the first schema (text-keyed readings); 6 moves readings to integer series ids.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiosqlite

from .migrations_shared import CARBON_ASSETS_M12, CARBON_DAYS_M11, CARBON_M7

_SQL: list[str] = [
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


async def _run(con: aiosqlite.Connection, sql: str) -> None:
    for stmt in (s for s in sql.split(";") if s.strip()):
        await con.execute(stmt)


def _script(sql: str) -> Callable[[aiosqlite.Connection], Awaitable[None]]:
    async def step(con: aiosqlite.Connection) -> None:
        await _run(con, sql)

    return step


_FLAGS = ", ".join(f"q_{f} INTEGER NOT NULL DEFAULT 0" for f in "nfmsdctb")


async def _m6_series(con: aiosqlite.Connection) -> None:
    """Integer series ids, hour rollups kept from dirty-hour marks, events, audit log, anchoring tables."""
    await _run(con, f"""
    CREATE TABLE series (
        id INTEGER PRIMARY KEY, gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL,
        unit TEXT NOT NULL, created_ms INTEGER NOT NULL, UNIQUE (gateway, device, point)
    );
    CREATE INDEX series_device ON series (device, point);
    INSERT INTO series (gateway, device, point, unit, created_ms)
        SELECT gateway, device, point, unit, 0 FROM latest ORDER BY gateway, device, point;
    CREATE TABLE readings_v2 (
        series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, value REAL NOT NULL, quality TEXT NOT NULL,
        seq INTEGER NOT NULL, PRIMARY KEY (series, ts_ms)
    ) WITHOUT ROWID;
    INSERT INTO readings_v2 SELECT s.id, r.ts_ms, r.value, r.quality, r.seq FROM readings r
        JOIN series s ON s.gateway = r.gateway AND s.device = r.device AND s.point = r.point;
    DROP TABLE readings;
    ALTER TABLE readings_v2 RENAME TO readings;
    CREATE TABLE latest_v2 (series INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, value REAL NOT NULL,
        quality TEXT NOT NULL);
    INSERT INTO latest_v2 SELECT s.id, l.ts_ms, l.value, l.quality FROM latest l
        JOIN series s ON s.gateway = l.gateway AND s.device = l.device AND s.point = l.point;
    DROP TABLE latest;
    ALTER TABLE latest_v2 RENAME TO latest;
    CREATE TABLE rollup_hour (
        series INTEGER NOT NULL, hour_ms INTEGER NOT NULL, n INTEGER NOT NULL, {_FLAGS},
        vmin REAL, vmax REAL, vsum REAL, valid_minutes INTEGER NOT NULL, first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL, PRIMARY KEY (series, hour_ms)
    ) WITHOUT ROWID;
    CREATE TABLE rollup_dirty (gateway TEXT NOT NULL, hour_ms INTEGER NOT NULL, gen INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway, hour_ms)) WITHOUT ROWID;
    INSERT INTO rollup_dirty (gateway, hour_ms)
        SELECT DISTINCT s.gateway, r.ts_ms - r.ts_ms % 3600000 FROM readings r JOIN series s ON s.id = r.series;
    CREATE TABLE anchor_pending (gateway TEXT NOT NULL, hour_ms INTEGER NOT NULL, gen INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (gateway, hour_ms)) WITHOUT ROWID;
    CREATE TABLE events (
        gateway TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, severity TEXT NOT NULL, ts_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL, device TEXT, point TEXT, body TEXT NOT NULL, raw BLOB NOT NULL,
        PRIMARY KEY (gateway, id)
    );
    CREATE INDEX events_gateway_ts ON events (gateway, ts_ms);
    CREATE INDEX events_kind_ts ON events (kind, ts_ms);
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL, actor TEXT NOT NULL, tenant TEXT,
        action TEXT NOT NULL, subject TEXT, detail TEXT NOT NULL DEFAULT '{{}}'
    );
    CREATE TABLE store_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    UPDATE batches SET digest = coalesce(json_extract(CAST(payload AS TEXT), '$.sig'), digest)
        WHERE json_valid(CAST(payload AS TEXT));
    CREATE TABLE IF NOT EXISTS anchor_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS anchor_dirty (
        site TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, PRIMARY KEY (site, start_ms, end_ms)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS anchor_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        site TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, part INTEGER NOT NULL,
        window_id TEXT NOT NULL UNIQUE, count INTEGER NOT NULL, root TEXT NOT NULL,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
        next_try_ms INTEGER NOT NULL DEFAULT 0,
        chain_id INTEGER, contract TEXT, tx_hash TEXT, block INTEGER,
        created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
        UNIQUE (site, start_ms, end_ms, part)
    );
    CREATE INDEX IF NOT EXISTS anchor_jobs_state ON anchor_jobs(state, next_try_ms);
    """)
    # Anchoring kept its tables in this file before (created by the anchor service): re-key its leaves.
    old = await (await con.execute("SELECT count(*) FROM pragma_table_info('anchor_leaves') WHERE name = 'gateway'"
                                   )).fetchone()
    if old and old[0]:
        await con.execute("ALTER TABLE anchor_leaves RENAME TO anchor_leaves_v1")
    await _run(con, """
    CREATE TABLE IF NOT EXISTS anchor_leaves (series INTEGER NOT NULL, ts_ms INTEGER NOT NULL, job INTEGER NOT NULL,
        leaf BLOB NOT NULL, PRIMARY KEY (series, ts_ms)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS anchor_leaves_job_v2 ON anchor_leaves(job);
    """)
    if old and old[0]:
        await _run(con, """
        INSERT INTO anchor_leaves SELECT s.id, a.ts_ms, a.job, a.leaf FROM anchor_leaves_v1 a
            JOIN series s ON s.gateway = a.gateway AND s.device = a.device AND s.point = a.point;
        DROP TABLE anchor_leaves_v1
        """)
    # Every stored hour is looked at once more by anchoring: sealing takes only readings in no job yet.
    await con.execute("INSERT INTO anchor_pending (gateway, hour_ms) SELECT gateway, hour_ms FROM rollup_dirty")


# 7: carbon accounting (migrations_shared.py)


# 8: rules as data (versions per rule, rule-set versions, content-addressed sets for delivery by hash),
# alerts with their lifecycle, silences, the provenance of derived readings, readings derived in the cloud.
_M8_RULES = """
CREATE TABLE rule_versions (
    tenant TEXT NOT NULL, rule TEXT NOT NULL, version INTEGER NOT NULL, doc TEXT, hash TEXT NOT NULL,
    placement TEXT NOT NULL, created_ms INTEGER NOT NULL, created_by TEXT NOT NULL, comment TEXT NOT NULL,
    PRIMARY KEY (tenant, rule, version)
);
CREATE TABLE rule_sets (
    tenant TEXT NOT NULL, version INTEGER NOT NULL, hash TEXT NOT NULL, cloud_hash TEXT NOT NULL,
    doc TEXT NOT NULL, rules INTEGER NOT NULL, silences INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (tenant, version)
);
CREATE TABLE rule_blobs (
    tenant TEXT NOT NULL, hash TEXT NOT NULL, doc TEXT NOT NULL, bytes INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, hash)
);
CREATE TABLE silences (
    tenant TEXT NOT NULL, id TEXT NOT NULL, rule TEXT, gateway TEXT, device TEXT, point TEXT,
    start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, reason TEXT NOT NULL, created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL, ended_ms INTEGER, ended_by TEXT, PRIMARY KEY (tenant, id)
);
CREATE INDEX silences_end ON silences (tenant, end_ms);
CREATE TABLE alerts (
    tenant TEXT NOT NULL, id TEXT NOT NULL, rule TEXT NOT NULL, subject TEXT NOT NULL, gateway TEXT NOT NULL,
    device TEXT, point TEXT, version INTEGER NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, raised_ms INTEGER, since_ms INTEGER, cleared_ms INTEGER, cleared_by TEXT,
    acked_ms INTEGER, acked_by TEXT, silenced_by TEXT, note TEXT NOT NULL, values_json TEXT NOT NULL,
    evidence TEXT NOT NULL, sources TEXT NOT NULL, duplicate_of TEXT, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX alerts_tenant_ts ON alerts (tenant, ts_ms, id);
CREATE INDEX alerts_open ON alerts (tenant, rule, subject, state);
CREATE TABLE rule_derivations (
    gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, from_ts INTEGER NOT NULL,
    hash TEXT NOT NULL, rule TEXT NOT NULL, version INTEGER NOT NULL, unit TEXT NOT NULL, rule_text TEXT NOT NULL,
    inputs TEXT NOT NULL, event TEXT, received_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway, device, point, from_ts, hash)
);
CREATE TABLE derived_readings (
    tenant TEXT NOT NULL, gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL,
    ts_ms INTEGER NOT NULL, value REAL NOT NULL, unit TEXT NOT NULL, quality TEXT NOT NULL,
    rule TEXT NOT NULL, version INTEGER NOT NULL, rule_hash TEXT NOT NULL, window_start INTEGER,
    window_end INTEGER, inputs TEXT NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (gateway, device, point, ts_ms)
);
CREATE INDEX derived_readings_tenant ON derived_readings (tenant, device, point, ts_ms)
"""

# Cloud rules over what every ingest worker committed: the commit queues each new batch here in its own
# transaction; one evaluator at a time (a lease) takes them in (gateway, seq) order and deletes them.
# Anomaly models by hash, per tenant, for gateways to fetch (cloud/model_delivery.py).
_M_RULES_QUEUE = """
CREATE TABLE rules_pending (id INTEGER PRIMARY KEY AUTOINCREMENT, gateway TEXT NOT NULL, seq INTEGER NOT NULL,
                            UNIQUE (gateway, seq));
CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until_ms INTEGER NOT NULL);
CREATE TABLE model_blobs (tenant TEXT NOT NULL, sha256 TEXT NOT NULL, model_id TEXT NOT NULL,
                          version INTEGER NOT NULL, onnx BLOB NOT NULL, bytes INTEGER NOT NULL,
                          created_ms INTEGER NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (tenant, sha256))
"""

# 10: a username is unique within its tenant, not across tenants (creating one must not reveal another
# tenant's users); logins name the tenant (cloud/auth.py).
_M10_USERS_PER_TENANT = """
CREATE TABLE api_users_10 (
    tenant TEXT NOT NULL, username TEXT NOT NULL, role TEXT NOT NULL, password_hash TEXT NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, username)
);
INSERT INTO api_users_10(tenant, username, role, password_hash, created_ms)
    SELECT tenant, username, role, password_hash, created_ms FROM api_users;
DROP TABLE api_users;
ALTER TABLE api_users_10 RENAME TO api_users;
CREATE INDEX api_users_username ON api_users (username)
"""

USERS_PER_TENANT = _script(_M10_USERS_PER_TENANT)  # tests migrate up to it

# 11 (carbon days) and 12 (solar and forest hours) are the same text on both back ends: migrations_shared.py.
MIGRATIONS: list[Callable[[aiosqlite.Connection], Awaitable[None]]] = [*(_script(s) for s in _SQL), _m6_series,
                                                                      _script(CARBON_M7), _script(_M8_RULES),
                                                                      _script(_M_RULES_QUEUE), USERS_PER_TENANT,
                                                                      _script(CARBON_DAYS_M11),
                                                                      _script(CARBON_ASSETS_M12)]
