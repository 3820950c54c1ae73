"""Migration text that SQLite and PostgreSQL run word for word (their types and statements are the same).

Shipped migrations never change: each constant here is the text both back ends already ran, moved here
from migrations_sqlite.py and migrations_postgres.py without a changed statement.
"""

# 7: carbon accounting (cloud/carbon/sqlstore.py): stacks and their series, stack-hours in whole grams,
# revisions, allowances and allowance warnings.
CARBON_M7 = """
CREATE TABLE IF NOT EXISTS carbon_sources (
        source_id TEXT PRIMARY KEY, src INTEGER NOT NULL UNIQUE, tenant TEXT NOT NULL, site TEXT NOT NULL,
        kind TEXT NOT NULL, p_atm_pa DOUBLE PRECISION NOT NULL, config TEXT NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS carbon_points (
        source_id TEXT NOT NULL, src INTEGER NOT NULL, role TEXT NOT NULL, ri INTEGER NOT NULL, series INTEGER NOT NULL,
        factor DOUBLE PRECISION NOT NULL, offset_v DOUBLE PRECISION NOT NULL, PRIMARY KEY (source_id, role));
CREATE INDEX IF NOT EXISTS carbon_points_series ON carbon_points (series);
CREATE TABLE IF NOT EXISTS carbon_hours (
        src INTEGER NOT NULL, hour_ms BIGINT NOT NULL, status TEXT NOT NULL, params_valid INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        qsn_m3 DOUBLE PRECISION, co2_g BIGINT, so2_g BIGINT, nox_g BIGINT, dust_g BIGINT,
        note TEXT NOT NULL DEFAULT '', formula_version TEXT NOT NULL, PRIMARY KEY (src, hour_ms));
CREATE TABLE IF NOT EXISTS carbon_revisions (
        source_id TEXT NOT NULL, hour_ms BIGINT NOT NULL, field TEXT NOT NULL, before_v TEXT, after_v TEXT,
        at_ms BIGINT NOT NULL, cause TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS carbon_revisions_source ON carbon_revisions (source_id, hour_ms);
CREATE TABLE IF NOT EXISTS carbon_allowances (
        tenant TEXT NOT NULL, year INTEGER NOT NULL, t TEXT NOT NULL, PRIMARY KEY (tenant, year));
CREATE TABLE IF NOT EXISTS carbon_warnings (
    tenant TEXT NOT NULL, year INTEGER NOT NULL, level TEXT NOT NULL, severity TEXT NOT NULL, ratio TEXT NOT NULL,
    forecast_t TEXT NOT NULL, allowance_t TEXT NOT NULL, as_of TEXT NOT NULL, at_ms BIGINT NOT NULL,
    PRIMARY KEY (tenant, year, level))
"""


# 11: per stack and local day (UTC+8) sums of the stack-hours, kept with them (cloud/carbon/sqlstore.py
# refresh_days), so a year of daily figures for many sites reads days, not every hour.
CARBON_DAYS_M11 = """
CREATE TABLE carbon_days (tz_offset_min INTEGER NOT NULL, src INTEGER NOT NULL, day INTEGER NOT NULL,
                          co2_g BIGINT, so2_g BIGINT, nox_g BIGINT, dust_g BIGINT, valid INTEGER NOT NULL,
                          substituted INTEGER NOT NULL, missing INTEGER NOT NULL, readings BIGINT NOT NULL,
                          PRIMARY KEY (tz_offset_min, src, day));
INSERT INTO carbon_days SELECT 480, src, (hour_ms + 28800000) / 86400000, sum(co2_g), sum(so2_g), sum(nox_g),
       sum(dust_g), sum(CASE WHEN status = 'valid' THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 'substituted' THEN 1 ELSE 0 END),
       sum(CASE WHEN status = 'missing' OR status = 'invalid' THEN 1 ELSE 0 END), sum(readings)
  FROM carbon_hours GROUP BY src, (hour_ms + 28800000) / 86400000
"""

# 12: solar inverters and forest plots accounted per hour like the stacks (cloud/carbon/assets.py): which
# series feed an asset (a plot: one dendrometer per tree, ``member``), per asset, member and hour the energy
# (mWh), avoided CO2 or sink (g), coverage status, the tree's carried maximum and the factor used, and
# per asset and local day (UTC+8) the sums.
CARBON_ASSETS_M12 = """
CREATE TABLE carbon_asset_inputs (src INTEGER NOT NULL, member TEXT NOT NULL, role TEXT NOT NULL,
                                  series INTEGER NOT NULL, config TEXT NOT NULL, PRIMARY KEY (src, member, role));
CREATE INDEX carbon_asset_inputs_series ON carbon_asset_inputs (series);
CREATE TABLE carbon_asset_hours (src INTEGER NOT NULL, member TEXT NOT NULL, hour_ms BIGINT NOT NULL,
                                 status TEXT NOT NULL, readings INTEGER NOT NULL, wh_milli BIGINT NOT NULL,
                                 est_wh_milli BIGINT NOT NULL, co2_g BIGINT NOT NULL, max_um DOUBLE PRECISION,
                                 factor TEXT NOT NULL, note TEXT NOT NULL, formula_version TEXT NOT NULL,
                                 PRIMARY KEY (src, member, hour_ms));
CREATE TABLE carbon_asset_days (tz_offset_min INTEGER NOT NULL, src INTEGER NOT NULL, day INTEGER NOT NULL,
                                wh_milli BIGINT NOT NULL, co2_g BIGINT NOT NULL, valid INTEGER NOT NULL,
                                substituted INTEGER NOT NULL, missing INTEGER NOT NULL, readings BIGINT NOT NULL,
                                PRIMARY KEY (tz_offset_min, src, day))
"""
