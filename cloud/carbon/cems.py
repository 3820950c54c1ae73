"""CEMS stacks, hour by hour: dry standard flow, corrected concentrations, mass, CO2 two ways.

Inputs are the stack's hourly means with their validity (the rollups' HJ 76 verdict), per parameter.
Steps, in this order, all pure and deterministic:

1. units to the formulas' units (``normalise``): a unit the method does not know is an error naming the
   point and the units it accepts;
2. invalid and missing hours substituted per parameter (``substitution``), marked;
3. per hour: Qsn (HJ 75 App. A), mass per pollutant from the *uncorrected* dry concentration × Qsn,
   the concentration at the source type's reference O2 for comparison with its limit, CO2 by
   measurement (CO2 % × Qsn × 44.01/22.4) and, where the hour has a fuel feed, by calculation
   (fuel × NCV × CC × OF × 44/12);
4. per period: totals of the rounded hourly figures, coverage (valid, substituted, missing hours),
   hours above a limit, and the relative difference of measured and calculated CO2.

Rounding (GB/T 8170-2008, half to even), once per hour: Qsn to 0.001 m³/h, pollutant mass to 0.001 kg
(1 g), CO2 to 0.000001 t (1 g), corrected concentrations to 0.001 mg/m³. Totals are exact sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Literal

from . import formulas as fm
from .errors import CarbonInputError
from .factors import FactorRef, FactorSet, Fuel
from .substitution import Coverage, HourIn, HourOut, SubstitutionPolicy, substitute

HOUR_S = 3600
FLUE = ("flow", "temp", "p_static", "moisture", "o2")  # needed for every hour's flow and correction
# Units each parameter accepts, with the factor to the formula's unit.
UNITS: dict[str, dict[str, Decimal]] = {
    "flow": {"m³/h": Decimal(1), "m3/h": Decimal(1), "m³/s": Decimal(3600), "m3/s": Decimal(3600)},
    "temp": {"°C": Decimal(1), "℃": Decimal(1), "degC": Decimal(1)},
    "p_static": {"Pa": Decimal(1), "kPa": Decimal(1000), "hPa": Decimal(100)},
    "p_atm": {"Pa": Decimal(1), "kPa": Decimal(1000), "hPa": Decimal(100)},
    "moisture": {"%": Decimal(1)},
    "o2": {"%": Decimal(1)},
    "co2": {"%": Decimal(1)},
    "fuel": {"t": Decimal(1), "t/h": Decimal(1), "kg": Decimal("0.001"), "kg/h": Decimal("0.001")},
}
CONC_UNITS = {"mg/m³": Decimal(1), "mg/m3": Decimal(1), "mg/Nm³": Decimal(1), "mg/Nm3": Decimal(1)}


def normalise(param: str, value: Decimal, unit: str, *, pressure_kind: str = "static",
              p_atm_pa: Decimal = fm.P0_PA) -> Decimal:
    """One hourly mean in the unit the formulas take. Absolute flue pressure becomes static (gauge)."""
    table = UNITS.get(param, CONC_UNITS)
    factor = table.get(unit)
    if factor is None:
        raise CarbonInputError(f"{param} [{unit}]", "a unit this method does not take",
                               f"send {param} in one of {', '.join(table)} or convert it in the point map")
    with localcontext(fm.CONTEXT):
        v = value * factor
        if param == "p_static" and pressure_kind == "absolute":
            v -= p_atm_pa
        return v


@dataclass(frozen=True)
class StackConfig:
    stack_id: str
    source_type: str = "coal_boiler"
    o2_ref_pct: Decimal | None = None  # None: from the reference-O2 table for the source type
    pollutants: tuple[str, ...] = ("so2", "nox", "dust")
    limit_regime: str = "gb13223"
    p_atm_pa: Decimal = fm.P0_PA  # used when the stack has no barometer point
    fuel: str | None = None  # fuel code, when hours carry a fuel feed
    substitution: SubstitutionPolicy = field(default_factory=SubstitutionPolicy)


@dataclass(frozen=True)
class HourValue:
    """One parameter's hourly mean (already in the formula's unit) and whether the hour is valid."""

    value: Decimal | None
    valid: bool
    readings: int = 0


@dataclass(frozen=True)
class StackHour:
    hour: int
    status: Literal["valid", "substituted", "missing"]
    substituted: tuple[str, ...]  # parameters whose value was substituted
    missing: tuple[str, ...]  # parameters with no value at all (then no figure for the hour)
    q_std_dry_m3h: Decimal | None
    mass_kg: dict[str, Decimal]
    corrected_mg_m3: dict[str, Decimal]
    above_limit: tuple[str, ...]
    co2_measured_t: Decimal | None
    co2_fuel_t: Decimal | None
    fuel_t: Decimal | None
    notes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StackPeriod:
    stack_id: str
    start: int
    end: int
    coverage: Coverage
    mass_kg: dict[str, Decimal]
    hours_above_limit: dict[str, int]
    co2_measured_t: Decimal
    co2_fuel_t: Decimal | None  # None when no hour had a fuel feed
    co2_relative_difference: Decimal | None  # (measured − fuel)/fuel over hours having both
    fuel_t: Decimal | None
    factors: tuple[FactorRef, ...]
    method: str


def _series(hours: Mapping[int, Mapping[str, HourValue]], param: str) -> list[HourIn]:
    return [HourIn(h, row[param].value, row[param].valid) for h, row in sorted(hours.items()) if param in row]


def account_stack(cfg: StackConfig, hours: Mapping[int, Mapping[str, HourValue]], *, start: int, end: int,
                  factors: FactorSet | None = None) -> tuple[list[StackHour], StackPeriod]:
    """Every hour of [start, end) for one stack, and the period's totals.

    ``hours`` maps an hour start to its parameters (``flow`` m³/h actual, ``temp`` °C, ``p_static`` Pa,
    optional ``p_atm`` Pa, ``moisture`` %, ``o2`` %, ``co2`` % dry, each pollutant mg/m³ dry, optional
    ``fuel`` t). It may hold hours before ``start`` for the substitution look-back.
    """
    fs = factors or FactorSet.default()
    o2_ref = cfg.o2_ref_pct
    used: list[FactorRef] = []
    if o2_ref is None:
        ref = fs.o2_ref(cfg.source_type)
        o2_ref = ref.value
        used.append(ref)
    limits = {p: fs.limit(cfg.source_type, p, cfg.limit_regime) for p in cfg.pollutants}
    used += [r for r in limits.values() if r is not None]
    fuel: Fuel | None = fs.fuel(cfg.fuel) if cfg.fuel else None
    if fuel is not None:
        used += [fuel.ncv, fuel.cc, fuel.oxidation]

    params = [*FLUE, "co2", *cfg.pollutants]
    filled: dict[str, list[HourOut]] = {p: substitute(_series(hours, p), cfg.substitution, start=start, end=end)
                                        for p in params}
    has_p_atm = any("p_atm" in row for row in hours.values())
    p_atm = (substitute(_series(hours, "p_atm"), cfg.substitution, start=start, end=end) if has_p_atm else None)

    out: list[StackHour] = []
    for i, t in enumerate(range(start, end, HOUR_S)):
        cell = {p: filled[p][i] for p in params}
        notes = {p: c.note for p, c in cell.items() if c.status == "substituted"}
        subst = tuple(p for p, c in cell.items() if c.status == "substituted")
        missing = [p for p in (*FLUE, "co2") if cell[p].value is None]
        fuel_cell = hours.get(t, {}).get("fuel")
        fuel_t = fuel_cell.value if fuel_cell is not None and fuel_cell.valid else None
        co2_fuel = None
        if fuel is not None and fuel_t is not None:
            co2_fuel = fm.round_fixed(fm.co2_fuel(fuel_t, fuel.ncv.value, fuel.cc.value, fuel.oxidation.value), 6)
        if any(cell[p].value is None for p in FLUE):
            out.append(StackHour(t, "missing", subst, tuple(missing), None, {}, {}, (), None, co2_fuel, fuel_t,
                                 notes))
            continue
        v = {p: c.value for p, c in cell.items()}
        atm = cfg.p_atm_pa
        if p_atm is not None and p_atm[i].value is not None:
            atm = p_atm[i].value  # type: ignore[assignment]
        try:
            q = fm.round_fixed(fm.std_dry_flow(v["flow"], v["temp"], v["p_static"], atm, v["moisture"]), 3)  # type: ignore[arg-type]
            o2 = v["o2"]
            mass: dict[str, Decimal] = {}
            corrected: dict[str, Decimal] = {}
            above = []
            for p in cfg.pollutants:
                c = v[p]
                if c is None:
                    missing.append(p)
                    continue
                mass[p] = fm.round_fixed(fm.mass_rate(c, q), 3)  # kg in this hour (rate × 1 h)
                corrected[p] = fm.round_fixed(fm.o2_correction(c, o2, o2_ref), 3)  # type: ignore[arg-type]
                lim = limits[p]
                if lim is not None and corrected[p] > lim.value:
                    above.append(p)
            co2 = v["co2"]
            co2_meas = fm.round_fixed(fm.co2_cems(co2, q, Decimal(1)), 6) if co2 is not None else None
        except CarbonInputError as exc:
            raise CarbonInputError(f"stack {cfg.stack_id} hour {t}: {exc.input}", exc.problem, exc.fix) from None
        status: Literal["valid", "substituted", "missing"] = "substituted" if subst else "valid"
        if co2_meas is None:
            status = "missing"
        out.append(StackHour(t, status, subst, tuple(missing), q, mass, corrected, tuple(above), co2_meas,
                             co2_fuel, fuel_t, notes))
    return out, summarise(cfg, out, start=start, end=end, factors=tuple(used))


def summarise(cfg: StackConfig, hours: Sequence[StackHour], *, start: int, end: int,
              factors: tuple[FactorRef, ...] = ()) -> StackPeriod:
    """A period's totals from its hours (exact sums of hourly figures already rounded)."""
    cov = Coverage()
    mass = dict.fromkeys(cfg.pollutants, Decimal(0))
    above = dict.fromkeys(cfg.pollutants, 0)
    co2_meas = Decimal(0)
    co2_fuel: Decimal | None = None
    fuel_t: Decimal | None = None
    both_meas, both_fuel = Decimal(0), Decimal(0)
    with localcontext(fm.CONTEXT):
        for h in hours:
            if not start <= h.hour < end:
                continue
            cov = cov.add(h.status)
            for p, m in h.mass_kg.items():
                mass[p] += m
            for p in h.above_limit:
                above[p] += 1
            if h.co2_measured_t is not None:
                co2_meas += h.co2_measured_t
            if h.co2_fuel_t is not None:
                co2_fuel = (co2_fuel or Decimal(0)) + h.co2_fuel_t
                fuel_t = (fuel_t or Decimal(0)) + (h.fuel_t or 0)
                if h.co2_measured_t is not None:
                    both_meas += h.co2_measured_t
                    both_fuel += h.co2_fuel_t
        rel = fm.relative_difference(both_meas, both_fuel)
    method = (f"HJ 75-2017 App. A (Qsn, O2 correction, mass), CO2 by CEMS measurement"
              f"{' and by fuel calculation (IPCC 2006 Eq. 2.1)' if co2_fuel is not None else ''}; "
              f"substitution {cfg.substitution.describe()}")
    return StackPeriod(cfg.stack_id, start, end, cov, mass, above, co2_meas, co2_fuel,
                       None if rel is None else fm.round_fixed(rel, 6), fuel_t, factors, method)
