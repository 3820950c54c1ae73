"""Compliance forecast to year end against the allowance, with warning levels (pure; SQL feeds it).

forecast = covered emissions of the year so far + for each remaining part of the year the same
months of last year: the rest of the current month as last year's month × (days left / days in the
month), the months after it whole. A month last year has no figure for falls back to the mean of this
year's complete months, and says so (``basis``). The ratio forecast/allowance is compared with the
configured thresholds (ascending); the highest one reached gives the level.
"""

from __future__ import annotations

import calendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext

from . import formulas as fm
from .errors import CarbonInputError

ZERO = Decimal(0)


@dataclass(frozen=True)
class Threshold:
    ratio: Decimal  # of the allowance
    level: str  # e.g. "notice", "warning", "exceeded"
    severity: str = "warning"  # info | warning | critical (the event severity)


DEFAULT_THRESHOLDS = (Threshold(Decimal("0.8"), "notice", "info"), Threshold(Decimal("0.95"), "warning", "warning"),
                      Threshold(Decimal("1.0"), "exceeded", "critical"))


@dataclass(frozen=True)
class Forecast:
    year: int
    as_of_month: int
    as_of_day: int
    ytd_t: Decimal
    remainder_t: Decimal
    forecast_t: Decimal
    allowance_t: Decimal
    ratio: Decimal
    level: str | None  # None: below every threshold
    severity: str | None
    basis: dict[str, str]  # month → where its remainder came from

    def as_dict(self) -> dict[str, object]:
        return {"year": self.year, "as_of": f"{self.year}-{self.as_of_month:02d}-{self.as_of_day:02d}",
                "ytd_t": str(self.ytd_t), "remainder_t": str(self.remainder_t), "forecast_t": str(self.forecast_t),
                "allowance_t": str(self.allowance_t), "ratio": str(self.ratio), "level": self.level,
                "severity": self.severity, "basis": dict(self.basis)}


def forecast_year_end(year: int, month: int, day: int, this_year: Mapping[int, Decimal],
                      last_year: Mapping[int, Decimal], allowance_t: Decimal,
                      thresholds: Sequence[Threshold] = DEFAULT_THRESHOLDS) -> Forecast:
    """``this_year``: covered t CO2 per month 1..month (the current month up to and including ``day``);
    ``last_year``: per month 1..12 where known."""
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise CarbonInputError("as_of", f"{year}-{month:02d}-{day:02d} is not a date", "give a real date")
    if allowance_t <= 0:
        raise CarbonInputError("allowance_t", f"{allowance_t}", "give the year's allowance in t CO2 (> 0)")
    if any(not 1 <= m <= month for m in this_year) or any(not 1 <= m <= 12 for m in last_year):
        raise CarbonInputError("months", "outside the year so far / 1-12", "give months as 1-12")
    if [t for t in sorted(thresholds, key=lambda t: t.ratio)] != list(thresholds):
        raise CarbonInputError("thresholds", "not in ascending order", "list thresholds from lowest to highest")
    with localcontext(fm.CONTEXT):
        ytd = sum(this_year.values(), ZERO)
        complete = [this_year[m] for m in range(1, month) if m in this_year]
        fallback = sum(complete, ZERO) / len(complete) if complete else None
        days = calendar.monthrange(year, month)[1]
        basis: dict[str, str] = {}
        rest = ZERO
        for m in range(month, 13):
            share = Decimal(days - day) / Decimal(days) if m == month else Decimal(1)
            if share == 0:
                continue
            label = f"{year}-{m:02d}"
            if m in last_year:
                rest += last_year[m] * share
                basis[label] = f"{year - 1}-{m:02d}" + ("" if m != month else f" × {days - day}/{days}")
            elif fallback is not None:
                rest += fallback * share
                basis[label] = f"mean of {len(complete)} complete month(s) of {year} (no {year - 1}-{m:02d})"
            else:
                raise CarbonInputError(f"last year's {year - 1}-{m:02d}", "no figure, and no complete month this year",
                                       "account last year's months, or wait for a complete month")
        rest = fm.round_fixed(rest, 6)
        total = ytd + rest
        ratio = fm.round_fixed(total / allowance_t, 4)
    reached = [t for t in thresholds if ratio >= t.ratio]
    top = reached[-1] if reached else None
    return Forecast(year, month, day, ytd, rest, total, allowance_t, ratio, top.level if top else None,
                    top.severity if top else None, basis)
