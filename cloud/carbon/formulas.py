"""The formulas of carbon and emission accounting: pure functions on Decimal, each with its unit and standard.

Every function takes and returns ``decimal.Decimal`` and computes in one fixed context (28 significant
digits, round half even), so the same inputs give the same digits on every machine. Functions return the
exact result of that context; figures that are *published* (an hour's mass, a period's total, the
calculator's ``result``) are rounded once with ``round_fixed`` to the resolution the formula declares,
by GB/T 8170-2008 (round half to even). Sums are taken over figures already rounded, so they are exact.

A value outside a formula's domain (a negative flow, O2 at or above 21 %, an oxidation factor given in
per cent) raises ``CarbonInputError`` naming the input and the fix: never a silently wrong number.

This module imports only the standard library: the auditor's calculator runs without the cloud extra.
"""

from __future__ import annotations

import functools
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)

from .errors import CarbonInputError

# One context for all intermediate arithmetic: 28 significant digits, half-even, bounded exponents,
# and every exceptional condition an error rather than a NaN or an infinity.
CONTEXT = Context(prec=28, rounding=ROUND_HALF_EVEN, Emax=99_999, Emin=-99_999,
                  traps=[InvalidOperation, DivisionByZero, Overflow])

# --- constants, with where they come from ---------------------------------------------------------
T0_K = Decimal(273)  # HJ 75-2017 App. A: standard temperature 273 K (the standard writes 273, not 273.15)
P0_PA = Decimal(101325)  # HJ 75-2017 App. A: standard pressure 101,325 Pa
O2_AIR_PCT = Decimal(21)  # HJ 75-2017 App. A reference-O2 correction: O2 in air taken as 21 %
MOLAR_VOLUME_L = Decimal("22.4")  # HJ 75-2017 App. A: ppm -> mg/m3 uses M/22.4 (L/mol at 273 K, 101.325 kPa)
M_CO2 = Decimal("44.01")  # g/mol (IUPAC atomic weights, C 12.011 + 2 x O 15.999)
M_NO = Decimal("30.006")  # g/mol, as HJ 75-2017 App. A
M_NO2 = Decimal("46.005")  # g/mol, as HJ 75-2017 App. A
C_TO_CO2 = Decimal(44) / Decimal(12)  # IPCC 2006 Vol. 2 Ch. 1 and China's GHG guidelines: t C -> t CO2 (44/12)
F11_K = Decimal("5.7E-7")  # 40 CFR 75 App. F Eq. F-11: (short ton CO2/h) per (% CO2 x scfh)
SHORT_TON_T = Decimal("0.90718474")  # one US short ton in tonnes (2,000 lb x 0.45359237 kg)
HUNDRED = Decimal(100)
MILLION = Decimal(1_000_000)
THOUSAND = Decimal(1000)


def round_fixed(value: Decimal, decimals: int) -> Decimal:
    """Round a published figure to ``decimals`` places, half to even (GB/T 8170-2008 数值修约规则)."""
    with localcontext(CONTEXT):
        return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_EVEN)


def _check(name: str, value: Decimal, *, lo: Decimal | int | None = None, hi: Decimal | int | None = None,
           lo_open: bool = False, hi_open: bool = False, unit: str = "", fix: str = "") -> None:
    if not value.is_finite():
        raise CarbonInputError(name, f"{value} is not a finite number", "give a number")
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "" if lo is None else ("(" if lo_open else "[") + str(lo)
        right = "" if hi is None else str(hi) + (")" if hi_open else "]")
        span = f"{left or '(-inf'}, {right or 'inf)'}"
        raise CarbonInputError(name, f"{value} {unit}".rstrip() + f" is outside {span}",
                               fix or f"give {name} in {unit or 'the stated unit'} within {span}")


# --- CEMS: HJ 75-2017 Appendix A --------------------------------------------------------------------

def std_dry_flow(q_actual_m3h: Decimal, t_c: Decimal, p_static_pa: Decimal, p_atm_pa: Decimal,
                 moisture_pct: Decimal) -> Decimal:
    """Flue-gas flow at standard conditions, dry (m³/h): HJ 75-2017 App. A.

    Qsn = Qs · 273/(273 + ts) · (Ba + Ps)/101325 · (1 − Xsw), with Qs the actual (wet) flow in m³/h,
    ts the flue temperature in °C, Ba the barometric and Ps the static pressure in Pa, Xsw the moisture
    as a fraction.
    """
    _check("q_actual_m3h", q_actual_m3h, lo=0, unit="m³/h")
    _check("t_c", t_c, lo=-273, lo_open=True, hi=2000, unit="°C")
    _check("p_atm_pa", p_atm_pa, lo=50_000, hi=120_000, unit="Pa",
           fix="give the barometric pressure in Pa (about 101325 at sea level; 101.3 kPa is 101300 Pa)")
    _check("p_static_pa", p_static_pa, lo=-50_000, hi=50_000, unit="Pa",
           fix="give the static (gauge) pressure in Pa relative to the atmosphere, not the absolute pressure")
    _check("moisture_pct", moisture_pct, lo=0, hi=100, hi_open=True, unit="%")
    with localcontext(CONTEXT):
        return (q_actual_m3h * T0_K / (T0_K + t_c) * (p_atm_pa + p_static_pa) / P0_PA
                * (1 - moisture_pct / HUNDRED))


def wet_to_dry(conc_wet: Decimal, moisture_pct: Decimal) -> Decimal:
    """A concentration measured wet, on a dry basis (same unit): HJ 75-2017 App. A, Cdry = Cwet/(1 − Xsw)."""
    _check("conc_wet", conc_wet, lo=0)
    _check("moisture_pct", moisture_pct, lo=0, hi=100, hi_open=True, unit="%")
    with localcontext(CONTEXT):
        return conc_wet / (1 - moisture_pct / HUNDRED)


def ppm_to_mg_m3(ppm: Decimal, molar_mass_g_mol: Decimal) -> Decimal:
    """Volume fraction (ppm, µmol/mol) to mass concentration (mg/m³ at 273 K, 101.325 kPa): HJ 75-2017 App. A,
    C = M/22.4 · Cv."""
    _check("ppm", ppm, lo=0, unit="ppm")
    _check("molar_mass_g_mol", molar_mass_g_mol, lo=0, lo_open=True, hi=1000, unit="g/mol")
    with localcontext(CONTEXT):
        return molar_mass_g_mol / MOLAR_VOLUME_L * ppm


def nox_as_no2(no_mg_m3: Decimal, no2_mg_m3: Decimal) -> Decimal:
    """NOx reported as NO2 (mg/m³): HJ 75-2017 App. A, C_NOx = C_NO · 46/30 + C_NO2."""
    _check("no_mg_m3", no_mg_m3, lo=0, unit="mg/m³")
    _check("no2_mg_m3", no2_mg_m3, lo=0, unit="mg/m³")
    with localcontext(CONTEXT):
        return no_mg_m3 * Decimal(46) / Decimal(30) + no2_mg_m3


def o2_correction(conc_mg_m3: Decimal, o2_pct: Decimal, o2_ref_pct: Decimal) -> Decimal:
    """Concentration at the reference O2 of the source type (mg/m³), for comparison with limits only:
    HJ 75-2017 App. A, C = C' · (21 − O2ref)/(21 − O2meas); O2ref per GB 13223-2011 (coal boilers 6 %,
    gas turbines 15 %). Mass is never computed from a corrected concentration."""
    _check("conc_mg_m3", conc_mg_m3, lo=0, unit="mg/m³")
    _check("o2_pct", o2_pct, lo=0, hi=O2_AIR_PCT, hi_open=True, unit="%",
           fix="O2 at or above 21 % is ambient air (probe or maintenance): flag the hour invalid instead")
    _check("o2_ref_pct", o2_ref_pct, lo=0, hi=O2_AIR_PCT, hi_open=True, unit="%")
    with localcontext(CONTEXT):
        return conc_mg_m3 * (O2_AIR_PCT - o2_ref_pct) / (O2_AIR_PCT - o2_pct)


def mass_rate(conc_mg_m3: Decimal, q_std_dry_m3h: Decimal) -> Decimal:
    """Pollutant mass emission rate (kg/h) from the *uncorrected* dry concentration and the dry standard flow:
    HJ 75-2017 App. A, G = C · Qsn · 10⁻⁶."""
    _check("conc_mg_m3", conc_mg_m3, lo=0, unit="mg/m³")
    _check("q_std_dry_m3h", q_std_dry_m3h, lo=0, unit="m³/h")
    with localcontext(CONTEXT):
        return conc_mg_m3 * q_std_dry_m3h / MILLION


def co2_cems(co2_pct: Decimal, q_std_dry_m3h: Decimal, hours: Decimal) -> Decimal:
    """CO2 emitted (t) by measurement: dry CO2 volume share × dry standard flow × hours × density.

    Density M/22.4 = 44.01/22.4 kg/m³ at 273 K, 101.325 kPa (HJ 75-2017 App. A conversion);
    E = C%/100 · Qsn · h · 44.01/22.4 / 1000. CO2 and flow must both be on a dry basis.
    """
    _check("co2_pct", co2_pct, lo=0, hi=100, unit="%")
    _check("q_std_dry_m3h", q_std_dry_m3h, lo=0, unit="m³/h")
    _check("hours", hours, lo=0, hi=876_000, unit="h")
    with localcontext(CONTEXT):
        return co2_pct / HUNDRED * q_std_dry_m3h * hours * M_CO2 / MOLAR_VOLUME_L / THOUSAND


def co2_fuel(fuel_t: Decimal, ncv_gj_t: Decimal, cc_tc_gj: Decimal, oxidation: Decimal) -> Decimal:
    """CO2 emitted (t) by calculation from fuel: FC · NCV · CC · OF · 44/12.

    IPCC 2006 Vol. 2 Ch. 2 Eq. 2.1 (with EF = CC · OF · 44/12) and China's GHG accounting guidelines for
    enterprises (fossil-fuel combustion: activity data = consumption × NCV; EF = CC × OF × 44/12).
    fuel in t (or the unit the NCV is per, e.g. 10⁴ Nm³ for gas), NCV in GJ per that unit, CC in t C/GJ,
    OF a fraction 0-1.
    """
    _check("fuel_t", fuel_t, lo=0, unit="t")
    _check("ncv_gj_t", ncv_gj_t, lo=0, lo_open=True, hi=1000, unit="GJ/t")
    _check("cc_tc_gj", cc_tc_gj, lo=0, lo_open=True, hi=Decimal("0.2"), unit="t C/GJ",
           fix="give the carbon content in t C/GJ (26.18 t C/TJ is 0.02618 t C/GJ)")
    _check("oxidation", oxidation, lo=0, lo_open=True, hi=1, unit="(fraction)",
           fix="give the oxidation factor as a fraction: 98 % is 0.98")
    with localcontext(CONTEXT):
        return fuel_t * ncv_gj_t * cc_tc_gj * oxidation * C_TO_CO2


def co2_part75(co2_pct: Decimal, q_scfh: Decimal) -> Decimal:
    """CO2 mass rate (short ton/h) from CO2 % (wet) and stack flow (scfh, wet): 40 CFR 75 App. F Eq. F-11,
    E = 5.7 × 10⁻⁷ · C · Q. For tonnes multiply by 0.90718474 (``short_tons_to_t``)."""
    _check("co2_pct", co2_pct, lo=0, hi=100, unit="%")
    _check("q_scfh", q_scfh, lo=0, unit="scfh")
    with localcontext(CONTEXT):
        return F11_K * co2_pct * q_scfh


def short_tons_to_t(short_tons: Decimal) -> Decimal:
    """US short tons to tonnes (exact definition: 2,000 lb of 0.45359237 kg)."""
    with localcontext(CONTEXT):
        return short_tons * SHORT_TON_T


def relative_difference(a: Decimal, b: Decimal) -> Decimal | None:
    """(a − b)/b as a fraction; None when b is zero (the difference is undefined, not zero)."""
    if b == 0:
        return None
    with localcontext(CONTEXT):
        return (a - b) / b


# --- electricity -------------------------------------------------------------------------------------

def grid_co2(mwh: Decimal, factor_t_mwh: Decimal) -> Decimal:
    """CO2 (t) for electricity (MWh) at a grid emission factor (t CO2/MWh): avoided emissions of generation,
    or scope-2 emissions of electricity bought (China's MEE/NBS average grid factors; GHG Protocol Scope 2
    location-based method)."""
    _check("mwh", mwh, lo=0, unit="MWh")
    _check("factor_t_mwh", factor_t_mwh, lo=0, hi=2, unit="t CO2/MWh",
           fix="give the factor in t CO2/MWh (= kg CO2/kWh); 0.5366 for China 2022")
    with localcontext(CONTEXT):
        return mwh * factor_t_mwh


# --- forest sinks ------------------------------------------------------------------------------------

def biomass_kg(dbh_cm: Decimal, a: Decimal, b: Decimal, height_m: Decimal | None = None) -> Decimal:
    """Tree biomass (kg) from an allometric equation: a·D^b, or a·(D²H)^b when a height is given.

    D in cm, H in m (the forms of China's LY/T tree biomass models and of Chave et al. 2014 Eq. 4,
    AGB = 0.0673 · (ρD²H)^0.976).
    """
    _check("dbh_cm", dbh_cm, lo=0, lo_open=True, hi=500, unit="cm")
    _check("a", a, lo=0, lo_open=True, hi=1000)
    _check("b", b, lo=0, lo_open=True, hi=5)
    if height_m is not None:
        _check("height_m", height_m, lo=0, lo_open=True, hi=150, unit="m")
    return _biomass_kg(dbh_cm, a, b, height_m)


@functools.lru_cache(maxsize=4096)
def _biomass_kg(dbh_cm: Decimal, a: Decimal, b: Decimal, height_m: Decimal | None) -> Decimal:
    """The power (a fractional exponent: the slowest step of a tree-hour) once per diameter: an hour's end
    diameter is the next hour's start, and most hours add no new maximum."""
    with localcontext(CONTEXT):
        if height_m is None:
            return a * dbh_cm ** b
        return a * (dbh_cm * dbh_cm * height_m) ** b


def dbh_growth_band(delta_circumference_um: Decimal) -> Decimal:
    """Diameter growth (cm) from a band (circumference) dendrometer: ΔD = ΔC/π (facts §5)."""
    with localcontext(CONTEXT):
        return delta_circumference_um / PI / Decimal(10_000)


def dbh_growth_point(delta_radius_um: Decimal) -> Decimal:
    """Diameter growth (cm) from a point (radius) dendrometer: ΔD ≈ 2Δr (facts §5)."""
    with localcontext(CONTEXT):
        return 2 * delta_radius_um / Decimal(10_000)


PI = Decimal("3.141592653589793238462643383")


def tree_co2(dbh_cm_start: Decimal, dbh_cm_end: Decimal, a: Decimal, b: Decimal, root_shoot: Decimal,
             carbon_fraction: Decimal, height_m: Decimal | None = None) -> Decimal:
    """CO2 taken up by one tree's growth (t CO2e): [B(D₁) − B(D₀)] · (1 + R) · CF · 44/12 / 1000.

    B from ``biomass_kg`` (kg); R the root-to-shoot ratio; CF the carbon fraction of dry matter (IPCC 2006
    Vol. 4 default 0.47). A diameter that shrank is not growth: it raises an error here, and the forest
    method flags it instead of counting it as an emission.
    """
    _check("dbh_cm_start", dbh_cm_start, lo=0, lo_open=True, hi=500, unit="cm")
    _check("dbh_cm_end", dbh_cm_end, lo=0, lo_open=True, hi=500, unit="cm")
    if dbh_cm_end < dbh_cm_start:
        raise CarbonInputError("dbh_cm_end", f"{dbh_cm_end} cm is below dbh_cm_start {dbh_cm_start} cm",
                               "shrinkage is not growth and never an emission: give the end diameter at "
                               "or above the start (the zero-growth method counts only new maxima)")
    _check("root_shoot", root_shoot, lo=0, hi=5, unit="(ratio)")
    _check("carbon_fraction", carbon_fraction, lo=0, lo_open=True, hi=1, unit="(fraction)",
           fix="give the carbon fraction of dry matter as a fraction: 47 % is 0.47")
    with localcontext(CONTEXT):
        grown = biomass_kg(dbh_cm_end, a, b, height_m) - biomass_kg(dbh_cm_start, a, b, height_m)
        return grown * (1 + root_shoot) * carbon_fraction * C_TO_CO2 / THOUSAND
