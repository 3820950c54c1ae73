"""The auditor's calculator: every formula by name, with keys, units, resolution and standard.

``carbonlink carbon formula --list`` and ``carbonlink carbon formula NAME key=value … --json`` call
``evaluate``. The names and keys of the first eight entries are fixed by issue 13 so that auditors'
scripts can rely on them; do not rename them. Inputs are parsed as Decimal from their text (no float on
the way), the result is rounded once to the formula's resolution (GB/T 8170-2008, half to even) and the
unrounded value is printed next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from . import formulas as f
from .errors import CarbonInputError

FORMULA_SET_VERSION = "2025.1"  # recorded with every figure; bump when a formula's arithmetic changes
MAX_INPUT_CHARS = 40


@dataclass(frozen=True)
class Param:
    name: str
    unit: str
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Formula:
    name: str
    params: tuple[Param, ...]
    unit: str
    decimals: int
    standard: str
    equation: str
    fn: Callable[..., tuple[Decimal, dict[str, Any]]]
    version: int = 1

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "unit": self.unit, "decimals": self.decimals,
                "standard": self.standard, "equation": self.equation,
                "keys": [{"name": p.name, "unit": p.unit, "doc": p.doc, "optional": p.optional}
                         for p in self.params]}


def _plain(fn: Callable[..., Decimal]) -> Callable[..., tuple[Decimal, dict[str, Any]]]:
    return lambda **kw: (fn(**kw), {})


def _grid_avoided(mwh: Decimal, year: Decimal, grid: str = "CN", kind: str = "average") -> tuple[Decimal, dict]:
    from .factors import FactorSet  # standard library only; loaded when this formula runs

    if year != year.to_integral_value():
        raise CarbonInputError("year", f"{year} is not a whole year", "give the calendar year, e.g. year=2023")
    ref = FactorSet.default().grid_factor(int(year), grid, kind)
    return f.grid_co2(mwh, ref.value), {"factor": ref.as_dict()}


P = Param
FORMULAS: dict[str, Formula] = {x.name: x for x in [
    Formula("std_dry_flow", (P("q_actual_m3h", "m³/h", "actual (wet) flue-gas flow"),
                             P("t_c", "°C", "flue-gas temperature"),
                             P("p_static_pa", "Pa", "static (gauge) pressure in the duct"),
                             P("p_atm_pa", "Pa", "barometric pressure"),
                             P("moisture_pct", "%", "water vapour share of the flue gas")),
            "m³/h", 3, "HJ 75-2017 App. A",
            "Qsn = Qs·273/(273+ts)·(Ba+Ps)/101325·(1−Xsw)", _plain(f.std_dry_flow)),
    Formula("o2_correction", (P("conc_mg_m3", "mg/m³", "measured dry concentration"),
                              P("o2_pct", "%", "measured O2, dry"),
                              P("o2_ref_pct", "%", "reference O2 (GB 13223: coal 6, gas turbine 15)")),
            "mg/m³", 3, "HJ 75-2017 App. A; reference O2 per GB 13223-2011",
            "C = C'·(21−O2ref)/(21−O2meas)", _plain(f.o2_correction)),
    Formula("mass_rate", (P("conc_mg_m3", "mg/m³", "uncorrected dry concentration"),
                          P("q_std_dry_m3h", "m³/h", "dry standard flow")),
            "kg/h", 6, "HJ 75-2017 App. A", "G = C·Qsn·10⁻⁶", _plain(f.mass_rate)),
    Formula("co2_cems", (P("co2_pct", "%", "CO2, dry"), P("q_std_dry_m3h", "m³/h", "dry standard flow"),
                         P("hours", "h", "duration")),
            "t", 6, "HJ 75-2017 App. A (M/22.4 conversion), CEMS measurement method",
            "E = C/100·Qsn·h·44.01/22.4/1000", _plain(f.co2_cems)),
    Formula("co2_fuel", (P("fuel_t", "t", "fuel consumed (or 10⁴ Nm³ for gas, matching the NCV)"),
                         P("ncv_gj_t", "GJ/t", "net calorific value"),
                         P("cc_tc_gj", "t C/GJ", "carbon content per GJ"),
                         P("oxidation", "fraction", "oxidation factor 0-1")),
            "t", 6, "IPCC 2006 GL Vol. 2 Ch. 2 Eq. 2.1; China's GHG accounting and reporting guidelines",
            "E = FC·NCV·CC·OF·44/12", _plain(f.co2_fuel)),
    Formula("co2_part75", (P("co2_pct", "%", "CO2, wet"), P("q_scfh", "scfh", "stack flow, wet")),
            "short ton/h", 6, "40 CFR 75 App. F Eq. F-11", "E = 5.7×10⁻⁷·C·Q", _plain(f.co2_part75)),
    Formula("grid_avoided", (P("mwh", "MWh", "electricity generated (or bought, for scope 2)"),
                             P("year", "year", "calendar year of the electricity"),
                             P("grid", "code", "grid in the factor table (default CN)", optional=True),
                             P("kind", "code", "factor kind (default average)", optional=True)),
            "t", 6, "China MEE/NBS average grid emission factors (factor table grid.toml)",
            "E = MWh·EF(grid, year)", _grid_avoided),
    Formula("tree_co2", (P("dbh_cm_start", "cm", "diameter at breast height at the start"),
                         P("dbh_cm_end", "cm", "diameter at breast height at the end"),
                         P("a", "-", "allometric coefficient a (biomass in kg)"),
                         P("b", "-", "allometric exponent b"),
                         P("root_shoot", "ratio", "root-to-shoot ratio R"),
                         P("carbon_fraction", "fraction", "carbon fraction of dry matter (IPCC default 0.47)"),
                         P("height_m", "m", "tree height; with it B = a·(D²H)^b", optional=True)),
            "t", 6, "IPCC 2006 GL Vol. 4 (C = B·(1+R)·CF, CO2 = C·44/12); allometry a·D^b or a·(D²H)^b",
            "E = [B(D1)−B(D0)]·(1+R)·CF·44/12/1000", _plain(f.tree_co2)),
    Formula("wet_to_dry", (P("conc_wet", "any", "concentration on a wet basis"),
                           P("moisture_pct", "%", "water vapour share")),
            "same as conc_wet", 6, "HJ 75-2017 App. A", "Cdry = Cwet/(1−Xsw)", _plain(f.wet_to_dry)),
    Formula("ppm_to_mg_m3", (P("ppm", "ppm", "volume fraction"),
                             P("molar_mass_g_mol", "g/mol", "SO2 64.06, NO 30.006")),
            "mg/m³", 6, "HJ 75-2017 App. A", "C = M/22.4·Cv", _plain(f.ppm_to_mg_m3)),
    Formula("nox_as_no2", (P("no_mg_m3", "mg/m³", "NO"), P("no2_mg_m3", "mg/m³", "NO2")),
            "mg/m³", 6, "HJ 75-2017 App. A", "C = C_NO·46/30 + C_NO2", _plain(f.nox_as_no2)),
]}


def _number(key: str, text: str) -> Decimal:
    if len(text) > MAX_INPUT_CHARS:
        raise CarbonInputError(key, f"{len(text)} characters is too long for a number", "give a plain decimal")
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise CarbonInputError(key, f"{text!r} is not a number",
                               f"give {key}=<decimal number>, e.g. {key}=12.5") from None
    if not d.is_finite() or abs(d.adjusted()) > 30:
        raise CarbonInputError(key, f"{text!r} is not a finite number of sensible size", "give a plain decimal")
    return d


def evaluate(name: str, args: Mapping[str, str]) -> dict[str, Any]:
    """Run formula ``name`` on text arguments; the answer a calculator prints (``--json``)."""
    formula = FORMULAS.get(name)
    if formula is None:
        raise CarbonInputError(f"formula {name!r}", "unknown", f"use one of {', '.join(FORMULAS)} (--list)")
    known = {p.name: p for p in formula.params}
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise CarbonInputError(", ".join(unknown), f"not a key of {name}",
                               f"{name} takes {', '.join(p.name for p in formula.params)}")
    missing = [p.name for p in formula.params if not p.optional and p.name not in args]
    if missing:
        raise CarbonInputError(", ".join(missing), "missing", "give every key as key=value: " +
                               " ".join(f"{p.name}=…" for p in formula.params if not p.optional))
    kwargs: dict[str, Any] = {}
    for key, text in args.items():
        kwargs[key] = text.strip() if known[key].unit == "code" else _number(key, text)
    value, extra = formula.fn(**kwargs)
    return {"formula": name, "version": f"{FORMULA_SET_VERSION}/{formula.version}",
            "inputs": {k: str(v) for k, v in kwargs.items()},
            "result": str(f.round_fixed(value, formula.decimals)), "unit": formula.unit,
            "unrounded": str(value), "rounding": f"{formula.decimals} decimals, half to even (GB/T 8170-2008)",
            "standard": formula.standard, "equation": formula.equation, **extra}


def parse_pairs(pairs: list[str]) -> dict[str, str]:
    """``key=value`` words from the command line; each key once."""
    out: dict[str, str] = {}
    for word in pairs:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise CarbonInputError(word, "not key=value", "write each input as key=value, e.g. t_c=135")
        if key in out:
            raise CarbonInputError(key, "given twice", "give each key once")
        out[key] = value
    return out
