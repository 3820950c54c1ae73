"""Accounts from per-source inputs, in Python: the reference the SQL accounting is checked against.

``build_accounts`` runs every method of this package over one organisation's sources for a month (rows
per local day) or a year (rows per local month) and assembles an ``Accounts``. Rules:

* scope 1: a stack with CEMS CO2 counts its measured CO2; fuel rows for that same stack are reported
  beside it (``co2_fuel_t`` and the relative difference) and not added; fuel rows for any other source
  (a boiler without CEMS, ``site``) count by calculation.
* scope 2: electricity bought (meters) × the grid factor of each hour's local year.
* avoided: solar generation × the same grid factor; green certificates 1 per MWh, remainders carried.
* sinks: each tree's uptake per sub-period, the maximum carried from one sub-period to the next.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Literal

from . import formulas as fm
from .accounts import Accounts, MethodRef, PeriodAccount, SourceLine, period_account
from .activity import ActivityRow
from .calculator import FORMULA_SET_VERSION
from .cems import HourValue, StackConfig, StackHour, account_stack, summarise
from .energy import (
    CounterConfig,
    CounterEvent,
    CounterReading,
    EnergyPeriod,
    PowerReading,
    account_counter,
    certificates,
    grid_emissions,
)
from .factors import FactorRef, FactorSet
from .forest import DendroReading, TreeConfig, account_tree, plot_total
from .substitution import Coverage

H = 3600
ZERO = Decimal(0)


@dataclass(frozen=True)
class StackInput:
    config: StackConfig
    site: str
    hours: dict[int, dict[str, HourValue]]  # may include look-back hours before the period


@dataclass(frozen=True)
class CounterInput:
    config: CounterConfig
    site: str
    role: Literal["generation", "bought"]
    readings: Sequence[CounterReading]
    power: Sequence[PowerReading] = ()
    events: Sequence[CounterEvent] = ()
    grid: str = "CN"


@dataclass(frozen=True)
class TreeInput:
    config: TreeConfig
    site: str
    readings: Sequence[DendroReading]


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    allowance_t: Decimal | None = None  # for the report's period (month or year)
    covered_scopes: tuple[str, ...] = ("scope1",)
    tz_offset_min: int = 480
    stacks: Sequence[StackInput] = ()
    counters: Sequence[CounterInput] = ()
    trees: Sequence[TreeInput] = ()
    activity: Sequence[ActivityRow] = ()
    notes: tuple[str, ...] = field(default=())
    grid_latest_as_proxy: bool = False  # a year without a published grid factor uses the newest, marked


def sub_periods(kind: str, year: int, month: int | None, tz_offset_min: int) -> list[tuple[str, int, int]]:
    """(label, start, end) in epoch seconds of each local day of the month, or each month of the year."""
    off = tz_offset_min * 60
    if kind == "monthly":
        if month is None:
            raise ValueError("a monthly report needs its month")
        days = calendar.monthrange(year, month)[1]
        return [(f"{year}-{month:02d}-{d:02d}", calendar.timegm((year, month, d, 0, 0, 0)) - off,
                 calendar.timegm((year, month, d, 0, 0, 0)) - off + 86400) for d in range(1, days + 1)]
    out = []
    for m in range(1, 13):
        start = calendar.timegm((year, m, 1, 0, 0, 0)) - off
        end = calendar.timegm((year + (m == 12), m % 12 + 1, 1, 0, 0, 0)) - off
        out.append((f"{year}-{m:02d}", start, end))
    return out


def build_accounts(org: Organisation, *, kind: Literal["monthly", "annual"], year: int, month: int | None = None,
                   as_of: str, factors: FactorSet | None = None) -> Accounts:
    fs = factors or FactorSet.default()
    subs = sub_periods(kind, year, month, org.tz_offset_min)
    start, end = subs[0][1], subs[-1][2]
    used: dict[str, FactorRef] = {}

    def use(refs: Sequence[FactorRef]) -> None:
        for r in refs:
            used[f"{r.table}:{r.key}"] = r

    # Each source once over the whole period; sub-periods are sums of its hours.
    stack_hours: list[tuple[StackInput, list[StackHour]]] = []
    for s in org.stacks:
        hours, whole = account_stack(s.config, s.hours, start=start, end=end, factors=fs)
        use(whole.factors)
        stack_hours.append((s, hours))
    energy: list[tuple[CounterInput, EnergyPeriod]] = []
    for c in org.counters:
        energy.append((c, account_counter(c.config, c.readings, c.power, start_ms=start * 1000, end_ms=end * 1000,
                                          events=c.events)))
    cems_ids = {s.config.stack_id for s in org.stacks}
    baselines: dict[str, Decimal | None] = {t.config.tree_id: None for t in org.trees}

    periods: list[PeriodAccount] = []
    gen_by_period: list[tuple[str, Decimal]] = []
    for label, a, b in subs:
        lines: list[SourceLine] = []
        pollutants: dict[str, Decimal] = {}
        for s, hours in stack_hours:
            sp = summarise(s.config, hours, start=a, end=b)
            fuel_rows = [r for r in org.activity if r.source == s.config.stack_id and _in(r, a, b, org)]
            detail = {"pollutants_kg": ", ".join(f"{k} {v}" for k, v in sorted(sp.mass_kg.items()))}
            co2_fuel = sp.co2_fuel_t
            if fuel_rows:
                co2_fuel = sum((r.co2_t for r in fuel_rows), ZERO)
            if co2_fuel is not None:
                detail["co2_fuel_t"] = str(co2_fuel)
                rel = fm.relative_difference(sp.co2_measured_t, co2_fuel)
                if rel is not None:
                    detail["rel_diff"] = str(fm.round_fixed(rel, 4))
            if any(sp.hours_above_limit.values()):
                detail["hours_above_limit"] = ", ".join(f"{k} {v}" for k, v in sorted(sp.hours_above_limit.items())
                                                        if v)
            lines.append(SourceLine(s.config.stack_id, s.site, "stack", "scope1", sp.co2_measured_t, sp.coverage,
                                    detail=detail, method="cems"))
            for p, kg in sp.mass_kg.items():
                pollutants[p] = pollutants.get(p, ZERO) + kg
        for r in org.activity:
            if r.source not in cems_ids and _in(r, a, b, org):
                use([x for x in (r.ncv, r.cc, r.oxidation) if isinstance(x, FactorRef)])
                lines.append(SourceLine(f"{r.source}/{r.fuel}", r.site, "fuel", "scope1", r.co2_t,
                                        detail={"quantity": str(r.quantity), "unit": r.unit},
                                        method="fuel"))
        gen = bought = ZERO
        for c, ep in energy:
            part = EnergyPeriod(ep.device_id, a * 1000, b * 1000,
                                [h for h in ep.hours if a * 1000 <= h.hour_ms < b * 1000], ep.steps)
            t, refs = grid_emissions(part, fs, grid=c.grid, tz_offset_min=org.tz_offset_min,
                                     latest_as_proxy=org.grid_latest_as_proxy)
            use(refs)
            mwh = part.mwh
            detail = {"mwh": str(mwh)}
            if part.estimated_wh:
                detail["estimated_mwh"] = str(fm.round_fixed(part.estimated_wh / fm.MILLION, 6))
            if c.role == "generation":
                gen += mwh
                lines.append(SourceLine(c.config.device_id, c.site, "inverter", "avoided", t, detail=detail,
                                        method="solar"))
            else:
                bought += mwh
                lines.append(SourceLine(c.config.device_id, c.site, "meter", "scope2", t, detail=detail,
                                        method="scope2"))
        plots: dict[tuple[str, str], list] = {}  # type: ignore[type-arg]
        for tr in org.trees:
            res = account_tree(tr.config, tr.readings, start_ms=a * 1000, end_ms=b * 1000,
                               baseline_max_um=baselines[tr.config.tree_id], factors=fs)
            baselines[tr.config.tree_id] = res.max_um_end
            use(res.factors)
            plots.setdefault((tr.config.plot or tr.config.tree_id, tr.site), []).append(res)
        for (plot, site), trees in sorted(plots.items()):
            pt = plot_total(plot, trees)
            flagged = sum(1 for x in trees if x.faults)
            lines.append(SourceLine(plot, site, "plot", "sink", pt.co2_t, low_t=pt.co2_low_t, high_t=pt.co2_high_t,
                                    detail={"trees": str(len(trees)), "trees_with_faults": str(flagged),
                                            "uncertainty": str(pt.rel_uncertainty)}, method="forest"))
        gen_by_period.append((label, gen))
        periods.append(period_account(label, a * 1000, b * 1000, lines, covered_scopes=org.covered_scopes,
                                      pollutants_kg=pollutants, mwh_generated=gen, mwh_bought=bought))

    certs = certificates(gen_by_period)
    periods = [_with_certs(p, n, carry) for p, (_, n, carry) in zip(periods, certs, strict=True)]
    total = _total(f"{year}-{month:02d}" if kind == "monthly" and month else str(year), start, end, periods, org)
    return Accounts(org.id, org.name, tuple(sorted({s.site for s in total.sources})), kind, year, month, as_of,
                    org.tz_offset_min, org.covered_scopes, tuple(periods), total,
                    tuple(used[k] for k in sorted(used)), _methods(org), FORMULA_SET_VERSION, dict(fs.versions),
                    org.notes)


def _in(row: ActivityRow, a: int, b: int, org: Organisation) -> bool:
    local_midnight = calendar.timegm(row.date.timetuple()) - org.tz_offset_min * 60
    return a <= local_midnight < b


def _with_certs(p: PeriodAccount, n: int, carry: Decimal) -> PeriodAccount:
    return replace(p, certificates=n, certificate_carry_mwh=carry)


def _total(label: str, start: int, end: int, periods: list[PeriodAccount], org: Organisation) -> PeriodAccount:
    """The report period: every source's lines summed over the sub-periods (coverage too)."""
    merged: dict[tuple[str, str], SourceLine] = {}
    for p in periods:
        for s in p.sources:
            key = (s.source_id, s.category)
            prev = merged.get(key)
            if prev is None:
                merged[key] = s
                continue
            cov = None if s.coverage is None and prev.coverage is None else (prev.coverage or Coverage()) + (
                s.coverage or Coverage())
            low = None if s.low_t is None else (prev.low_t or ZERO) + s.low_t  # bands add up conservatively
            high = None if s.high_t is None else (prev.high_t or ZERO) + s.high_t
            detail = _sum_detail(prev.detail, s.detail)
            merged[key] = SourceLine(s.source_id, s.site, s.kind, s.category, prev.t_co2e + s.t_co2e, cov, low, high,
                                     detail, s.method)
    pollutants: dict[str, Decimal] = {}
    for p in periods:
        for k, v in p.pollutants_kg.items():
            pollutants[k] = pollutants.get(k, ZERO) + v
    gen = sum((p.mwh_generated for p in periods), ZERO)
    tot = period_account(label, start * 1000, end * 1000, list(merged.values()), allowance_t=org.allowance_t,
                         covered_scopes=org.covered_scopes, pollutants_kg=pollutants, mwh_generated=gen,
                         mwh_bought=sum((p.mwh_bought for p in periods), ZERO))
    return replace(tot, certificates=sum(p.certificates for p in periods),
                   certificate_carry_mwh=periods[-1].certificate_carry_mwh if periods else ZERO)


def _sum_detail(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    out = dict(b)
    for k in ("co2_fuel_t", "mwh", "estimated_mwh", "quantity"):
        if k in a or k in b:
            out[k] = str(Decimal(a.get(k, "0")) + Decimal(b.get(k, "0")))
    out.pop("rel_diff", None)
    out.pop("pollutants_kg", None)
    out.pop("hours_above_limit", None)
    return out


SOLAR_METHOD = MethodRef("solar", "MEE/NBS grid emission factors; China GEC 1 per MWh",
                         "MWh from energy counters (resets, wraps, replacements never double count; gaps "
                         "estimated from power and flagged) × grid factor of the local year")
FOREST_METHOD = MethodRef("forest", "Zweifel 2016 zero growth; Chave 2014 / species allometry; IPCC 2006 Vol. 4",
                          "ΔD from dendrometer maxima, ΔCO2 = ΔB × (1+R) × CF × 44/12; uncertainty IPCC "
                          "Vol. 1 Ch. 3 Approach 1")


def _methods(org: Organisation) -> tuple[MethodRef, ...]:
    out = []
    if org.stacks:
        subst = {s.config.substitution.describe() for s in org.stacks}
        out += [MethodRef("cems", "HJ 75-2017 App. A; HJ 76-2017 (valid hour ≥ 45 min)",
                          "dry standard flow, mass = uncorrected concentration × Qsn, O2-corrected concentrations "
                          "against limits, CO2 = CO2 % × Qsn × 44.01/22.4"),
                MethodRef("substitution", "40 CFR 75 §75.33 (tiers configurable)", "; ".join(sorted(subst)))]
    if org.activity:
        out.append(MethodRef("fuel", "IPCC 2006 Vol. 2 Eq. 2.1; China's GHG accounting guidelines",
                             "CO2 = FC × NCV × CC × OF × 44/12, measured NCV/CC/OF where given"))
    if any(c.role == "generation" for c in org.counters):
        out.append(SOLAR_METHOD)
    if any(c.role == "bought" for c in org.counters):
        out.append(MethodRef("scope2", "GHG Protocol Scope 2 (location-based); MEE/NBS grid factors",
                             "MWh bought from meter counters × grid factor of the local year"))
    if org.trees:
        out.append(FOREST_METHOD)
    out.append(MethodRef("rounding", "GB/T 8170-2008", "hourly figures rounded half to even to 1 g CO2, 1 g of "
                         "pollutant, 1 mWh; totals are exact sums"))
    return tuple(out)
