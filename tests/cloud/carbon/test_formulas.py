"""The formulas and the auditor's calculator: values worked by hand, domains, rounding, names and keys."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon import formulas as f
from carbonlink.cloud.carbon.calculator import FORMULAS, evaluate, parse_pairs
from carbonlink.cloud.carbon.errors import CarbonInputError

# Names and keys fixed by issue 13 for auditors' scripts: changing one breaks them.
ISSUE_KEYS = {
    "std_dry_flow": ["q_actual_m3h", "t_c", "p_static_pa", "p_atm_pa", "moisture_pct"],
    "o2_correction": ["conc_mg_m3", "o2_pct", "o2_ref_pct"],
    "mass_rate": ["conc_mg_m3", "q_std_dry_m3h"],
    "co2_cems": ["co2_pct", "q_std_dry_m3h", "hours"],
    "co2_fuel": ["fuel_t", "ncv_gj_t", "cc_tc_gj", "oxidation"],
    "co2_part75": ["co2_pct", "q_scfh"],
    "grid_avoided": ["mwh", "year"],
    "tree_co2": ["dbh_cm_start", "dbh_cm_end", "a", "b", "root_shoot", "carbon_fraction"],
}


def test_the_issue_names_and_keys_are_there_exactly() -> None:
    for name, keys in ISSUE_KEYS.items():
        required = [p.name for p in FORMULAS[name].params if not p.optional]
        assert required == keys, name
        assert FORMULAS[name].standard and FORMULAS[name].unit


def test_std_dry_flow_follows_hj75() -> None:
    # 432,000 m³/h at 60 °C, −500 Pa static, 101,325 Pa barometric, 9.5 % moisture:
    # 432000 · 273/333 · 100825/101325 · 0.905 (worked in exact fractions below)
    want = D(432000) * D(273) / D(333) * D(100825) / D(101325) * D("0.905")
    got = f.std_dry_flow(D(432000), D(60), D(-500), D(101325), D("9.5"))
    assert abs(got - want) < D("1e-18")
    assert evaluate("std_dry_flow", {"q_actual_m3h": "432000", "t_c": "60", "p_static_pa": "-500",
                                     "p_atm_pa": "101325", "moisture_pct": "9.5"})["result"] == "318935.130"


@pytest.mark.parametrize("name, args, result, unit", [
    ("o2_correction", {"conc_mg_m3": "100", "o2_pct": "9", "o2_ref_pct": "6"}, "125.000", "mg/m³"),  # ·15/12
    ("mass_rate", {"conc_mg_m3": "100", "q_std_dry_m3h": "1000000"}, "100.000000", "kg/h"),
    # 10 % of 22,400 m³ is 2,240 m³ = 100 kmol of CO2 = 4,401 kg
    ("co2_cems", {"co2_pct": "10", "q_std_dry_m3h": "22400", "hours": "1"}, "4.401000", "t"),
    ("co2_fuel", {"fuel_t": "1", "ncv_gj_t": "20", "cc_tc_gj": "0.03", "oxidation": "1"}, "2.200000", "t"),
    ("co2_part75", {"co2_pct": "10", "q_scfh": "1000000"}, "5.700000", "short ton/h"),
    ("grid_avoided", {"mwh": "100", "year": "2022"}, "53.660000", "t"),
    ("grid_avoided", {"mwh": "100", "year": "2023"}, "53.060000", "t"),
    ("nox_as_no2", {"no_mg_m3": "30", "no2_mg_m3": "4"}, "50.000000", "mg/m³"),
    ("wet_to_dry", {"conc_wet": "90", "moisture_pct": "10"}, "100.000000", "same as conc_wet"),
])
def test_values_worked_by_hand(name: str, args: dict[str, str], result: str, unit: str) -> None:
    got = evaluate(name, args)
    assert (got["result"], got["unit"]) == (result, unit)
    assert got["standard"] == FORMULAS[name].standard


def test_tree_co2_by_hand() -> None:
    # B = 0.1·D^2.5: B(10) = 31.6227766…, B(11) = 40.1311600…; ×1.2 ×0.5 ×44/12 /1000
    b0, b1 = 0.1 * 10**2.5, 0.1 * 11**2.5
    want = (b1 - b0) * 1.2 * 0.5 * 44 / 12 / 1000
    got = evaluate("tree_co2", {"dbh_cm_start": "10", "dbh_cm_end": "11", "a": "0.1", "b": "2.5",
                                "root_shoot": "0.2", "carbon_fraction": "0.5"})
    assert float(got["unrounded"]) == pytest.approx(want, rel=1e-12)
    assert got["result"] == f"{want:.6f}"
    with_h = evaluate("tree_co2", {"dbh_cm_start": "10", "dbh_cm_end": "11", "a": "0.05", "b": "0.9",
                                   "root_shoot": "0.2", "carbon_fraction": "0.47", "height_m": "12"})
    want_h = 0.05 * ((11**2 * 12) ** 0.9 - (10**2 * 12) ** 0.9) * 1.2 * 0.47 * 44 / 12 / 1000
    assert float(with_h["unrounded"]) == pytest.approx(want_h, rel=1e-12)


def test_grid_avoided_names_its_factor() -> None:
    got = evaluate("grid_avoided", {"mwh": "1", "year": "2022"})
    assert got["factor"]["value"] == "0.5366" and got["factor"]["status"] == "verified"
    assert "2022" in got["factor"]["key"]


@pytest.mark.parametrize("name, args, names_input, says", [
    ("grid_avoided", {"mwh": "1", "year": "2031"}, "2031", "add a [[factor]]"),
    ("grid_avoided", {"mwh": "1", "year": "2022.5"}, "year", "whole year"),
    ("co2_fuel", {"fuel_t": "1", "ncv_gj_t": "20", "cc_tc_gj": "0.03", "oxidation": "98"}, "oxidation", "0.98"),
    ("co2_fuel", {"fuel_t": "1", "ncv_gj_t": "20", "cc_tc_gj": "26.18", "oxidation": "1"}, "cc_tc_gj", "0.02618"),
    ("o2_correction", {"conc_mg_m3": "10", "o2_pct": "21", "o2_ref_pct": "6"}, "o2_pct", "ambient air"),
    ("std_dry_flow", {"q_actual_m3h": "-1", "t_c": "60", "p_static_pa": "0", "p_atm_pa": "101325",
                      "moisture_pct": "9"}, "q_actual_m3h", "outside"),
    ("std_dry_flow", {"q_actual_m3h": "1", "t_c": "60", "p_static_pa": "0", "p_atm_pa": "101.3",
                      "moisture_pct": "9"}, "p_atm_pa", "101300 Pa"),
    ("tree_co2", {"dbh_cm_start": "11", "dbh_cm_end": "10", "a": "0.1", "b": "2.5", "root_shoot": "0.2",
                  "carbon_fraction": "0.5"}, "dbh_cm_end", "never an emission"),
    ("tree_co2", {"dbh_cm_start": "10", "dbh_cm_end": "11", "a": "0.1", "b": "2.5", "root_shoot": "0.2",
                  "carbon_fraction": "47"}, "carbon_fraction", "0.47"),
    ("mass_rate", {"conc_mg_m3": "abc", "q_std_dry_m3h": "1"}, "conc_mg_m3", "not a number"),
    ("mass_rate", {"conc_mg_m3": "1e999999", "q_std_dry_m3h": "1"}, "conc_mg_m3", "sensible size"),
    ("mass_rate", {"conc_mg_m3": "NaN", "q_std_dry_m3h": "1"}, "conc_mg_m3", "finite"),
    ("mass_rate", {"conc_mg_m3": "1"}, "q_std_dry_m3h", "missing"),
    ("mass_rate", {"conc_mg_m3": "1", "q_std_dry_m3h": "1", "hours": "1"}, "hours", "not a key"),
    ("nope", {}, "nope", "use one of"),
])
def test_bad_inputs_name_the_input_and_the_fix(name: str, args: dict[str, str], names_input: str,
                                               says: str) -> None:
    with pytest.raises(CarbonInputError) as err:
        evaluate(name, args)
    assert names_input in err.value.input and says in str(err.value)
    assert err.value.fix


def test_rounding_is_half_to_even_and_results_repeat() -> None:
    assert f.round_fixed(D("0.0000025"), 6) == D("0.000002")
    assert f.round_fixed(D("0.0000035"), 6) == D("0.000004")
    args = {"co2_pct": "12.345", "q_std_dry_m3h": "318935.13", "hours": "1"}
    assert evaluate("co2_cems", args) == evaluate("co2_cems", args)


def test_parse_pairs_refuses_what_is_not_key_value() -> None:
    assert parse_pairs(["a=1", "b=-2"]) == {"a": "1", "b": "-2"}
    with pytest.raises(CarbonInputError, match="key=value"):
        parse_pairs(["a"])
    with pytest.raises(CarbonInputError, match="twice"):
        parse_pairs(["a=1", "a=2"])


def test_part75_in_tonnes_and_relative_difference() -> None:
    assert f.short_tons_to_t(D(1)) == D("0.90718474")
    assert f.relative_difference(D(102), D(100)) == D("0.02")
    assert f.relative_difference(D(1), D(0)) is None
