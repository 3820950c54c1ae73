"""Solar inverters and forest plots accounted per hour in the store, beside the stacks (sqlstore.py).

Tables (migration 12, both engines): ``carbon_asset_inputs`` (which series feed an asset: an inverter's
energy counter and power, each tree's dendrometer of a plot, ``member`` = the tree), ``carbon_asset_hours``
(per asset, member and hour: status, readings, energy in mWh, CO2 in whole grams, the tree's carried
maximum, the factor used) and ``carbon_asset_days`` (per asset and local day at UTC+8, the sums). The
asset itself is a row of ``carbon_sources`` (kind ``inverter`` or ``plot``), so it shares the stacks'
tenant, site and listing.

* solar: energy per hour from the counter (``energy.account_counter``: resets, wraps and replacements
  never double count) and avoided CO2 = MWh × the grid factor of the hour's local year (MEE/NBS China
  average, the factor table ``grid``; a year without a published factor uses the newest, marked as a
  proxy in ``factor``). Status: ``valid`` when the hour's energy is all counted by the counter,
  ``substituted`` when part of it is estimated from power readings (a reset, a replacement, a part before
  the first reading) or shared over a gap, ``missing`` when neither covers it.
* forest: per tree and hour, ΔCO2 of the growth of the dendrometer maximum (``forest.account_tree``,
  zero growth, Chave 2014 / species allometry, (1+R)·CF·44/12), the maximum carried from hour to hour.
  Status: ``valid`` with valid readings and no sensor fault, ``substituted`` when the figure rests on
  readings the method corrected (spikes, a moved sensor), ``missing`` with no valid reading (growth is
  not lost: it counts in the hour readings resume, as a new maximum).

``recompute`` is the refresh pass's listener: a late reading recomputes its hour (an inverter's two
neighbouring hours too when they are stored, since a counter step may straddle the boundary; a tree's
later hours only while the carried maximum it changed differs), and every change is a revision.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Any

from . import formulas as fm
from .calculator import FORMULA_SET_VERSION
from .energy import CounterConfig, CounterReading, PowerReading, account_counter, year_of
from .errors import CarbonInputError
from .factors import FactorSet
from .forest import DendroReading, TreeConfig, account_tree
from .sqlstore import DAY_MS, DAYS_TZ_OFFSET_MIN, HOUR_MS, resum_days

KINDS = ("inverter", "plot")
FIELDS = ("status", "readings", "wh_milli", "co2_g")
_SUMS = ("wh_milli", "co2_g", "valid", "substituted", "missing", "readings")


@dataclass(frozen=True)
class AssetSource:
    source_id: str
    tenant: str
    site: str
    kind: str  # inverter | plot
    src: int
    config: dict[str, Any]
    inputs: tuple[tuple[str, str, int, dict[str, Any]], ...]  # (member, role, series, member config)


async def _series(db: Any, gateway: str, device: str, point: str, what: str) -> int:
    sid = await db.fetchval("SELECT id FROM series WHERE gateway = ? AND device = ? AND point = ?",
                            gateway, device, point)
    if sid is None:
        raise CarbonInputError(what, f"no series {gateway}/{device}/{point}",
                               "register the asset after its first readings arrived, or name the point")
    return int(sid)


async def _register(db: Any, *, tenant: str, site: str, source_id: str, kind: str, config: dict[str, Any],
                    inputs: list[tuple[str, str, int, dict[str, Any]]], created_ms: int) -> AssetSource:
    async with db.transaction() as tx:
        row = await tx.fetchrow("SELECT src, kind FROM carbon_sources WHERE source_id = ?", source_id)
        if row is not None and row["kind"] != kind:
            raise CarbonInputError(f"source {source_id!r}", f"is registered as a {row['kind']}",
                                   "give the asset an id of its own")
        src = int(row["src"]) if row is not None else int(
            await tx.fetchval("SELECT coalesce(max(src), 0) + 1 FROM carbon_sources"))
        await tx.execute("DELETE FROM carbon_asset_inputs WHERE src = ?", src)
        await tx.execute("DELETE FROM carbon_sources WHERE source_id = ?", source_id)
        await tx.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config, created_ms)"
                         " VALUES (?, ?, ?, ?, ?, 0, ?, ?)", source_id, src, tenant, site, kind, json.dumps(config),
                         created_ms)
        await tx.executemany("INSERT INTO carbon_asset_inputs (src, member, role, series, config)"
                             " VALUES (?, ?, ?, ?, ?)",
                             [(src, m, r, s, json.dumps(c)) for m, r, s, c in inputs])
    return AssetSource(source_id, tenant, site, kind, src, config, tuple(inputs))


async def register_inverter(db: Any, *, tenant: str, site: str, source_id: str, gateway: str, device: str,
                            rated_w: Decimal, grid: str = "CN", energy_point: str = "energy",
                            power_point: str = "ac_power", created_ms: int = 0) -> AssetSource:
    """An inverter (or any generation meter): its energy counter (Wh) and, if it has one, its power (W)."""
    CounterConfig(source_id, rated_w)  # checks the rating
    energy = await _series(db, gateway, device, energy_point, f"inverter {source_id} energy")
    inputs: list[tuple[str, str, int, dict[str, Any]]] = [("", "energy", energy, {})]
    power = await db.fetchval("SELECT id FROM series WHERE gateway = ? AND device = ? AND point = ?",
                              gateway, device, power_point)
    if power is not None:
        inputs.append(("", "power", int(power), {}))
    cfg = {"rated_w": str(rated_w), "grid": grid, "gateway": gateway, "device": device}
    return await _register(db, tenant=tenant, site=site, source_id=source_id, kind="inverter", config=cfg,
                           inputs=inputs, created_ms=created_ms)


async def register_plot(db: Any, *, tenant: str, site: str, source_id: str, gateway: str,
                        trees: Sequence[TreeConfig], point: str = "dendrometer", created_ms: int = 0,
                        factors: FactorSet | None = None) -> AssetSource:
    """A forest plot: each tree's dendrometer series (the tree's id is its device), species and diameter."""
    if not trees:
        raise CarbonInputError(f"plot {source_id}", "has no trees", "give at least one tree")
    fs = factors or FactorSet.default()
    inputs: list[tuple[str, str, int, dict[str, Any]]] = []
    for t in trees:
        sp = fs.tree_species(t.species)  # an unknown species fails here, not at the first hour
        if sp.needs_height and t.height_m is None:
            raise CarbonInputError(f"tree {t.tree_id} height", f"species {sp.code} uses a·(D²H)^b",
                                   "give the tree's height in m")
        sid = await _series(db, gateway, t.tree_id, point, f"tree {t.tree_id} dendrometer")
        inputs.append((t.tree_id, "dendrometer", sid, {k: None if v is None else str(v)
                                                        for k, v in asdict(t).items()}))
    return await _register(db, tenant=tenant, site=site, source_id=source_id, kind="plot",
                           config={"gateway": gateway, "trees": len(trees)}, inputs=inputs, created_ms=created_ms)


async def load_assets(db: Any, *, tenant: str | None = None, source_ids: Iterable[str] | None = None
                      ) -> list[AssetSource]:
    rows = await db.fetch("SELECT source_id, tenant, site, kind, src, config FROM carbon_sources"
                          " WHERE kind IN ('inverter', 'plot') ORDER BY source_id")
    want = None if source_ids is None else set(source_ids)
    out = []
    for r in rows:
        if (tenant is not None and r["tenant"] != tenant) or (want is not None and r["source_id"] not in want):
            continue
        ins = await db.fetch("SELECT member, role, series, config FROM carbon_asset_inputs WHERE src = ?"
                             " ORDER BY member, role", int(r["src"]))
        out.append(AssetSource(r["source_id"], r["tenant"], r["site"], r["kind"], int(r["src"]),
                               json.loads(r["config"]),
                               tuple((i["member"], i["role"], int(i["series"]), json.loads(i["config"])) for i in ins)))
    return out


def _tree(cfg: Mapping[str, Any]) -> TreeConfig:
    def dec(k: str) -> Decimal | None:
        return None if cfg.get(k) in (None, "") else Decimal(cfg[k])

    return TreeConfig(cfg["tree_id"], cfg["species"], Decimal(cfg["dbh_cm"]), dec("height_m"),
                      cfg.get("dendrometer", "point"), cfg.get("plot", ""), dec("ref_um"))


async def _readings(db: Any, series: int, lo: int, hi: int) -> list[dict[str, Any]]:
    return await db.fetch("SELECT ts_ms, value, quality FROM readings WHERE series = ? AND ts_ms >= ? AND ts_ms < ?"
                          " ORDER BY ts_ms", series, lo, hi)  # type: ignore[no-any-return]


def _dec(v: Any) -> Decimal:
    return Decimal(repr(float(v)))


# --- solar ----------------------------------------------------------------------------------------

Row = tuple[Any, ...]  # (member, hour_ms, status, readings, wh_milli, est_wh_milli, co2_g, max_um, factor, note)


async def _inverter_rows(db: Any, a: AssetSource, start_ms: int, end_ms: int, fs: FactorSet) -> list[Row]:
    cfg = CounterConfig(a.source_id, Decimal(a.config["rated_w"]))
    series = {role: s for _, role, s, _ in a.inputs}
    e = series["energy"]
    # the hours' readings and the counter reading on each side: steps that straddle a bound are split
    inside = await _readings(db, e, start_ms, end_ms)
    before = await db.fetch("SELECT ts_ms, value, quality FROM readings WHERE series = ? AND ts_ms < ?"
                            " AND quality = 'N' ORDER BY ts_ms DESC LIMIT 1", e, start_ms)
    after = await db.fetch("SELECT ts_ms, value, quality FROM readings WHERE series = ? AND ts_ms >= ?"
                           " AND quality = 'N' ORDER BY ts_ms LIMIT 1", e, end_ms)
    counter = [CounterReading(int(r["ts_ms"]), _dec(r["value"]), r["quality"] == "N")
               for r in [*before, *inside, *after]]
    pad = cfg.max_power_gap_s * 1000
    power_rows = await _readings(db, series["power"], start_ms - pad, end_ms + pad) if "power" in series else []
    power = [PowerReading(int(r["ts_ms"]), _dec(r["value"]), r["quality"] == "N") for r in power_rows]
    n_in = {h: 0 for h in range(start_ms, end_ms, HOUR_MS)}
    for r in [*inside, *(p for p in power_rows if start_ms <= int(p["ts_ms"]) < end_ms)]:
        n_in[int(r["ts_ms"]) // HOUR_MS * HOUR_MS] += 1
    try:
        period = account_counter(cfg, counter, power, start_ms=start_ms, end_ms=end_ms)
    except CarbonInputError as exc:  # a fall no wrap or reset explains: nothing is guessed
        return [("", h, "missing", n, 0, 0, 0, None, "", str(exc)[:1000]) for h, n in n_in.items()]
    valid = [c for c in counter if c.valid]
    out = []
    for h in period.hours:
        hi = h.hour_ms + HOUR_MS
        covered = any(r0.ts_ms < hi and r1.ts_ms > h.hour_ms for r0, r1 in pairwise(valid))
        flagged = any(h.hour_ms <= f.ts_ms < hi for f in period.flags)
        total = h.wh + h.estimated_wh
        status = ("missing" if not covered and total == 0 else
                  "substituted" if h.estimated_wh > 0 or flagged or not covered else "valid")
        note = "; ".join(f"{f.kind}: {f.detail}" for f in period.flags
                         if h.hour_ms <= f.ts_ms < hi)[:1000] if status != "valid" else ""
        try:  # the grid factor of the hour's local year (China's are published per year, late)
            ref = fs.grid_factor(year_of(h.hour_ms, DAYS_TZ_OFFSET_MIN), a.config.get("grid", "CN"),
                                 latest_as_proxy=True)
        except CarbonInputError as exc:  # a year before the table: the energy stands, the avoided CO2 is missing
            out.append(("", h.hour_ms, "missing", n_in[h.hour_ms], int(total * 1000), int(h.estimated_wh * 1000), 0,
                        None, "", str(exc)[:1000]))
            continue
        grams = int(fm.round_fixed(fm.grid_co2(total / fm.MILLION, ref.value) * fm.MILLION, 0))
        out.append(("", h.hour_ms, status, n_in[h.hour_ms], int(total * 1000), int(h.estimated_wh * 1000), grams,
                    None, f"{ref.key} = {ref.value} {ref.unit} ({ref.status})", note))
    return out


# --- forest ---------------------------------------------------------------------------------------

async def _previous_max(db: Any, src: int, member: str, hour_ms: int) -> Decimal | None:
    v = await db.fetchval("SELECT max_um FROM carbon_asset_hours WHERE src = ? AND member = ? AND hour_ms < ?"
                          " AND max_um IS NOT NULL ORDER BY hour_ms DESC LIMIT 1", src, member, hour_ms)
    return None if v is None else _dec(v)


async def _tree_rows(db: Any, a: AssetSource, member: str, series: int, cfg: TreeConfig, hours: Sequence[int],
                     fs: FactorSet) -> list[Row]:
    if cfg.ref_um is None:  # the tape was read at the first reading: its value is the reference
        first = await db.fetchval("SELECT value FROM readings WHERE series = ? AND quality = 'N' ORDER BY ts_ms"
                                  " LIMIT 1", series)
        cfg = TreeConfig(cfg.tree_id, cfg.species, cfg.dbh_cm, cfg.height_m, cfg.dendrometer, cfg.plot,
                         None if first is None else _dec(first))
    out: list[Row] = []
    base = await _previous_max(db, a.src, member, hours[0])
    by_hour: dict[int, list[DendroReading]] = {}
    for r in await _readings(db, series, hours[0], hours[-1] + HOUR_MS):  # one query for the whole range
        ts = int(r["ts_ms"])
        by_hour.setdefault(ts - ts % HOUR_MS, []).append(DendroReading(ts, _dec(r["value"]), r["quality"] == "N"))
    for h in hours:
        rs = by_hour.get(h, [])
        if cfg.ref_um is None or (base is None and not any(r.valid for r in rs)):
            out.append((member, h, "missing", len(rs), 0, 0, 0, None, "", "no valid dendrometer reading yet"))
            continue
        try:
            res = account_tree(cfg, rs, start_ms=h, end_ms=h + HOUR_MS, baseline_max_um=base, factors=fs)
        except CarbonInputError as exc:  # e.g. a species the factor table no longer has: said, never a crash
            out.append((member, h, "missing", len(rs), 0, 0, 0, None if base is None else float(base), "",
                        str(exc)[:1000]))
            continue
        status = "missing" if not any(r.valid for r in rs) else "substituted" if res.faults else "valid"
        base = res.max_um_end
        refs = ", ".join(f"{r.key} = {r.value}" for r in res.factors)
        out.append((member, h, status, len(rs), 0, 0, int(res.co2_t * fm.MILLION), float(base), refs[:1000],
                    "; ".join(res.flags)[:1000]))
    return out


# --- writing hours --------------------------------------------------------------------------------

_COLS = ("src, member, hour_ms, status, readings, wh_milli, est_wh_milli, co2_g, max_um, factor, note,"
         " formula_version")


async def _write(db: Any, a: AssetSource, rows: Sequence[Row], *, at_ms: int | None, cause: str) -> int:
    """Replace these hours' rows; with ``at_ms``, every changed field of a row that existed is a revision."""
    if not rows:
        return 0
    # the rows' hours as runs per member: one statement deletes (and one reads) each run, not each hour
    hours_of: dict[str, set[int]] = {}
    for r in rows:
        hours_of.setdefault(r[0], set()).add(r[1])
    spans = [(m, lo, hi) for m, hs in hours_of.items() for lo, hi in _runs(sorted(hs))]
    span_sql = "FROM carbon_asset_hours WHERE src = ? AND member = ? AND hour_ms >= ? AND hour_ms < ?"
    changes = []
    async with db.transaction() as tx:
        if at_ms is not None:
            stored = {(b["member"], int(b["hour_ms"])): b for m, lo, hi in spans
                      for b in await tx.fetch(f"SELECT member, hour_ms, {', '.join(FIELDS)} {span_sql}",
                                              a.src, m, lo, hi)}
            for r in rows:
                member, hour = r[0], r[1]
                before = stored.get((member, hour))
                if before is not None:
                    after = dict(zip(FIELDS, (r[2], r[3], r[4], r[6]), strict=True))
                    changes += [(a.source_id, hour, f"{member}.{f}" if member else f, str(before[f]),
                                 str(after[f]), at_ms, cause) for f in FIELDS if str(before[f]) != str(after[f])]
        for m, lo, hi in spans:
            await tx.execute(f"DELETE {span_sql}", a.src, m, lo, hi)
        await tx.executemany(f"INSERT INTO carbon_asset_hours ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [(a.src, *r, FORMULA_SET_VERSION) for r in rows])
        if changes:
            await tx.executemany("INSERT INTO carbon_revisions (source_id, hour_ms, field, before_v, after_v, at_ms,"
                                 " cause) VALUES (?, ?, ?, ?, ?, ?, ?)", changes)
    hours = sorted({r[1] for r in rows})
    await refresh_asset_days(db, [a.src], hours[0], hours[-1] + HOUR_MS)
    return len(changes)


async def _account(db: Any, a: AssetSource, hours: Sequence[int], fs: FactorSet, *, at_ms: int | None,
                   cause: str, cascade: bool) -> int:
    """Recompute these hours of one asset (sorted, distinct); returns the number of fields revised."""
    if not hours:
        return 0
    if a.kind == "inverter":
        rows: list[Row] = []
        for lo, hi in _runs(hours):
            rows += await _inverter_rows(db, a, lo, hi, fs)
        return await _write(db, a, rows, at_ms=at_ms, cause=cause)
    revised = 0
    for member, _, series, mcfg in a.inputs:
        cfg = _tree(mcfg)
        todo = list(hours)
        while todo:
            old_end = await db.fetchval("SELECT max_um FROM carbon_asset_hours WHERE src = ? AND member = ?"
                                        " AND hour_ms = ?", a.src, member, todo[-1])
            rows = await _tree_rows(db, a, member, series, cfg, todo, fs)
            revised += await _write(db, a, rows, at_ms=at_ms, cause=cause)
            new_end = rows[-1][7]
            nxt = await db.fetchval("SELECT min(hour_ms) FROM carbon_asset_hours WHERE src = ? AND member = ?"
                                    " AND hour_ms > ?", a.src, member, todo[-1])
            # a changed maximum moves the growth of the hours after it: recompute them until it agrees again
            if not cascade or nxt is None or old_end is None or new_end is None or float(old_end) == new_end:
                break
            todo = [int(nxt)]
    return revised


def _runs(hours: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for h in hours:
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + HOUR_MS)
        else:
            out.append((h, h + HOUR_MS))
    return out


async def account_assets(db: Any, assets: Sequence[AssetSource], start_ms: int, end_ms: int, *,
                         factors: FactorSet | None = None) -> dict[str, int]:
    """(Re)compute hours [start, end) of these assets (the operator's `carbonlink carbon account`).
    Returns asset-hours by status (a plot counts tree-hours)."""
    fs = factors or FactorSet.default()
    start_ms, end_ms = start_ms - start_ms % HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS
    hours = list(range(start_ms, end_ms, HOUR_MS))
    for a in assets:
        await _account(db, a, hours, fs, at_ms=None, cause="", cascade=False)
    if not assets:
        return {}
    m = ",".join("?" * len(assets))
    rows = await db.fetch(f"SELECT status, count(*) AS n FROM carbon_asset_hours WHERE src IN ({m})"
                          " AND hour_ms >= ? AND hour_ms < ? GROUP BY status", *(a.src for a in assets),
                          start_ms, end_ms)
    return {r["status"]: int(r["n"]) for r in rows}


async def account_tenant(db: Any, tenant: str, start_ms: int, end_ms: int) -> dict[str, int]:
    """Every source of a tenant over [start, end): stack-hours by status, then asset-hours as ``asset <status>``
    (`carbonlink carbon account`, and the demo after it registers its sources)."""
    from .sqlstore import account_sources, load_stack

    ids = [r["source_id"] for r in await db.fetch(
        "SELECT source_id FROM carbon_sources WHERE tenant = ? AND kind = 'stack' ORDER BY source_id", tenant)]
    counts = await account_sources(db, [await load_stack(db, i) for i in ids], start_ms, end_ms)
    others = await account_assets(db, await load_assets(db, tenant=tenant), start_ms, end_ms)
    return counts | {f"asset {k}": n for k, n in others.items()}


async def recompute(db: Any, hours: Iterable[tuple[str, int]], *, at_ms: int, cause: str = "late data",
                    factors: FactorSet | None = None) -> int:
    """The refresh pass's (gateway, hour) pairs: recompute the asset-hours they touch, keep revisions."""
    touched = sorted(set(hours))
    if not touched:
        return 0
    fs = factors or FactorSet.default()
    rows = await db.fetch("SELECT DISTINCT c.source_id, s.gateway FROM carbon_asset_inputs i"
                          " JOIN series s ON s.id = i.series JOIN carbon_sources c ON c.src = i.src")
    by_gateway: dict[str, set[str]] = {}
    for r in rows:
        by_gateway.setdefault(r["gateway"], set()).add(r["source_id"])
    per_asset: dict[str, set[int]] = {}
    for gw, hour in touched:
        for sid in by_gateway.get(gw, ()):
            per_asset.setdefault(sid, set()).add(hour)
    revised = 0
    for a in await load_assets(db, source_ids=per_asset):
        todo = set(per_asset[a.source_id])
        if a.kind == "inverter":  # a counter step straddling a bound shares its energy with the stored neighbour
            for h in list(todo):
                for n in (h - HOUR_MS, h + HOUR_MS):
                    if n not in todo and await db.fetchval("SELECT 1 FROM carbon_asset_hours WHERE src = ?"
                                                           " AND member = '' AND hour_ms = ?", a.src, n):
                        todo.add(n)
        revised += await _account(db, a, sorted(todo), fs, at_ms=at_ms, cause=cause, cascade=True)
    return revised


# --- days and periods -----------------------------------------------------------------------------

_HOUR_SUMS = ("CAST(sum(h.wh_milli) AS BIGINT) AS wh_milli, CAST(sum(h.co2_g) AS BIGINT) AS co2_g,"
              " sum(CASE WHEN h.status = 'valid' THEN 1 ELSE 0 END) AS valid,"
              " sum(CASE WHEN h.status = 'substituted' THEN 1 ELSE 0 END) AS substituted,"
              " sum(CASE WHEN h.status = 'missing' THEN 1 ELSE 0 END) AS missing,"
              " CAST(sum(h.readings) AS BIGINT) AS readings")


async def refresh_asset_days(db: Any, srcs: Sequence[int], start_ms: int, end_ms: int) -> None:
    """Re-sum the kept local days that hours [start, end) of these assets fall in."""
    await resum_days(db, "carbon_asset_days", "carbon_asset_hours", _SUMS, _HOUR_SUMS, srcs, start_ms, end_ms)


def asset_days_sql(start_ms: int, end_ms: int, tz_offset_min: int) -> tuple[str, list[Any]]:
    """Per asset and local day sums of a tenant (its first parameter): kept days when the range is whole
    days at UTC+8, else from the hours (same integers either way)."""
    off = tz_offset_min * 60_000
    if tz_offset_min == DAYS_TZ_OFFSET_MIN and (start_ms + off) % DAY_MS == 0 and (end_ms + off) % DAY_MS == 0:
        return (f"SELECT src, day, {', '.join(_SUMS)} FROM carbon_asset_days WHERE tz_offset_min = "
                f"{DAYS_TZ_OFFSET_MIN} AND src IN (SELECT src FROM carbon_sources WHERE tenant = ?)"
                " AND day >= ? AND day < ?", [(start_ms + off) // DAY_MS, (end_ms + off) // DAY_MS])
    bucket = f"(h.hour_ms + {off}) / {DAY_MS}"
    return (f"SELECT h.src, {bucket} AS day, {_HOUR_SUMS} FROM carbon_asset_hours h"
            " WHERE h.src IN (SELECT src FROM carbon_sources WHERE tenant = ?) AND h.hour_ms >= ? AND h.hour_ms < ?"
            f" GROUP BY h.src, {bucket}", [start_ms, end_ms])


def _label(day: int, granularity: str) -> str:
    import datetime as dt

    d = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    return {"day": d.isoformat(), "month": f"{d.year}-{d.month:02d}", "year": str(d.year)}[granularity]


def _text(units: int, scale: int) -> str:
    """``units / 10**scale`` as plain decimals without trailing zeros (exact: integer sums)."""
    t = f"{Decimal(units).scaleb(-scale):f}"
    return t.rstrip("0").rstrip(".") if "." in t else t


async def asset_periods(db: Any, tenant: str, granularity: str, start_ms: int, end_ms: int, *,
                        tz_offset_min: int = 480, site: str | None = None, by: str = "site"
                        ) -> list[dict[str, Any]]:
    """Solar MWh and avoided t CO2, sinks t CO2e, with coverage per kind, per site (or asset) and period."""
    days, args = asset_days_sql(start_ms, end_ms, tz_offset_min)
    where = " WHERE c.site = ?" if site else ""
    rows = await db.fetch(f"SELECT c.site, c.source_id, c.kind, d.day, {', '.join('d.' + k for k in _SUMS)}"
                          f" FROM ({days}) d JOIN carbon_sources c ON c.src = d.src{where}", tenant, *args,
                          *([site] if site else []))
    acc: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        label = _label(int(r["day"]), granularity)
        key = (r["site"], r["source_id"] if by == "source" else "", label)
        a = acc.setdefault(key, {"wh_milli": 0, "avoided_g": 0, "sink_g": 0,
                                 "solar": dict.fromkeys(("valid", "substituted", "missing"), 0),
                                 "forest": dict.fromkeys(("valid", "substituted", "missing"), 0), "kind": r["kind"]})
        kind = "solar" if r["kind"] == "inverter" else "forest"
        a["wh_milli"] += int(r["wh_milli"] or 0)
        a["avoided_g" if kind == "solar" else "sink_g"] += int(r["co2_g"] or 0)
        for k in ("valid", "substituted", "missing"):
            a[kind][k] += int(r[k] or 0)
    out = []
    for (s, source, label), a in sorted(acc.items()):
        item = {"site": s, "period": label, "mwh_generated": _text(a["wh_milli"], 9),
                "avoided_t": _text(a["avoided_g"], 6), "sinks_t": _text(a["sink_g"], 6),
                "coverage_solar": a["solar"], "coverage_forest": a["forest"]}
        if by == "source":
            item.update(source_id=source, kind=a["kind"])
        out.append(item)
    return out


async def tree_figures(db: Any, tenant: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    """Per plot and tree over [start, end): t CO2e taken up and tree-hours by status."""
    rows = await db.fetch(
        "SELECT c.source_id, c.site, h.member, CAST(sum(h.co2_g) AS BIGINT) AS co2_g,"
        " sum(CASE WHEN h.status = 'valid' THEN 1 ELSE 0 END) AS valid,"
        " sum(CASE WHEN h.status = 'substituted' THEN 1 ELSE 0 END) AS substituted,"
        " sum(CASE WHEN h.status = 'missing' THEN 1 ELSE 0 END) AS missing FROM carbon_asset_hours h"
        " JOIN carbon_sources c ON c.src = h.src WHERE c.tenant = ? AND c.kind = 'plot' AND h.hour_ms >= ?"
        " AND h.hour_ms < ? GROUP BY c.source_id, c.site, h.member ORDER BY c.source_id, h.member",
        tenant, start_ms, end_ms)
    return [{"plot": r["source_id"], "site": r["site"], "tree": r["member"], "sinks_t": _text(int(r["co2_g"] or 0), 6),
             "coverage": {k: int(r[k] or 0) for k in ("valid", "substituted", "missing")}} for r in rows]


async def asset_hour(db: Any, source_id: str, hour_ms: int) -> dict[str, Any]:
    """One asset-hour with what it rests on: each member's row, its series and the revisions."""
    rows = await db.fetch("SELECT h.* FROM carbon_asset_hours h JOIN carbon_sources c ON c.src = h.src"
                          " WHERE c.source_id = ? AND h.hour_ms = ? ORDER BY h.member", source_id, hour_ms)
    if not rows:
        raise CarbonInputError(f"{source_id} hour {hour_ms}", "not accounted", "account the period first")
    inputs = await db.fetch("SELECT i.member, i.role, s.gateway, s.device, s.point, s.unit FROM carbon_asset_inputs i"
                            " JOIN series s ON s.id = i.series JOIN carbon_sources c ON c.src = i.src"
                            " WHERE c.source_id = ? ORDER BY i.member, i.role", source_id)
    revisions = await db.fetch("SELECT field, before_v, after_v, at_ms, cause FROM carbon_revisions"
                               " WHERE source_id = ? AND hour_ms = ? ORDER BY at_ms, field", source_id, hour_ms)
    return {"hours": [dict(r) for r in rows], "inputs": [dict(r) for r in inputs],
            "revisions": [dict(r) for r in revisions], "factor_versions": FactorSet.default().versions}
