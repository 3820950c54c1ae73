"""Year-end compliance forecast: the year so far plus last year's remaining months, against the quota."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.forecast import Threshold, forecast_year_end

LAST = {m: D(1000) for m in range(1, 13)}


def test_year_so_far_plus_the_same_months_last_year() -> None:
    # 2023-06-10: Jan-May 1,100 t each, June so far 400 t; June's remaining 20 of 30 days from last June
    this = {1: D(1100), 2: D(1100), 3: D(1100), 4: D(1100), 5: D(1100), 6: D(400)}
    f = forecast_year_end(2023, 6, 10, this, LAST, D(12_000))
    assert f.ytd_t == D(5900)
    assert f.remainder_t == D("6666.666667")  # 1,000 × 20/30 + 6 × 1,000, to 1 g
    assert f.forecast_t == D("12566.666667") and f.ratio == D("1.0472")
    assert (f.level, f.severity) == ("exceeded", "critical")
    assert f.basis["2023-06"] == "2022-06 × 20/30" and f.basis["2023-12"] == "2022-12"


@pytest.mark.parametrize("quota, level", [(D(20_000), None), (D(14_000), "notice"), (D(12_500), "warning"),
                                          (D(12_000), "exceeded")])
def test_levels_follow_the_thresholds(quota: D, level: str | None) -> None:
    f = forecast_year_end(2023, 6, 30, {m: D(1000) for m in range(1, 7)}, LAST, quota)
    assert f.forecast_t == D(12_000) and f.level == level
    custom = forecast_year_end(2023, 6, 30, {m: D(1000) for m in range(1, 7)}, LAST, D(20_000),
                               [Threshold(D("0.5"), "half")])
    assert custom.level == "half"


def test_a_month_missing_last_year_uses_this_years_mean_and_says_so() -> None:
    last = {m: v for m, v in LAST.items() if m != 11}
    f = forecast_year_end(2023, 3, 31, {1: D(900), 2: D(1100), 3: D(1000)}, last, D(12_000))
    assert "mean of 2 complete month(s)" in f.basis["2023-11"] and f.remainder_t == D(9000)
    with pytest.raises(CarbonInputError, match="2022-01"):
        forecast_year_end(2023, 1, 15, {1: D(500)}, {}, D(12_000))


def test_bad_forecast_inputs_are_refused() -> None:
    with pytest.raises(CarbonInputError, match="not a date"):
        forecast_year_end(2023, 2, 30, {}, LAST, D(1))
    with pytest.raises(CarbonInputError, match="allowance"):
        forecast_year_end(2023, 2, 1, {}, LAST, D(0))
    with pytest.raises(CarbonInputError, match="ascending"):
        forecast_year_end(2023, 2, 1, {}, LAST, D(1), [Threshold(D(1), "a"), Threshold(D("0.5"), "b")])
