"""Accounts from what the store keeps: a tenant's monthly or annual report built from its accounted
stack-hours (``carbon_hours``, through the kept ``carbon_days`` where the offset allows), for reports
downloaded over HTTP.

The figures are those of ``/api/carbon/accounts`` and the dashboard (integer grams summed exactly), put
in the ``Accounts`` that ``report.render`` writes as PDF, CSV or JSON: one scope-1 line per stack and
sub-period (day of the month, or month of the year) with its coverage and pollutant mass, the totals
summed as ``build`` sums them, and the year's allowance on an annual report. ``as_of`` is the end of
the last accounted hour in the period, so the same stored hours give the same bytes.
Only stacks are accounted in the store today; other kinds of source are left out of these reports.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

from .accounts import Accounts, PeriodAccount, SourceLine, period_account
from .build import Organisation, StackInput, _methods, _total, sub_periods
from .calculator import FORMULA_SET_VERSION
from .errors import CarbonInputError
from .factors import FactorRef, FactorSet
from .sqlstore import HOUR_MS, POLLUTANTS, StackSource, allowance, load_stack, stack_days_sql
from .substitution import Coverage

Kind = Literal["monthly", "annual"]
_SUMS = ("co2_g", "so2_g", "nox_g", "dust_g", "valid", "substituted", "missing")


async def stored_accounts(db: Any, tenant: str, *, kind: Kind, year: int, month: int | None = None,
                          tz_offset_min: int = 480) -> Accounts:
    """The tenant's report for a month (rows per local day) or a year (rows per local month)."""
    if kind == "monthly" and month is None:
        raise CarbonInputError("month", "missing", "a monthly report needs its month (1-12)")
    sources = await db.fetch("SELECT source_id, src, site FROM carbon_sources WHERE tenant = ? AND kind = 'stack'"
                             " ORDER BY source_id", tenant)
    if not sources:
        raise CarbonInputError(f"tenant {tenant!r}", "has no accounted stacks",
                               "register one with `carbonlink carbon register-stack`")
    stacks = [await load_stack(db, r["source_id"]) for r in sources]
    name = await db.fetchval("SELECT name FROM tenants WHERE id = ?", tenant) or tenant
    subs = sub_periods(kind, year, month if kind == "monthly" else None, tz_offset_min)
    start_ms, end_ms = subs[0][1] * 1000, subs[-1][2] * 1000
    sums = await _sums_by_period(db, tenant, subs, tz_offset_min)
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
        periods.append(period_account(label, a * 1000, b * 1000, lines, pollutants_kg=pollutants))
    quota = await allowance(db, tenant, year) if kind == "annual" else None
    org = Organisation(tenant, name, allowance_t=quota, tz_offset_min=tz_offset_min,
                       stacks=[StackInput(s.config, s.site, {}) for s in stacks])
    total = _total(report_period(kind, year, month), subs[0][1], subs[-1][2], periods, org)
    last = await db.fetchval(f"SELECT max(hour_ms) FROM carbon_hours WHERE src IN ({','.join('?' * len(stacks))})"
                             " AND hour_ms >= ? AND hour_ms < ?", *[s.src for s in stacks], start_ms, end_ms)
    as_of = _iso(start_ms if last is None else int(last) + HOUR_MS, tz_offset_min)
    fs = FactorSet.default()
    return Accounts(tenant, name, tuple(sorted({s.site for s in stacks})), kind, year,
                    month if kind == "monthly" else None, as_of, tz_offset_min, org.covered_scopes, tuple(periods),
                    total, _factors(stacks, fs), _methods(org), FORMULA_SET_VERSION, dict(fs.versions))


def _factors(stacks: Sequence[StackSource], fs: FactorSet) -> tuple[FactorRef, ...]:
    """The factors a stack's hours rest on, as the accounting takes them (``cems.account_stack``): the
    reference O2 of its source type unless configured, and the limits its concentrations are judged by."""
    used: dict[str, FactorRef] = {}
    for s in stacks:
        cfg = s.config
        refs = [] if cfg.o2_ref_pct is not None else [fs.o2_ref(cfg.source_type)]
        refs += [r for p in cfg.pollutants if (r := fs.limit(cfg.source_type, p, cfg.limit_regime)) is not None]
        for r in refs:
            used[f"{r.table}:{r.key}"] = r
    return tuple(used[k] for k in sorted(used))


async def _sums_by_period(db: Any, tenant: str, subs: Sequence[tuple[str, int, int]],
                          tz_offset_min: int) -> dict[tuple[int, int], list[int]]:
    """Integer sums per (src, sub-period index) of the stacks' local days."""
    days, args = stack_days_sql(subs[0][1] * 1000, subs[-1][2] * 1000, tz_offset_min)
    off_s = tz_offset_min * 60
    first_day = (subs[0][1] + off_s) // 86400
    # the index of each local day's sub-period: days of a month are their own; months of a year by start
    starts = [(a + off_s) // 86400 - first_day for _, a, _ in subs]
    out: dict[tuple[int, int], list[int]] = {}
    for r in await db.fetch(f"SELECT src, day, {', '.join(_SUMS)} FROM ({days}) d", tenant, *args):
        rel = int(r["day"]) - first_day
        i = bisect_right(starts, rel) - 1
        acc = out.setdefault((int(r["src"]), i), [0] * len(_SUMS))
        for j, k in enumerate(_SUMS):
            acc[j] += int(r[k] or 0)
    return out


def _iso(ms: int, tz_offset_min: int) -> str:
    tz = dt.timezone(dt.timedelta(minutes=tz_offset_min))
    return dt.datetime.fromtimestamp(ms / 1000, tz).isoformat()


def report_period(kind: Kind, year: int, month: int | None) -> str:
    """The period a report covers, as its file name says it: ``2025`` or ``2025-03``."""
    return f"{year}-{month:02d}" if kind == "monthly" and month else str(year)
