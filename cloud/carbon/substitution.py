"""Missing and invalid hours: substituted by a documented, configurable method, and marked as such.

An hour is valid when its rollup says so (HJ 76-2017: at least 45 valid minutes). Every other hour of
a parameter is *substituted* from the valid hours around and before it, following tiers chosen by the
monitor's data availability over a look-back window and by the length of the gap:

``part75`` (default; 40 CFR 75 §75.33 Table 1 for SO2, as the project's domain notes give it, marked
UNVERIFIED there, so every tier is configurable):

=============================  ==================  ==============================================
availability (look-back)       gap length          substitute value
=============================  ==================  ==============================================
≥ 95 %                         ≤ 24 h              mean of the valid hour before and the hour after
≥ 95 %                         > 24 h              greater of that mean and the 90th percentile
90 – 95 %                      ≤ 8 h               mean of the hour before and the hour after
90 – 95 %                      > 8 h               95th percentile of the look-back
< 90 %                         any                 maximum of the look-back
=============================  ==================  ==============================================

``hj75``: ≤ 24 h: mean of the hour before and after; longer: maximum of the look-back (the rule
Chinese CEMS operators apply; UNVERIFIED against the text of HJ 75-2017, configurable).
``none``: nothing is substituted; such hours stay missing.

Until the monitor's history holds ``min_history_h`` valid hours (720, as §75.33 starts after 720 quality-assured
hours), the initial procedure applies: the mean of the hour before and after. The look-back is the
``lookback_h`` hours before the gap (720 by default); availability is the share of them that are valid.
Percentiles use the nearest-rank method on the valid look-back values. A gap still open at the end of the
data uses the hour before alone and is marked ``provisional``: when data arrive after it, the gap is
recomputed. With no valid hour before or after and no look-back, the hour stays ``missing`` and no figure
is computed from it.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Literal

from .errors import CarbonInputError
from .formulas import CONTEXT

HOUR_S = 3600
Rule = Literal["before_after", "max_before_after_p", "percentile", "max"]
Status = Literal["valid", "substituted", "missing"]


@dataclass(frozen=True)
class Tier:
    min_availability_pct: Decimal  # the tier applies at or above this availability
    max_gap_h: int | None  # and to gaps of at most this many hours (None: any length)
    rule: Rule
    percentile: int = 0  # for percentile rules


@dataclass(frozen=True)
class SubstitutionPolicy:
    method: Literal["part75", "hj75", "none"] = "part75"
    lookback_h: int = 720
    tiers: tuple[Tier, ...] = field(default=())
    min_history_h: int = 720  # fewer valid hours of history: the initial procedure

    def __post_init__(self) -> None:
        if not 1 <= self.lookback_h <= 26_280:
            raise CarbonInputError("substitution.lookback_h", f"{self.lookback_h} is outside 1-26280",
                                   "give the look-back in hours (§75.33 allows up to three years)")
        if not self.tiers and self.method != "none":
            object.__setattr__(self, "tiers", DEFAULT_TIERS[self.method])
        for t in self.tiers:
            if t.rule in ("percentile", "max_before_after_p") and not 1 <= t.percentile <= 100:
                raise CarbonInputError("substitution.tiers.percentile", f"{t.percentile} is outside 1-100",
                                       "give a percentile between 1 and 100")

    def describe(self) -> str:
        if self.method == "none":
            return "none: invalid and missing hours are not substituted"
        parts = []
        for t in self.tiers:
            gap = "any gap" if t.max_gap_h is None else f"gap <= {t.max_gap_h} h"
            rule = {"before_after": "mean of hour before and after",
                    "max_before_after_p": f"max(mean before/after, p{t.percentile})",
                    "percentile": f"p{t.percentile} of look-back", "max": "max of look-back"}[t.rule]
            parts.append(f"availability >= {t.min_availability_pct} %, {gap}: {rule}")
        return f"{self.method} (look-back {self.lookback_h} h): " + "; ".join(parts)


D = Decimal
DEFAULT_TIERS: dict[str, tuple[Tier, ...]] = {
    "part75": (Tier(D(95), 24, "before_after"), Tier(D(95), None, "max_before_after_p", 90),
               Tier(D(90), 8, "before_after"), Tier(D(90), None, "percentile", 95),
               Tier(D(0), None, "max")),
    "hj75": (Tier(D(0), 24, "before_after"), Tier(D(0), None, "max")),
}


@dataclass(frozen=True)
class HourIn:
    hour: int  # start of the hour, epoch seconds (UTC), a multiple of 3600
    value: Decimal | None
    valid: bool


@dataclass(frozen=True)
class HourOut:
    hour: int
    value: Decimal | None
    status: Status
    note: str = ""  # how a substituted value was found; "provisional" when the gap is still open


def nearest_rank(values: Sequence[Decimal], pct: int) -> Decimal:
    """The nearest-rank percentile: the smallest value with at least pct % of values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct * len(ordered) / 100))
    return ordered[rank - 1]


def substitute(series: Sequence[HourIn], policy: SubstitutionPolicy, *, start: int, end: int) -> list[HourOut]:
    """Hours [start, end) of one parameter, every hour present, invalid and absent ones substituted.

    ``series`` may hold hours before ``start`` (the look-back) and after ``end`` (the hour after a gap);
    hours it lacks count as missing. Pure and deterministic.
    """
    if start % HOUR_S or end % HOUR_S or end < start:
        raise CarbonInputError("period", f"[{start}, {end}) is not whole hours", "align the period to hours")
    by_hour: dict[int, HourIn] = {}
    for h in series:
        if h.hour % HOUR_S:
            raise CarbonInputError(f"hour {h.hour}", "is not at the start of an hour", "give hour starts")
        if h.valid and (h.value is None or not h.value.is_finite()):
            raise CarbonInputError(f"hour {h.hour}", "is marked valid without a value", "mark it invalid")
        by_hour[h.hour] = h
    valid_hours = sorted(k for k, h in by_hour.items() if h.valid)

    def valid_before(t: int) -> int | None:
        i = bisect_left(valid_hours, t)
        return valid_hours[i - 1] if i else None

    def valid_after(t: int) -> int | None:
        i = bisect_left(valid_hours, t + 1)
        return valid_hours[i] if i < len(valid_hours) else None

    out: list[HourOut] = []
    t = start
    while t < end:
        cur = by_hour.get(t)
        if cur is not None and cur.valid:
            out.append(HourOut(t, cur.value, "valid"))
            t += HOUR_S
            continue
        # A gap: from t to the next valid hour (or the end of the data).
        before, after = valid_before(t), valid_after(t)
        gap_end = after if after is not None else max(end, t + HOUR_S)
        gap_h = (gap_end - t) // HOUR_S
        value, note = _fill(by_hour, valid_hours, policy, t, before, after, gap_h)
        stop = min(gap_end, end)
        while t < stop:
            out.append(HourOut(t, value, "missing" if value is None else "substituted", note))
            t += HOUR_S
    return out


def _fill(by_hour: dict[int, HourIn], valid_hours: list[int], policy: SubstitutionPolicy, gap_start: int,
          before: int | None, after: int | None, gap_h: int) -> tuple[Decimal | None, str]:
    if policy.method == "none":
        return None, "not substituted (method none)"
    lo = gap_start - policy.lookback_h * HOUR_S
    i, j = bisect_left(valid_hours, lo), bisect_left(valid_hours, gap_start)
    lookback = [by_hour[k].value for k in valid_hours[i:j]]
    look: list[Decimal] = [v for v in lookback if v is not None]
    with localcontext(CONTEXT):
        availability = D(100) * len(look) / policy.lookback_h
        b = by_hour[before].value if before is not None else None
        a = by_hour[after].value if after is not None else None
        if b is not None and a is not None:
            mean_ba: Decimal | None = (a + b) / 2
            ba_note = "mean of hour before and after"
        elif b is not None or a is not None:
            mean_ba = b if b is not None else a
            ba_note = "hour before (gap still open: provisional)" if b is not None else "hour after"
        else:
            mean_ba, ba_note = None, ""
        if j < policy.min_history_h and mean_ba is not None:  # j: valid hours before the gap, all history
            return mean_ba, (f"{ba_note}; initial procedure ({j} valid hours of history < "
                             f"{policy.min_history_h}); gap {gap_h} h")
        for tier in policy.tiers:
            if availability < tier.min_availability_pct or (tier.max_gap_h is not None and gap_h > tier.max_gap_h):
                continue
            if tier.rule == "before_after":
                if mean_ba is not None:
                    return mean_ba, f"{ba_note}; gap {gap_h} h, availability {availability:.1f} %"
                continue
            if not look:
                continue
            if tier.rule == "max":
                return max(look), f"max of {len(look)} look-back hours; gap {gap_h} h"
            p = nearest_rank(look, tier.percentile)
            if tier.rule == "percentile" or mean_ba is None:
                return p, f"p{tier.percentile} of {len(look)} look-back hours; gap {gap_h} h"
            return max(p, mean_ba), f"max({ba_note}, p{tier.percentile}); gap {gap_h} h"
        if mean_ba is not None:  # no tier could apply (no look-back): the neighbours are all there is
            return mean_ba, f"{ba_note}; no look-back history"
    return None, "no valid hour to substitute from"


@dataclass(frozen=True)
class Coverage:
    """Hours of a period by status: every period reports it next to its figures."""

    valid: int = 0
    substituted: int = 0
    missing: int = 0

    @property
    def hours(self) -> int:
        return self.valid + self.substituted + self.missing

    def __add__(self, other: Coverage) -> Coverage:
        return Coverage(self.valid + other.valid, self.substituted + other.substituted,
                        self.missing + other.missing)

    def add(self, status: str) -> Coverage:
        return self + Coverage(int(status == "valid"), int(status == "substituted"), int(status == "missing"))

    def as_dict(self) -> dict[str, int]:
        return {"valid": self.valid, "substituted": self.substituted, "missing": self.missing,
                "hours": self.hours}
