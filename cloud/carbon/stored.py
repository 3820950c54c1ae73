"""Accounts from what the store keeps: a tenant's monthly or annual report built from its accounted
stack-hours (``carbon_hours``, through the kept ``carbon_days`` where the offset allows) and its solar
and forest hours (``carbon_asset_hours`` / ``carbon_asset_days``), for reports downloaded over HTTP.

The figures are those of ``/api/carbon/accounts`` and the dashboard (integer grams summed exactly), put
in the ``Accounts`` that ``report.render`` writes as PDF, CSV or JSON: one scope-1 line per stack,
one avoided line per inverter (with its MWh) and one sink line per forest plot, per sub-period (day of the
month, or month of the year) with coverage and pollutant mass, the totals
summed as ``build`` sums them, and the year's allowance on an annual report. ``as_of`` is the end of
the last accounted hour in the period, so the same stored hours give the same bytes.
Fuel activity, bought electricity and certificates are not kept per hour; they are in the CLI's reports.
"""

from __future__ import annotations

import datetime as dt
import json
from bisect import bisect_right
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Literal

from .accounts import Accounts, Category, PeriodAccount, SourceLine, period_account
from .assets import asset_days_sql
from .build import FOREST_METHOD, SOLAR_METHOD, Organisation, StackInput, _methods, _total, sub_periods
from .calculator import FORMULA_SET_VERSION
from .errors import CarbonInputError
from .factors import FactorRef, FactorSet
from .sqlstore import HOUR_MS, POLLUTANTS, StackSource, allowance, load_stack, stack_days_sql
from .substitution import Coverage

Kind = Literal["monthly", "annual"]
_SUMS = ("co2_g", "so2_g", "nox_g", "dust_g", "valid", "substituted", "missing")
_ASSET_SUMS = ("wh_milli", "co2_g", "valid", "substituted", "missing")
_ASSET_LINE: dict[str, tuple[Category, str]] = {"inverter": ("avoided", "solar"), "plot": ("sink", "forest")}


async def stored_accounts(db: Any, tenant: str, *, kind: Kind, year: int, month: int | None = None,
                          tz_offset_min: int = 480) -> Accounts:
    """The tenant's report for a month (rows per local day) or a year (rows per local month)."""
    if kind == "monthly" and month is None:
        raise CarbonInputError("month", "missing", "a monthly report needs its month (1-12)")
    sources = await db.fetch("SELECT source_id, src, site, kind, config FROM carbon_sources WHERE tenant = ?"
                             " AND kind IN ('stack', 'inverter', 'plot') ORDER BY source_id", tenant)
    if not sources:
        raise CarbonInputError(f"tenant {tenant!r}", "has no accounted sources",
                               "register one with `carbonlink carbon register-stack` (or an inverter or plot)")
    stacks = [await load_stack(db, r["source_id"]) for r in sources if r["kind"] == "stack"]
    assets = [r for r in sources if r["kind"] != "stack"]
    name = await db.fetchval("SELECT name FROM tenants WHERE id = ?", tenant) or tenant
    subs = sub_periods(kind, year, month if kind == "monthly" else None, tz_offset_min)
    start_ms, end_ms = subs[0][1] * 1000, subs[-1][2] * 1000
    sums = await _sums_by_period(db, tenant, subs, tz_offset_min, stack_days_sql, _SUMS) if stacks else {}
    asset_sums = (await _sums_by_period(db, tenant, subs, tz_offset_min, asset_days_sql, _ASSET_SUMS)
                  if assets else {})
    periods: list[PeriodAccount] = []
    for i, (label, a, b) in enumerate(subs):
        lines, pollutants = [], dict.fromkeys(POLLUTANTS, Decimal(0))
        for s in stacks:
            g = sums.get((s.src, i), [0] * len(_SUMS))
            mass = {p: Decimal(g[1 + j]) / 1000 for j, p in enumerate(POLLUTANTS)}
            for p in POLLUTANTS:
                pollutants[p] += mass[p]
            lines.append(SourceLine(s.source_id, s.site, "stack", "scope1", Decimal(g[0]) / 1_000_000,
                                    Coverage(g[4], g[5], g[6]),
                                    detail={"pollutants_kg": ", ".join(f"{k} {v}" for k, v in sorted(mass.items()))},
                                    method="cems"))
        generated = Decimal(0)
        for r in assets:
            wh_milli, co2_g, valid, substituted, missing = asset_sums.get((int(r["src"]), i), [0] * len(_ASSET_SUMS))
            category, method = _ASSET_LINE[r["kind"]]
            detail = {}
            if r["kind"] == "inverter":
                generated += Decimal(wh_milli).scaleb(-9)
                detail["mwh"] = str(Decimal(wh_milli).scaleb(-9))
            lines.append(SourceLine(r["source_id"], r["site"], r["kind"], category, Decimal(co2_g) / 1_000_000,
                                    Coverage(valid, substituted, missing), detail=detail, method=method))
        periods.append(period_account(label, a * 1000, b * 1000, lines, pollutants_kg=pollutants,
                                      mwh_generated=generated))
    quota = await allowance(db, tenant, year) if kind == "annual" else None
    org = Organisation(tenant, name, allowance_t=quota, tz_offset_min=tz_offset_min,
                       stacks=[StackInput(s.config, s.site, {}) for s in stacks])
    total = _total(report_period(kind, year, month), subs[0][1], subs[-1][2], periods, org)
    as_of = _iso(await _last_hour_end(db, stacks, assets, start_ms, end_ms), tz_offset_min)
    fs = FactorSet.default()
    methods = (*_methods(org)[:-1], *(m for k, m in (("inverter", SOLAR_METHOD), ("plot", FOREST_METHOD))
                                      if any(r["kind"] == k for r in assets)), _methods(org)[-1])
    return Accounts(tenant, name, tuple(sorted({r["site"] for r in sources})), kind, year,
                    month if kind == "monthly" else None, as_of, tz_offset_min, org.covered_scopes, tuple(periods),
                    total, _factors(stacks, assets, year, fs), methods,
                    FORMULA_SET_VERSION, dict(fs.versions))


async def _last_hour_end(db: Any, stacks: Sequence[StackSource], assets: Sequence[dict[str, Any]],
                         start_ms: int, end_ms: int) -> int:
    """The end of the last accounted hour in the period (its start when none): the report's data cut-off."""
    last = None
    for table, srcs in (("carbon_hours", [s.src for s in stacks]), ("carbon_asset_hours", [r["src"] for r in assets])):
        if srcs:
            got = await db.fetchval(f"SELECT max(hour_ms) FROM {table} WHERE src IN ({','.join('?' * len(srcs))})"
                                    " AND hour_ms >= ? AND hour_ms < ?", *srcs, start_ms, end_ms)
            if got is not None:
                last = max(int(got), last or 0)
    return start_ms if last is None else last + HOUR_MS


def _factors(stacks: Sequence[StackSource], assets: Sequence[dict[str, Any]], year: int,
             fs: FactorSet) -> tuple[FactorRef, ...]:
    """The factors the hours rest on, as the accounting takes them: a stack's reference O2 of its source type
    unless configured and the limits its concentrations are judged by (``cems.account_stack``); an
    inverter's grid factor of the local year, the newest as a marked proxy (``assets``)."""
    used: dict[str, FactorRef] = {}
    for a in assets:
        if a["kind"] == "inverter":
            conf = a["config"] if isinstance(a["config"], dict) else json.loads(a["config"] or "{}")
            try:
                grid = fs.grid_factor(year, conf.get("grid", "CN"), latest_as_proxy=True)
            except CarbonInputError:  # no factor for the year: its hours say missing, with the reason
                continue
            used[f"{grid.table}:{grid.key}"] = grid
    for s in stacks:
        cfg = s.config
        refs = [] if cfg.o2_ref_pct is not None else [fs.o2_ref(cfg.source_type)]
        refs += [r for p in cfg.pollutants if (r := fs.limit(cfg.source_type, p, cfg.limit_regime)) is not None]
        for r in refs:
            used[f"{r.table}:{r.key}"] = r
    return tuple(used[k] for k in sorted(used))


async def _sums_by_period(db: Any, tenant: str, subs: Sequence[tuple[str, int, int]], tz_offset_min: int,
                          days_sql: Callable[[int, int, int], tuple[str, list[Any]]], columns: Sequence[str]
                          ) -> dict[tuple[int, int], list[int]]:
    """Integer sums of ``columns`` per (src, sub-period index) of the local days ``days_sql`` gives."""
    days, args = days_sql(subs[0][1] * 1000, subs[-1][2] * 1000, tz_offset_min)
    off_s = tz_offset_min * 60
    first_day = (subs[0][1] + off_s) // 86400
    # the index of each local day's sub-period: days of a month are their own; months of a year by start
    starts = [(a + off_s) // 86400 - first_day for _, a, _ in subs]
    out: dict[tuple[int, int], list[int]] = {}
    for r in await db.fetch(f"SELECT src, day, {', '.join(columns)} FROM ({days}) d", tenant, *args):
        rel = int(r["day"]) - first_day
        i = bisect_right(starts, rel) - 1
        acc = out.setdefault((int(r["src"]), i), [0] * len(columns))
        for j, k in enumerate(columns):
            acc[j] += int(r[k] or 0)
    return out


def _iso(ms: int, tz_offset_min: int) -> str:
    tz = dt.timezone(dt.timedelta(minutes=tz_offset_min))
    return dt.datetime.fromtimestamp(ms / 1000, tz).isoformat()


def report_period(kind: Kind, year: int, month: int | None) -> str:
    """The period a report covers, as its file name says it: ``2025`` or ``2025-03``."""
    return f"{year}-{month:02d}" if kind == "monthly" and month else str(year)
