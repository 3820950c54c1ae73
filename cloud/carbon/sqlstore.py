"""Carbon accounting in SQL on the store's hour rollups, written once for SQLite and PostgreSQL.

Tables (made by the store's migration 7, on both engines):

* ``carbon_sources``: a stack of a tenant's site, its source type, reference O2 and substitution policy;
* ``carbon_points``: which series (``series.id``) feeds which role of the stack (flow, temp, p_static,
  moisture, o2, co2, so2, nox, dust) and the linear map from the series' unit to the formula's unit;
* ``carbon_hours``: per stack and hour the status (valid, substituted, missing), reading count, dry
  standard flow, and CO2 and pollutant mass in whole grams (integers, so sums are exact on both engines);
* ``carbon_revisions``: every change a recomputation made to an hour, before and after;
* ``carbon_allowances``: a tenant's allowance per year.

``account_hours`` computes a range of hours of one stack with one INSERT … SELECT over ``rollup_hour``
(pivoting the stack's series per hour, HJ 75 App. A in SQL arithmetic, HJ 76 validity from the rollup's
valid minutes); only the hours that are not valid are then substituted in Python (``substitution``), and
figures rounded to grams half up (the store's ``round_half_up`` dialect hook). ``recompute`` does the same for the
hours a late batch touched and records revisions. ``day_totals`` aggregates in SQL per site and local
day; months and years are sums of days.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import formulas as fm
from .calculator import FORMULA_SET_VERSION
from .cems import UNITS, StackConfig
from .errors import CarbonInputError
from .factors import FactorSet
from .substitution import HourIn, SubstitutionPolicy, substitute

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
ROLES = ("flow", "temp", "p_static", "moisture", "o2", "co2", "so2", "nox", "dust")
POLLUTANTS = ("so2", "nox", "dust")
FIGURES = ("co2_g", "so2_g", "nox_g", "dust_g")
CONC_UNITS = {"mg/m³": Decimal(1), "mg/m3": Decimal(1), "mg/Nm³": Decimal(1), "mg/Nm3": Decimal(1)}



@dataclass(frozen=True)
class StackSource:
    source_id: str
    tenant: str
    site: str
    config: StackConfig
    src: int  # the source's integer key (carbon_hours is keyed by it: small rows, fast aggregates)


async def register_stack(db: Any, *, tenant: str, site: str, config: StackConfig, gateway: str, device: str,
                         points: Mapping[str, str] | None = None, pressure_kind: str = "absolute",
                         created_ms: int = 0) -> StackSource:
    """A stack's series by role (default point names are the CEMS point map's), with unit maps, checked."""
    names = dict(zip(ROLES, ("flow", "temp", "pressure", "moisture", "o2", "co2", "so2", "nox", "dust"), strict=True))
    names.update(points or {})
    rows = await db.fetch("SELECT id, point, unit FROM series WHERE gateway = ? AND device = ?", gateway, device)
    by_point = {r["point"]: r for r in rows}
    maps = []
    for role in ROLES:
        r = by_point.get(names[role])
        if r is None:
            raise CarbonInputError(f"stack {config.stack_id} {role}", f"no series {gateway}/{device}/{names[role]}",
                                   "register the stack after its first readings arrived, or name the point")
        table = UNITS.get(role, CONC_UNITS)
        factor = table.get(r["unit"])
        if factor is None:
            raise CarbonInputError(f"{names[role]} [{r['unit']}]", "a unit this method does not take",
                                   f"send {role} in one of {', '.join(table)}")
        offset = -config.p_atm_pa if role == "p_static" and pressure_kind == "absolute" else Decimal(0)
        maps.append((config.stack_id, role, int(r["id"]), float(factor), float(offset)))
    o2_ref = None if config.o2_ref_pct is None else str(config.o2_ref_pct)
    cfg = {"source_type": config.source_type, "o2_ref_pct": o2_ref,
           "p_atm_pa": str(config.p_atm_pa), "method": config.substitution.method,
           "lookback_h": config.substitution.lookback_h, "gateway": gateway, "device": device}
    async with db.transaction() as tx:
        src = await tx.fetchval("SELECT src FROM carbon_sources WHERE source_id = ?", config.stack_id)
        if src is None:
            src = int(await tx.fetchval("SELECT coalesce(max(src), 0) + 1 FROM carbon_sources"))
        await tx.execute("DELETE FROM carbon_points WHERE source_id = ?", config.stack_id)
        await tx.execute("DELETE FROM carbon_sources WHERE source_id = ?", config.stack_id)
        await tx.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config, created_ms)"
                         " VALUES (?, ?, ?, ?, 'stack', ?, ?, ?)", config.stack_id, int(src), tenant, site,
                         float(config.p_atm_pa), json.dumps(cfg), created_ms)
        await tx.executemany("INSERT INTO carbon_points (source_id, src, role, ri, series, factor, offset_v)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [(m[0], int(src), m[1], ROLES.index(m[1]), *m[2:]) for m in maps])
    return StackSource(config.stack_id, tenant, site, config, int(src))


def _pivot(valid_minutes: int, where: str = "p.src = ?") -> str:
    # one value per rollup row, picked into its role's column by an integer FILTER (cheaper than CASE on text)
    cols = ", ".join(f"max(r.vsum / r.q_n * p.factor + p.offset_v) FILTER (WHERE p.ri = {i}) AS {r}"
                     for i, r in enumerate(ROLES))
    return (f"SELECT p.src, r.hour_ms, {cols},"
            f" sum(CASE WHEN r.valid_minutes >= {int(valid_minutes)} AND r.q_n > 0 THEN 1 ELSE 0 END) AS nvalid,"
            " sum(r.n) AS readings"
            " FROM carbon_points p JOIN rollup_hour r ON r.series = p.series"
            f" WHERE {where} AND r.hour_ms >= ? AND r.hour_ms < ?"
            " GROUP BY p.src, r.hour_ms")


def _hour_sql(db: Any, valid_minutes: int, where: str = "p.src = ?") -> str:
    """Every stack-hour of the pivot, computed and inserted by one statement (its parameters: the pivot's
    ``where`` values, then start and end)."""
    qsn = "flow * 273.0 / (273.0 + temp) * (c.p_atm_pa + p_static) / 101325.0 * (1.0 - moisture / 100.0)"
    co2 = db.round_half_up(f"co2 / 100.0 * qsn * {fm.M_CO2} / {fm.MOLAR_VOLUME_L} * 1000.0")  # g in the hour
    masses = ", ".join(db.round_half_up(f"{p} * qsn / 1000.0") for p in POLLUTANTS)  # mg/m³ × m³ → g
    return (
        "INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, qsn_m3,"
        " co2_g, so2_g, nox_g, dust_g, note, formula_version)"
        f" SELECT src, hour_ms, CASE WHEN nvalid = {len(ROLES)} THEN 'valid' ELSE 'invalid' END,"
        f" nvalid, readings, qsn, {co2}, {masses}, '', '{FORMULA_SET_VERSION}'"
        f" FROM (SELECT a.*, {qsn} AS qsn FROM ({_pivot(valid_minutes, where)}) a"
        " JOIN carbon_sources c ON c.src = a.src) b")


async def account_hours(db: Any, src: StackSource, start_ms: int, end_ms: int, *, valid_minutes: int = 45,
                        factors: FactorSet | None = None) -> dict[str, int]:
    """Compute hours [start, end) of one stack: valid hours in one SQL statement, the rest substituted.

    Returns counts by status."""
    return await account_sources(db, [src], start_ms, end_ms, valid_minutes=valid_minutes)


async def account_sources(db: Any, sources: Sequence[StackSource], start_ms: int, end_ms: int, *,
                          valid_minutes: int = 45, parallel: int = 2) -> dict[str, int]:
    """Hours [start, end) of many stacks at once: one DELETE and one INSERT … SELECT for all of them (the
    database aggregates every stack's rollups in one pass), then substitution where an hour is not valid."""
    if not sources:
        return {}
    start_ms, end_ms = start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS
    ids = [s.src for s in sources]
    marks = ",".join("?" * len(ids))

    async def compute(chunk: list[int]) -> None:
        m = ",".join("?" * len(chunk))
        async with db.transaction() as tx:
            if db.dialect == "postgresql":  # room to hash-aggregate a year of many stacks in memory
                await tx.execute("SET LOCAL work_mem = '256MB'")
            await tx.execute(f"DELETE FROM carbon_hours WHERE src IN ({m}) AND hour_ms >= ? AND hour_ms < ?",
                             *chunk, start_ms, end_ms)
            await tx.execute(_hour_sql(db, valid_minutes, f"p.src IN ({m})"), *chunk, start_ms, end_ms)

    # PostgreSQL runs an INSERT … SELECT on one core: split the stacks over ``parallel`` connections.
    n = max(1, min(parallel if db.dialect == "postgresql" else 1, len(ids)))
    await asyncio.gather(*(compute(ids[i::n]) for i in range(n)))
    expected = (end_ms - start_ms) // HOUR_MS
    full = await db.fetch(
        "SELECT src FROM carbon_hours WHERE src IN (" + marks + ") AND hour_ms >= ? AND hour_ms < ?"
        " GROUP BY src HAVING sum(CASE WHEN status = 'valid' THEN 1 ELSE 0 END) = ?", *ids, start_ms, end_ms,
        expected)
    complete = {int(r["src"]) for r in full}
    for src in sources:
        if src.src not in complete:
            await _substitute(db, src, start_ms, end_ms, valid_minutes)
    await refresh_days(db, ids, start_ms, end_ms)  # the kept days these hours fall in follow them
    rows = await db.fetch(f"SELECT status, count(*) AS n FROM carbon_hours WHERE src IN ({marks})"
                          " AND hour_ms >= ? AND hour_ms < ? GROUP BY status", *ids, start_ms, end_ms)
    return {r["status"]: int(r["n"]) for r in rows}


async def _substitute(db: Any, src: StackSource, start_ms: int, end_ms: int, valid_minutes: int) -> None:
    """The hours that are not valid (or have no row at all): substituted per role, in Python."""
    valid = {int(r["hour_ms"]) for r in await db.fetch(
        "SELECT hour_ms FROM carbon_hours WHERE src = ? AND hour_ms >= ? AND hour_ms < ? AND status = 'valid'",
        src.src, start_ms, end_ms)}
    todo = [h for h in range(start_ms, end_ms, HOUR_MS) if h not in valid]
    if not todo:
        return
    policy: SubstitutionPolicy = src.config.substitution
    lo = todo[0] - policy.lookback_h * HOUR_MS
    hi = todo[-1] + 25 * HOUR_MS
    rows = await db.fetch(_pivot(valid_minutes), src.src, lo, hi)
    # each role's validity comes from its own rollup: ask per role
    per_role = await db.fetch(
        "SELECT p.role, r.hour_ms, r.vsum / r.q_n * p.factor + p.offset_v AS v,"
        f" CASE WHEN r.valid_minutes >= {int(valid_minutes)} AND r.q_n > 0 THEN 1 ELSE 0 END AS ok"
        " FROM carbon_points p JOIN rollup_hour r ON r.series = p.series"
        " WHERE p.src = ? AND r.hour_ms >= ? AND r.hour_ms < ?", src.src, lo, hi)
    readings = {int(r["hour_ms"]): int(r["readings"] or 0) for r in rows}
    series: dict[str, list[HourIn]] = {role: [] for role in ROLES}
    for r in per_role:
        v = r["v"]
        series[r["role"]].append(HourIn(int(r["hour_ms"]) // 1000, None if v is None else Decimal(repr(float(v))),
                                        bool(r["ok"]) and v is not None))
    filled = {role: {o.hour * 1000: o for o in substitute(series[role], policy, start=todo[0] // 1000,
                                                          end=todo[-1] // 1000 + 3600)} for role in ROLES}
    out: list[tuple[Any, ...]] = []
    for h in todo:
        cells = {role: filled[role][h] for role in ROLES}
        if any(c.value is None for c in cells.values()):
            out.append((src.src, h, "missing", 0, readings.get(h, 0), None, None, None,
                        None, None, "no value to substitute from", FORMULA_SET_VERSION))
            continue
        v = {role: c.value for role, c in cells.items()}
        q = fm.std_dry_flow(v["flow"], v["temp"], v["p_static"], src.config.p_atm_pa, v["moisture"])  # type: ignore[arg-type]
        co2 = fm.co2_cems(v["co2"], q, Decimal(1)) * 1_000_000  # type: ignore[arg-type]
        masses = [fm.mass_rate(v[p], q) * 1000 for p in POLLUTANTS]  # type: ignore[arg-type]
        grams = [int(fm.round_fixed(x, 0)) for x in (co2, *masses)]
        subst = sorted(role for role, c in cells.items() if c.status == "substituted")
        note = "; ".join(f"{role}: {cells[role].note}" for role in subst)[:1000]
        out.append((src.src, h, "substituted", 0, readings.get(h, 0), float(q), *grams,
                    note, FORMULA_SET_VERSION))
    async with db.transaction() as tx:
        for h in todo:
            await tx.execute("DELETE FROM carbon_hours WHERE src = ? AND hour_ms = ?", src.src, h)
        await tx.executemany(
            "INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, qsn_m3,"
            " co2_g, so2_g, nox_g, dust_g, note, formula_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            out)


async def load_stack(db: Any, source_id: str) -> StackSource:
    row = await db.fetchrow("SELECT * FROM carbon_sources WHERE source_id = ?", source_id)
    if row is None:
        raise CarbonInputError(f"source {source_id!r}", "not registered", "register the stack first")
    cfg = json.loads(row["config"])
    sc = StackConfig(source_id, cfg["source_type"], None if cfg["o2_ref_pct"] is None else Decimal(cfg["o2_ref_pct"]),
                     p_atm_pa=Decimal(cfg["p_atm_pa"]),
                     substitution=SubstitutionPolicy(method=cfg["method"], lookback_h=cfg["lookback_h"]))
    return StackSource(source_id, row["tenant"], row["site"], sc, int(row["src"]))


async def recompute(db: Any, hours: Iterable[tuple[str, int]], *, at_ms: int, cause: str = "late data") -> int:
    """Recompute the stack-hours a refresh of (gateway, hour) touched; keep each change as a revision.

    Only those hours change; days, months and years are sums of hours, so they follow. Returns the
    number of fields revised."""
    touched = sorted(set(hours))
    if not touched:
        return 0
    revised = 0
    sources = await db.fetch("SELECT DISTINCT p.source_id, s.gateway FROM carbon_points p JOIN series s"
                             " ON s.id = p.series")  # stacks only: solar and forest are assets.recompute's
    by_gateway: dict[str, set[str]] = {}
    for r in sources:
        by_gateway.setdefault(r["gateway"], set()).add(r["source_id"])
    for gw, hour in touched:
        for sid in sorted(by_gateway.get(gw, ())):
            src = await load_stack(db, sid)
            before = await db.fetchrow("SELECT * FROM carbon_hours WHERE src = ? AND hour_ms = ?", src.src, hour)
            await account_hours(db, src, hour, hour + HOUR_MS)
            after = await db.fetchrow("SELECT * FROM carbon_hours WHERE src = ? AND hour_ms = ?", src.src, hour)
            if before is None:
                continue  # a first computation is not a revision
            changes = [(sid, hour, f, _txt(before[f]), None if after is None else _txt(after[f]), at_ms, cause)
                       for f in ("status", "readings", *FIGURES)
                       if _txt(before[f]) != (None if after is None else _txt(after[f]))]
            if changes:
                await db.executemany("INSERT INTO carbon_revisions (source_id, hour_ms, field, before_v, after_v,"
                                     " at_ms, cause) VALUES (?, ?, ?, ?, ?, ?, ?)", changes)
                revised += len(changes)
    return revised


def _txt(v: Any) -> str | None:
    return None if v is None else str(v)


DAYS_TZ_OFFSET_MIN = 480  # carbon_days are kept for local days at UTC+8, the accounts' default
_DAY_SUMS = ("co2_g", "so2_g", "nox_g", "dust_g", "valid", "substituted", "missing", "readings")


def stack_days_sql(start_ms: int, end_ms: int, tz_offset_min: int) -> tuple[str, list[Any]]:
    """A subquery of per stack and local day sums for a tenant (its first parameter), with its other
    parameters: from the kept ``carbon_days`` when the range is whole days at their offset, else from the
    hours (any offset, any range). Integer sums either way, so both give the same figures."""
    off = tz_offset_min * 60_000
    if tz_offset_min == DAYS_TZ_OFFSET_MIN and (start_ms + off) % DAY_MS == 0 and (end_ms + off) % DAY_MS == 0:
        return (f"SELECT src, day, {', '.join(_DAY_SUMS)} FROM carbon_days WHERE tz_offset_min = {DAYS_TZ_OFFSET_MIN}"
                " AND src IN (SELECT src FROM carbon_sources WHERE tenant = ?) AND day >= ? AND day < ?",
                [(start_ms + off) // DAY_MS, (end_ms + off) // DAY_MS])
    bucket = f"(h.hour_ms + {off}) / {DAY_MS}"
    return (f"SELECT h.src, {bucket} AS day, {_HOUR_SUMS} FROM carbon_hours h"
            " WHERE h.src IN (SELECT src FROM carbon_sources WHERE tenant = ?) AND h.hour_ms >= ? AND h.hour_ms < ?"
            f" GROUP BY h.src, {bucket}", [start_ms, end_ms])


_HOUR_SUMS = ("CAST(sum(h.co2_g) AS BIGINT) AS co2_g, CAST(sum(h.so2_g) AS BIGINT) AS so2_g,"
              " CAST(sum(h.nox_g) AS BIGINT) AS nox_g, CAST(sum(h.dust_g) AS BIGINT) AS dust_g,"
              " sum(CASE WHEN h.status = 'valid' THEN 1 ELSE 0 END) AS valid,"
              " sum(CASE WHEN h.status = 'substituted' THEN 1 ELSE 0 END) AS substituted,"
              " sum(CASE WHEN h.status = 'missing' OR h.status = 'invalid' THEN 1 ELSE 0 END) AS missing,"
              " CAST(sum(h.readings) AS BIGINT) AS readings")


async def refresh_days(db: Any, srcs: Sequence[int], start_ms: int, end_ms: int) -> None:
    """Re-sum the kept local days that hours [start, end) of these stacks fall in (after any change to them)."""
    await resum_days(db, "carbon_days", "carbon_hours", _DAY_SUMS, _HOUR_SUMS, srcs, start_ms, end_ms)


async def resum_days(db: Any, days_table: str, hours_table: str, columns: Sequence[str], hour_sums: str,
                     srcs: Sequence[int], start_ms: int, end_ms: int) -> None:
    """Replace the kept local days (UTC+8) of ``srcs`` that hours [start, end) fall in by the sums of their
    hours: ``hour_sums`` is the SELECT list over ``hours_table h`` giving ``columns`` in order."""
    if not srcs or end_ms <= start_ms:
        return
    off = DAYS_TZ_OFFSET_MIN * 60_000
    lo, hi = (start_ms + off) // DAY_MS, (end_ms - 1 + off) // DAY_MS + 1
    m = ",".join("?" * len(srcs))
    bucket = f"(h.hour_ms + {off}) / {DAY_MS}"
    async with db.transaction() as tx:
        await db.lock_for(tx, days_table)  # a concurrent rebuild would meet this one's rows on the key
        await tx.execute(f"DELETE FROM {days_table} WHERE tz_offset_min = {DAYS_TZ_OFFSET_MIN} AND src IN ({m})"
                         " AND day >= ? AND day < ?", *srcs, lo, hi)
        await tx.execute(
            f"INSERT INTO {days_table} (tz_offset_min, src, day, {', '.join(columns)})"
            f" SELECT {DAYS_TZ_OFFSET_MIN}, h.src, {bucket}, {hour_sums} FROM {hours_table} h"
            f" WHERE h.src IN ({m}) AND h.hour_ms >= ? AND h.hour_ms < ? GROUP BY h.src, {bucket}",
            *srcs, lo * DAY_MS - off, hi * DAY_MS - off)


async def day_totals(db: Any, tenant: str, start_ms: int, end_ms: int, *, tz_offset_min: int = 480,
                     site: str | None = None) -> list[dict[str, Any]]:
    """Per site and local day: grams of CO2 and pollutants and hours by status, aggregated in SQL."""
    days, args = stack_days_sql(start_ms, end_ms, tz_offset_min)
    where = " WHERE c.site = ?" if site else ""
    rows = await db.fetch(
        "SELECT c.site, d.day, count(DISTINCT d.src) AS sources, "
        + ", ".join(f"sum(d.{k}) AS {k}" for k in _DAY_SUMS)
        + f" FROM ({days}) d JOIN carbon_sources c ON c.src = d.src{where}"
        " GROUP BY c.site, d.day ORDER BY c.site, d.day", tenant, *args, *([site] if site else []))
    return [{k: (int(v) if v is not None and k != "site" else v) for k, v in r.items()} for r in rows]


def tonnes(grams: int | None) -> Decimal:
    return Decimal(grams or 0) / 1_000_000


MAX_CONCENTRATION_HOURS = 93 * 24  # a quarter of hourly rows per request


async def concentrations(db: Any, source_id: str, start_ms: int, end_ms: int, *, valid_minutes: int = 45,
                         factors: FactorSet | None = None) -> dict[str, Any]:
    """A stack's hourly pollutant concentrations against its limits: measured (dry), corrected to the
    source type's reference O2 (HJ 75-2017 App. A; only for comparison, never for mass), the limit of
    the regime, and whether the hour is above it. Only hours whose pollutant and O2 are valid are judged."""
    start_ms, end_ms = start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS
    if (end_ms - start_ms) // HOUR_MS > MAX_CONCENTRATION_HOURS:
        raise CarbonInputError("range", f"{(end_ms - start_ms) // HOUR_MS} hours",
                               f"ask for at most {MAX_CONCENTRATION_HOURS} hours at a time")
    row = await db.fetchrow("SELECT src, config FROM carbon_sources WHERE source_id = ?", source_id)
    if row is None:
        raise CarbonInputError(f"source {source_id!r}", "is not registered", "list them with /api/carbon/sources")
    cfg = json.loads(row["config"])
    fs = factors or FactorSet.default()
    source_type = cfg.get("source_type", "coal_boiler")
    regime = cfg.get("limit_regime", "gb13223")
    o2_ref = Decimal(cfg["o2_ref_pct"]) if cfg.get("o2_ref_pct") else fs.o2_ref(source_type).value
    limits = {p: fs.limit(source_type, p, regime) for p in POLLUTANTS}
    per_role = await db.fetch(
        "SELECT p.role, r.hour_ms, r.vsum / r.q_n * p.factor + p.offset_v AS v,"
        f" CASE WHEN r.valid_minutes >= {int(valid_minutes)} AND r.q_n > 0 THEN 1 ELSE 0 END AS ok"
        " FROM carbon_points p JOIN rollup_hour r ON r.series = p.series"
        " WHERE p.src = ? AND p.role IN ('o2', 'so2', 'nox', 'dust') AND r.hour_ms >= ? AND r.hour_ms < ?"
        " ORDER BY r.hour_ms", int(row["src"]), start_ms, end_ms)
    hours: dict[int, dict[str, Decimal | None]] = {}
    for r in per_role:
        ok = bool(r["ok"]) and r["v"] is not None
        hours.setdefault(int(r["hour_ms"]), {})[r["role"]] = Decimal(repr(float(r["v"]))) if ok else None
    items = []
    above = dict.fromkeys(POLLUTANTS, 0)
    judged = dict.fromkeys(POLLUTANTS, 0)
    for hour, v in sorted(hours.items()):
        o2 = v.get("o2")
        item: dict[str, Any] = {"hour_ms": hour, "o2_pct": None if o2 is None else str(fm.round_fixed(o2, 2))}
        for p in POLLUTANTS:
            c = v.get(p)
            corrected = None
            if c is not None and o2 is not None and Decimal(0) <= o2 < fm.O2_AIR_PCT and c >= 0:
                corrected = fm.round_fixed(fm.o2_correction(c, o2, o2_ref), 3)
            lim = limits[p]
            over = None if corrected is None or lim is None else corrected > lim.value
            if over is not None:
                judged[p] += 1
                above[p] += int(over)
            item[p] = {"measured": None if c is None else str(fm.round_fixed(c, 3)),
                       "corrected": None if corrected is None else str(corrected), "above": over}
        items.append(item)
    return {"source_id": source_id, "source_type": source_type, "o2_ref_pct": str(o2_ref), "regime": regime,
            "limits": {p: None if lim is None else {"value": str(lim.value), "unit": lim.unit, "source": lim.source,
                                               "status": lim.status}
                       for p, lim in limits.items()},
            "hours_judged": judged, "hours_above": above, "items": items}


async def hour_provenance(db: Any, source_id: str, hour_ms: int) -> dict[str, Any]:
    """Everything a figure of one stack-hour rests on: the hour's row, each role's rollup (readings, valid
    minutes, flags), the revisions, and the anchored roots that cover the hour's readings."""
    row = await db.fetchrow("SELECT h.* FROM carbon_hours h JOIN carbon_sources c ON c.src = h.src"
                            " WHERE c.source_id = ? AND h.hour_ms = ?", source_id, hour_ms)
    if row is None:
        raise CarbonInputError(f"{source_id} hour {hour_ms}", "not accounted", "account the period first")
    inputs = await db.fetch(
        "SELECT p.role, p.series, s.gateway, s.device, s.point, s.unit, r.n, r.q_n, r.valid_minutes, r.vsum"
        " FROM carbon_points p JOIN series s ON s.id = p.series"
        " LEFT JOIN rollup_hour r ON r.series = p.series AND r.hour_ms = ? WHERE p.source_id = ? ORDER BY p.role",
        hour_ms, source_id)
    roots = await db.fetch(
        "SELECT DISTINCT j.window_id, j.root, j.tx_hash, j.block, j.state FROM anchor_leaves l"
        " JOIN anchor_jobs j ON j.id = l.job JOIN carbon_points p ON p.series = l.series"
        " WHERE p.source_id = ? AND l.ts_ms >= ? AND l.ts_ms < ? ORDER BY j.window_id",
        source_id, hour_ms, hour_ms + HOUR_MS)
    revisions = await db.fetch("SELECT field, before_v, after_v, at_ms, cause FROM carbon_revisions"
                               " WHERE source_id = ? AND hour_ms = ? ORDER BY at_ms, field", source_id, hour_ms)
    return {"hour": {k: v for k, v in row.items()}, "inputs": [dict(r) for r in inputs],
            "anchored_roots": [dict(r) for r in roots], "revisions": [dict(r) for r in revisions],
            "formula_version": row["formula_version"], "factor_versions": FactorSet.default().versions}


def grams_of(rows: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(r[key] or 0) for r in rows)


def _local(day: int) -> tuple[int, int, int]:
    import datetime as dt

    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return d.year, d.month, d.day


async def periods(db: Any, tenant: str, granularity: str, start_ms: int, end_ms: int, *, tz_offset_min: int = 480,
                  site: str | None = None) -> list[dict[str, Any]]:
    """Accounts per site and day, month or year: scope 1 of the stacks, solar MWh and avoided CO2, sinks
    and net (scope 1 − sinks), each with its coverage; SQL sums per local day, then days summed exactly."""
    if granularity not in ("day", "month", "year"):
        raise CarbonInputError("granularity", f"{granularity!r}", "use day, month or year")
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in await day_totals(db, tenant, start_ms, end_ms, tz_offset_min=tz_offset_min, site=site):
        y, m, d = _local(r["day"])
        label = {"day": f"{y}-{m:02d}-{d:02d}", "month": f"{y}-{m:02d}", "year": str(y)}[granularity]
        acc = out.setdefault((r["site"], label), {"site": r["site"], "period": label, "co2_g": 0, "so2_g": 0,
                                                  "nox_g": 0, "dust_g": 0, "valid": 0, "substituted": 0,
                                                  "missing": 0, "readings": 0})
        for k in ("co2_g", "so2_g", "nox_g", "dust_g", "valid", "substituted", "missing", "readings"):
            acc[k] += r[k] or 0
    from .assets import asset_periods

    assets = {(r["site"], r["period"]): r for r in await asset_periods(db, tenant, granularity, start_ms, end_ms,
                                                                         tz_offset_min=tz_offset_min, site=site)}
    for key in assets:
        out.setdefault(key, {"site": key[0], "period": key[1], "co2_g": 0, "so2_g": 0, "nox_g": 0, "dust_g": 0,
                             "valid": 0, "substituted": 0, "missing": 0, "readings": 0})
    none = {"valid": 0, "substituted": 0, "missing": 0}
    rows = []
    for key, a in sorted(out.items()):
        x = assets.get(key, {})
        scope1, sinks = tonnes(a["co2_g"]), Decimal(x.get("sinks_t", "0"))
        rows.append({"site": a["site"], "period": a["period"], "scope1_t": str(scope1),
                     "pollutants_kg": {p: str(Decimal(a[f"{p}_g"]) / 1000) for p in POLLUTANTS},
                     "coverage": {"valid": a["valid"], "substituted": a["substituted"], "missing": a["missing"]},
                     "readings": a["readings"],
                     # solar and forest (assets.py); net = scope 1 − sinks, avoided beside it (accounts.py)
                     "mwh_generated": x.get("mwh_generated", "0"), "avoided_t": x.get("avoided_t", "0"),
                     "sinks_t": str(sinks), "net_t": str(scope1 - sinks),
                     "coverage_solar": x.get("coverage_solar", none),
                     "coverage_forest": x.get("coverage_forest", none)})
    return rows


async def set_allowance(db: Any, tenant: str, year: int, t: Decimal) -> None:
    if t <= 0:
        raise CarbonInputError("allowance", f"{t}", "give the year's allowance in t CO2 (> 0)")
    async with db.transaction() as tx:
        await tx.execute("DELETE FROM carbon_allowances WHERE tenant = ? AND year = ?", tenant, year)
        await tx.execute("INSERT INTO carbon_allowances (tenant, year, t) VALUES (?, ?, ?)", tenant, year, str(t))


async def allowance(db: Any, tenant: str, year: int) -> Decimal | None:
    v = await db.fetchval("SELECT t FROM carbon_allowances WHERE tenant = ? AND year = ?", tenant, year)
    return None if v is None else Decimal(v)


def attach(store: Any, clock: Any = None) -> None:
    """Recompute stack-hours, and the solar and forest hours (``assets``), whenever the store materialises
    rollup hours (late data included): the store's ``refresh_hours`` calls its ``hours_listeners`` with
    the (gateway, hour) pairs it redid."""
    import time

    now = clock or (lambda: int(time.time() * 1000))

    async def on_hours(hours: list[tuple[str, int]]) -> None:
        from . import assets

        await recompute(store.db, hours, at_ms=now(), cause="rollup refreshed")
        await assets.recompute(store.db, hours, at_ms=now(), cause="rollup refreshed")  # solar and forest hours

    store.data.hours_listeners.append(on_hours)




async def forecast(db: Any, tenant: str, year: int, month: int, day: int, *, tz_offset_min: int = 480,
                   thresholds: Sequence[Any] | None = None) -> Any:
    """The year-end forecast from the accounts in the store (this year so far, last year by month)."""
    import calendar

    from .forecast import DEFAULT_THRESHOLDS, forecast_year_end

    quota = await allowance(db, tenant, year)
    if quota is None:
        raise CarbonInputError(f"allowance {tenant} {year}", "not set",
                               "set it with `carbonlink carbon allowance --tenant … --year … --t …`")
    off = tz_offset_min * 60_000

    def start_of(y: int) -> int:
        return calendar.timegm((y, 1, 1, 0, 0, 0)) * 1000 - off

    end = calendar.timegm((year, month, day, 0, 0, 0)) * 1000 - off + DAY_MS

    def by_month(rows: list[dict[str, Any]]) -> dict[int, Decimal]:
        out: dict[int, Decimal] = {}
        for r in rows:
            m = int(r["period"][5:7])
            out[m] = out.get(m, Decimal(0)) + Decimal(r["scope1_t"])
        return out

    this = by_month(await periods(db, tenant, "month", start_of(year), end, tz_offset_min=tz_offset_min))
    last = by_month(await periods(db, tenant, "month", start_of(year - 1), start_of(year),
                                  tz_offset_min=tz_offset_min))
    return forecast_year_end(year, month, day, this, last, quota, thresholds or DEFAULT_THRESHOLDS)


async def year_to_date(db: Any, tenant: str, year: int, month: int, day: int, *, tz_offset_min: int = 480
                       ) -> dict[str, str]:
    """The organisation's year so far (to the end of the given local day): scope 1, solar MWh, avoided,
    sinks and net (scope 1 − sinks), exact sums of the kept hours."""
    import calendar

    off = tz_offset_min * 60_000
    start = calendar.timegm((year, 1, 1, 0, 0, 0)) * 1000 - off
    end = calendar.timegm((year, month, day, 0, 0, 0)) * 1000 - off + DAY_MS
    rows = await periods(db, tenant, "year", start, end, tz_offset_min=tz_offset_min)
    return {k: str(sum((Decimal(r[k]) for r in rows), Decimal(0)))
            for k in ("scope1_t", "mwh_generated", "avoided_t", "sinks_t", "net_t")}


async def raise_warnings(db: Any, tenant: str, f: Any, *, at_ms: int) -> list[dict[str, Any]]:
    """Record each threshold the forecast reached for the first time this year; returns the new warnings
    (what a notifier or the event pipeline sends on). A level is raised once per tenant and year."""
    from .forecast import DEFAULT_THRESHOLDS

    new = []
    for th in DEFAULT_THRESHOLDS:
        if f.ratio < th.ratio:
            continue
        done = await db.fetchval("SELECT count(*) FROM carbon_warnings WHERE tenant = ? AND year = ? AND level = ?",
                                 tenant, f.year, th.level)
        if done:
            continue
        row = {"tenant": tenant, "year": f.year, "level": th.level, "severity": th.severity, "ratio": str(f.ratio),
               "forecast_t": str(f.forecast_t), "allowance_t": str(f.allowance_t),
               "as_of": f"{f.year}-{f.as_of_month:02d}-{f.as_of_day:02d}", "at_ms": at_ms}
        await db.execute("INSERT INTO carbon_warnings (tenant, year, level, severity, ratio, forecast_t, allowance_t,"
                         " as_of, at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", *row.values())
        new.append(row)
    return new
