"""Missing-data substitution: tiers by availability and gap length, marks, coverage, determinism."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.substitution import (
    Coverage,
    HourIn,
    SubstitutionPolicy,
    Tier,
    nearest_rank,
    substitute,
)

H = 3600
T0 = 1_700_006_400  # a whole hour


def history(n: int, value: int = 10, *, start: int = T0, invalid: set[int] = frozenset()) -> list[HourIn]:  # type: ignore[assignment]
    """n hours of a steady value before ``start``; the hours in ``invalid`` (offsets from start) flagged."""
    return [HourIn(start - (n - i) * H, D(value + i % 7), (i - n) not in invalid) for i in range(n)]


def test_short_gap_takes_the_mean_of_the_hours_around_it() -> None:
    hist = history(800)
    series = [*hist, HourIn(T0, D(20), True), HourIn(T0 + H, None, False), HourIn(T0 + 2 * H, D(30), False),
              HourIn(T0 + 3 * H, D(40), True)]
    out = substitute(series, SubstitutionPolicy(), start=T0, end=T0 + 4 * H)
    assert [o.status for o in out] == ["valid", "substituted", "substituted", "valid"]
    assert [o.value for o in out] == [D(20), D(30), D(30), D(40)]  # (20 + 40)/2, not the invalid 30
    assert "mean of hour before and after" in out[1].note


def test_long_gap_at_high_availability_takes_the_greater_of_mean_and_p90() -> None:
    hist = history(800)  # values 10..16
    gap = 30
    series = [*hist, *[HourIn(T0 + i * H, None, False) for i in range(gap)], HourIn(T0 + gap * H, D(10), True)]
    out = substitute(series, SubstitutionPolicy(), start=T0, end=T0 + gap * H)
    p90 = nearest_rank([h.value for h in hist[-720:]], 90)  # type: ignore[misc]
    assert p90 == D(16) and all(o.value == max(p90, (D(10) + hist[-1].value) / 2) for o in out)  # type: ignore[operator]
    assert all(o.status == "substituted" and "p90" in o.note for o in out)


def test_lower_availability_moves_to_percentiles_and_maxima() -> None:
    # 92 % of the look-back valid: a 10-hour gap gets the 95th percentile.
    invalid = set(range(-720, -720 + 58))
    hist = history(800, invalid=invalid)
    series = [*hist, *[HourIn(T0 + i * H, None, False) for i in range(10)], HourIn(T0 + 10 * H, D(11), True)]
    out = substitute(series, SubstitutionPolicy(), start=T0, end=T0 + H)
    assert "p95" in out[0].note
    # 50 % valid: the maximum of the look-back, whatever the gap.
    invalid = set(range(-720, -360))
    hist = history(2000, invalid=invalid)
    out = substitute([*hist, HourIn(T0 + H, D(11), True)], SubstitutionPolicy(), start=T0, end=T0 + H)
    assert out[0].value == D(16) and "max of" in out[0].note


def test_initial_procedure_before_720_valid_hours() -> None:
    series = [HourIn(T0 - H, D(10), True), HourIn(T0 + H, D(20), True)]
    out = substitute(series, SubstitutionPolicy(), start=T0, end=T0 + H)
    assert out[0].value == D(15) and "initial procedure" in out[0].note


def test_an_open_gap_is_provisional_and_nothing_to_go_on_stays_missing() -> None:
    out = substitute([HourIn(T0 - H, D(10), True)], SubstitutionPolicy(), start=T0, end=T0 + 2 * H)
    assert [o.value for o in out] == [D(10), D(10)] and "provisional" in out[0].note
    out = substitute([], SubstitutionPolicy(), start=T0, end=T0 + 2 * H)
    assert [o.status for o in out] == ["missing", "missing"] and out[0].value is None
    none = substitute([HourIn(T0 - H, D(10), True)], SubstitutionPolicy(method="none"), start=T0, end=T0 + H)
    assert none[0].status == "missing"


def test_hj75_method_and_custom_tiers() -> None:
    hist = history(800)
    series = [*hist, HourIn(T0 + 30 * H, D(10), True)]
    out = substitute(series, SubstitutionPolicy(method="hj75"), start=T0, end=T0 + H)
    assert out[0].value == D(16)  # > 24 h: the look-back's maximum
    custom = SubstitutionPolicy(tiers=(Tier(D(0), None, "percentile", 50),))
    assert substitute(series, custom, start=T0, end=T0 + H)[0].value == nearest_rank(
        [h.value for h in hist[-720:]], 50)  # type: ignore[misc]
    with pytest.raises(CarbonInputError, match="percentile"):
        SubstitutionPolicy(tiers=(Tier(D(0), None, "percentile", 0),))
    with pytest.raises(CarbonInputError, match="lookback_h"):
        SubstitutionPolicy(lookback_h=0)


def test_bad_series_are_refused() -> None:
    with pytest.raises(CarbonInputError, match="start of an hour"):
        substitute([HourIn(T0 + 1, D(1), True)], SubstitutionPolicy(), start=T0, end=T0 + H)
    with pytest.raises(CarbonInputError, match="without a value"):
        substitute([HourIn(T0, None, True)], SubstitutionPolicy(), start=T0, end=T0 + H)
    with pytest.raises(CarbonInputError, match="whole hours"):
        substitute([], SubstitutionPolicy(), start=T0 + 5, end=T0 + H)


def test_nearest_rank_and_coverage_arithmetic() -> None:
    xs = [D(v) for v in (15, 20, 35, 40, 50)]
    assert [nearest_rank(xs, p) for p in (5, 30, 40, 50, 100)] == [D(15), D(20), D(20), D(35), D(50)]
    c = Coverage().add("valid").add("substituted").add("missing").add("valid")
    assert c.as_dict() == {"valid": 2, "substituted": 1, "missing": 1, "hours": 4}
    assert (c + c).hours == 8


def test_same_series_same_answer() -> None:
    hist = history(900, invalid={-5, -6, -100})
    a = substitute(hist, SubstitutionPolicy(), start=T0 - 200 * H, end=T0)
    b = substitute(list(reversed(hist)), SubstitutionPolicy(), start=T0 - 200 * H, end=T0)
    assert a == b and sum(o.status == "substituted" for o in a) == 3
