"""Compile-time checks: units, points, functions, windows, budgets, actions."""

from __future__ import annotations

import pytest

from carbonlink.rules import units as U
from carbonlink.rules.compiler import Budget, Catalogue, RuleError, compile_rule
from carbonlink.rules.document import RuleDoc

CAT = Catalogue({"cems-1": {"so2": "mg/m³", "o2": "%", "temp": "°C", "flow": "m³/s"},
                 "inv-1": {"power": "W", "energy": "Wh"}})


def comp(text: str, catalogue: Catalogue | None = None, budget: Budget | None = None, **kw: object):
    return compile_rule(RuleDoc(id="t", text=text, **kw), catalogue, budget)  # type: ignore[arg-type]


def refused(text: str, catalogue: Catalogue | None = None, budget: Budget | None = None, **kw: object) -> RuleError:
    with pytest.raises(RuleError) as info:
        comp(text, catalogue, budget, **kw)
    return info.value


def test_unit_table_converts_and_refuses() -> None:
    assert U.convert(0.25, U.lookup("g/m3"), U.lookup("mg/m³")) == pytest.approx(250)
    assert U.convert(20, U.lookup("°C"), U.lookup("K")) == pytest.approx(293.15)
    assert U.convert(1, U.lookup("%"), U.lookup("ppm")) == pytest.approx(10_000)
    assert U.convert(1, U.lookup("kWh"), U.lookup("MJ")) == pytest.approx(3.6)
    assert U.lookup("ug/m3") is U.lookup("µg/m³") and U.lookup("℃") is U.lookup("°C")
    with pytest.raises(U.UnitError, match="cannot be converted"):
        U.converter(U.lookup("ppm"), U.lookup("mg/m3"))  # needs a molar mass (HJ 75 App. A)
    with pytest.raises(U.UnitError, match="unknown unit 'furlong'"):
        U.lookup("furlong")


def test_incompatible_units_are_refused_at_the_operator() -> None:
    e = refused("SELECT * FROM '+/so2' WHERE value > 200 mg/m3 AND value < 3 kPa")
    assert (e.line, e.column) == (1, 57) and "incompatible units" in e.message
    e = refused("SELECT 200 mg/m3 + 5 % AS x FROM '+/so2'")
    assert "incompatible units: mg/m³ and %" in e.message
    e = refused("SELECT * FROM '+/so2' WHERE value > 200 furlongs")
    assert (e.line, e.column) == (1, 41) and "unknown unit 'furlongs'" in e.message


def test_with_a_catalogue_the_point_units_are_checked() -> None:
    e = refused("SELECT * FROM 'cems-1/so2' WHERE value > 3 kPa", CAT)
    assert "incompatible units: mg/m³ and kPa" in e.message
    e = refused("SELECT * FROM '+/so2' WHERE o2 > 20 °C", CAT)
    assert "incompatible units: % and °C" in e.message
    comp("SELECT * FROM '+/so2' WHERE value > 0.2 g/m3 AND o2 < 15 %", CAT)


def test_missing_points_are_refused_with_a_catalogue() -> None:
    e = refused("SELECT * FROM '+/so3'", CAT)
    assert (e.line, e.column) == (1, 15) and "so3" in e.message
    e = refused("SELECT * FROM '+/so2'\nWHERE o3 > 1", CAT)
    assert (e.line, e.column) == (2, 7) and "unknown point 'o3'" in e.message
    comp("SELECT * FROM '+/so3'")  # without a catalogue a point may appear later


def test_aggregates_need_a_window_and_fields_need_an_aggregate() -> None:
    e = refused("SELECT avg(value) FROM '+/so2'")
    assert "needs a window" in e.message and (e.line, e.column) == (1, 8)
    e = refused("SELECT value FROM '+/so2' GROUP BY TUMBLING(1m)")
    assert "must be inside an aggregate" in e.message
    e = refused("SELECT avg(value), point FROM '+/so2' GROUP BY device, TUMBLING(1m)")
    assert "not a group key" in e.message
    e = refused("SELECT median(value) FROM '+/so2' GROUP BY TUMBLING(1m)")
    assert "unknown function median()" in e.message
    e = refused("SELECT * FROM '+/so2' GROUP BY TUMBLING(1m)")
    assert "must name its aggregates" in e.message
    e = refused("SELECT percentile(value, 120) FROM '+/so2' GROUP BY TUMBLING(1m)")
    assert "0 to 100" in e.message


def test_windows_over_the_memory_budget_are_refused_naming_the_budget() -> None:
    e = refused("SELECT avg(value) FROM '+/so2' GROUP BY SLIDING(7d)")
    assert "over the rule memory budget of 65,536 readings" in e.message and "rules.budget" in e.message
    e = refused("SELECT max(value) FROM '+/so2' GROUP BY COUNT(100)", budget=Budget(max_window_entries=50))
    assert "over the rule memory budget of 50 readings" in e.message
    e = refused("SELECT percentile(value, 95) FROM '+/so2' GROUP BY SESSION(5m)")
    assert "needs a maximum length" in e.message
    comp("SELECT avg(value) FROM '+/so2' GROUP BY TUMBLING(7d)")  # incremental: one accumulator per group


def test_type_errors() -> None:
    assert "cannot compare a str with a num" in refused("SELECT * FROM 'a/b' WHERE quality > 3").message
    assert "needs a condition" in refused("SELECT * FROM 'a/b' WHERE value + 1").message
    assert "needs a number" in refused("SELECT -quality AS q FROM 'a/b'").message


def test_derive_needs_a_unit_it_can_name() -> None:
    text = "SELECT convert(so2, 'mg/m3') * (21 % - 6 %) / (21 % - convert(o2, '%')) AS so2_ref FROM '+/so2'"
    rule = comp(text, actions=[{"type": "derive", "point": "so2_o2ref"}])
    assert rule.derives[0].unit == "mg/m³" and rule.derives[0].point == "rule:t:so2_o2ref"
    rule = comp(text, actions=[{"type": "derive", "point": "x", "unit": "g/m3"}])
    assert rule.derives[0].scale == pytest.approx(1e-3)
    e = refused("SELECT so2 * 2 AS y FROM '+/so2'", actions=[{"type": "derive", "point": "y"}])
    assert e.where.startswith("actions") and "give the action a unit" in e.message
    e = refused(text, actions=[{"type": "derive", "point": "x", "unit": "kPa"}])
    assert "cannot be converted to kPa" in e.message


def test_bare_numbers_adopt_the_unit_they_meet() -> None:
    rule = comp("SELECT * FROM '+/so2' WHERE value > 200 mg/m3 AND value < 400")
    assert rule.where is not None


def test_topic_filters_are_checked() -> None:
    assert "whole level" in refused("SELECT * FROM 'cems-#/so2'").message
    assert "whole level" in refused("SELECT * FROM '#/so2'").message
