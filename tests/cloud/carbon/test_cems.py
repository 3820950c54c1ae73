"""CEMS accounting on hourly means from the simulated stack, checked against what the stack knows."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.cems import HourValue, StackConfig, account_stack, normalise
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.substitution import SubstitutionPolicy
from carbonlink.simulators.cems import CemsStack
from tests.cloud.carbon.simdata import MARCH, H, stack_hours


@pytest.fixture(scope="module")
def day() -> tuple[CemsStack, dict]:  # type: ignore[type-arg]
    stack = CemsStack(seed=7, clock=lambda: MARCH)
    return stack, stack_hours(stack, MARCH, 24)


def test_a_day_of_co2_and_pollutants_matches_the_stacks_own_answer(day) -> None:  # type: ignore[no-untyped-def]
    stack, hours = day
    rows, period = account_stack(StackConfig("stack-1", fuel="cn_raw_coal"), hours, start=MARCH,
                                 end=MARCH + 24 * H)
    truth = stack.truth(MARCH, MARCH + 24 * H, 30)
    assert period.coverage.as_dict() == {"valid": 24, "substituted": 0, "missing": 0, "hours": 24}
    # Means of an hour multiplied together differ from the mean of the products by far less than 0.5 %.
    assert float(period.co2_measured_t) == pytest.approx(truth["co2_stack_t"], rel=5e-3)
    assert float(period.co2_fuel_t) == pytest.approx(truth["co2_fuel_t"], rel=1e-9)  # type: ignore[arg-type]
    assert abs(period.co2_relative_difference) < D("0.005")  # type: ignore[arg-type]
    for p in ("so2", "nox", "dust"):
        assert float(period.mass_kg[p]) == pytest.approx(truth[f"{p}_kg"], rel=1e-2)
    # Hourly figures are rounded to grams; the day is their exact sum.
    assert period.co2_measured_t == sum((r.co2_measured_t for r in rows), D(0))  # type: ignore[misc]
    assert all(r.co2_measured_t == r.co2_measured_t.quantize(D("0.000001")) for r in rows)  # type: ignore[union-attr]
    # Coal boiler: corrected to 6 % O2 (the stack runs above 6 %, so corrected values are higher).
    assert all(r.corrected_mg_m3["so2"] > hours[r.hour]["so2"].value for r in rows)  # type: ignore[operator]
    assert {f.key for f in period.factors} >= {"coal_boiler", "cn_raw_coal/ncv"}


def test_invalid_hours_are_substituted_marked_and_counted(day) -> None:  # type: ignore[no-untyped-def]
    _, good = day
    hours = {t: {p: (HourValue(v.value, False, v.readings) if (t - MARCH) // H in (5, 6, 7) else v)
                 for p, v in row.items()} for t, row in good.items()}
    rows, period = account_stack(StackConfig("stack-1"), hours, start=MARCH, end=MARCH + 24 * H)
    assert period.coverage.as_dict() == {"valid": 21, "substituted": 3, "missing": 0, "hours": 24}
    assert [r.status for r in rows[4:9]] == ["valid", "substituted", "substituted", "substituted", "valid"]
    assert "flow" in rows[5].substituted and rows[5].notes["flow"]
    assert period.co2_fuel_t is None and period.co2_relative_difference is None


def test_hours_with_no_flue_data_are_missing_not_zero() -> None:
    stack = CemsStack(seed=7, clock=lambda: MARCH)
    hours = stack_hours(stack, MARCH, 3)
    for h in hours.values():
        del h["flow"]
    cfg = StackConfig("s", substitution=SubstitutionPolicy(method="none"))
    rows, period = account_stack(cfg, hours, start=MARCH, end=MARCH + 3 * H)
    assert period.coverage.missing == 3 and period.co2_measured_t == 0
    assert all(r.q_std_dry_m3h is None and "flow" in r.missing for r in rows)


def test_units_are_converted_or_refused() -> None:
    assert normalise("flow", D(2), "m³/s") == D(7200)
    assert normalise("p_static", D("101.825"), "kPa", pressure_kind="absolute", p_atm_pa=D(101325)) == D(500)
    with pytest.raises(CarbonInputError) as err:
        normalise("flow", D(1), "L/min")
    assert "flow [L/min]" in err.value.input and "m³/h" in err.value.fix
    with pytest.raises(CarbonInputError, match="so2 \\[ppm\\]"):
        normalise("so2", D(1), "ppm")


def test_same_hours_same_figures(day) -> None:  # type: ignore[no-untyped-def]
    _, hours = day
    cfg = StackConfig("stack-1", fuel="cn_raw_coal")
    a = account_stack(cfg, hours, start=MARCH, end=MARCH + 24 * H)
    b = account_stack(cfg, dict(reversed(list(hours.items()))), start=MARCH, end=MARCH + 24 * H)
    assert a == b
