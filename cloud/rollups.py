"""Rollups with data quality: hour, day and month statistics and whether each period is valid.

HJ 76-2017 Appendix B (CEMS data rules): an hourly mean is valid only with at least 45 valid minutes
of 60; a day needs at least 20 valid hours; a month at least 25 valid days (23 in February).
A minute is valid when it holds at least one reading flagged N (normal); min, max and mean use
valid readings only, and a day's (month's) mean is the mean of its valid hours' (days') means.
Every back end supplies the same hourly partials (``Store.hour_rollups``); the rules live here,
once, so every back end gives the same answers.
"""

from __future__ import annotations

import calendar
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from carbonlink.kernel.wire import format_ts

from .store import QUALITY_FLAGS, SeriesQuery, Store

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
Granularity = Literal["hour", "day", "month"]


@dataclass(frozen=True)
class ValidityRules:
    min_valid_minutes: int = 45  # of 60, per hour
    min_valid_hours: int = 20  # of 24, per day
    min_valid_days: int = 25  # per month
    min_valid_days_february: int = 23
    tz_offset_min: int = 0  # where days and months begin: +480 for China Standard Time

    def __post_init__(self) -> None:
        if not 0 <= self.min_valid_minutes <= 60 or not 0 <= self.min_valid_hours <= 24:
            raise ValueError("min_valid_minutes must be 0-60 and min_valid_hours 0-24")
        if not 0 <= self.min_valid_days_february <= 29 or not 0 <= self.min_valid_days <= 31:
            raise ValueError("min_valid_days must be 0-31 (February 0-29)")
        if not -14 * 60 <= self.tz_offset_min <= 14 * 60 or self.tz_offset_min % 15:
            raise ValueError("tz_offset_min must be a multiple of 15 between -840 and 840")

    @property
    def offset_ms(self) -> int:
        return self.tz_offset_min * 60_000


def day_start(ts_ms: int, rules: ValidityRules) -> int:
    return (ts_ms + rules.offset_ms) // DAY_MS * DAY_MS - rules.offset_ms


def month_start(ts_ms: int, rules: ValidityRules) -> int:
    t = time.gmtime((ts_ms + rules.offset_ms) // 1000)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * 1000 - rules.offset_ms


def next_month(start_ms: int, rules: ValidityRules) -> int:
    t = time.gmtime((start_ms + rules.offset_ms) // 1000)
    y, m = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((y, m, 1, 0, 0, 0)) * 1000 - rules.offset_ms


def align(start_ms: int, end_ms: int, granularity: Granularity, rules: ValidityRules) -> tuple[int, int]:
    """Widen [start, end) to whole periods."""
    if granularity == "hour":
        return start_ms // HOUR_MS * HOUR_MS, -(-end_ms // HOUR_MS) * HOUR_MS
    if granularity == "day":
        s, e = day_start(start_ms, rules), day_start(end_ms, rules)
        return s, e if e == end_ms else e + DAY_MS
    s, e = month_start(start_ms, rules), month_start(end_ms, rules)
    return s, e if e == end_ms else next_month(e, rules)


def hour_record(row: dict[str, Any], rules: ValidityRules) -> dict[str, Any]:
    """One hour from the back end's partial sums, with its validity."""
    n_valid = int(row["q_n"])
    counts = {f: int(row[f"q_{f.lower()}"]) for f in QUALITY_FLAGS}
    return {
        "gateway": row["gateway"], "device": row["device"], "point": row["point"],
        "start_ms": int(row["hour_ms"]), "start": format_ts(int(row["hour_ms"])),
        "n": int(row["n"]), "n_valid": n_valid, "counts": counts,
        "min": row["vmin"], "max": row["vmax"], "mean": row["vsum"] / n_valid if n_valid else None,
        "valid_minutes": int(row["valid_minutes"]),
        "valid": int(row["valid_minutes"]) >= rules.min_valid_minutes,
    }


def _merge(children: list[dict[str, Any]], start: int, unit: str, needed: int) -> dict[str, Any]:
    """Fold valid children (hours into a day, days into a month) the way HJ 76 reports them."""
    good = [c for c in children if c["valid"]]
    counts = {f: sum(c["counts"][f] for c in children) for f in QUALITY_FLAGS}
    means = [c["mean"] for c in good if c["mean"] is not None]
    first = children[0]
    return {
        "gateway": first["gateway"], "device": first["device"], "point": first["point"],
        "start_ms": start, "start": format_ts(start),
        "n": sum(c["n"] for c in children), "n_valid": sum(c["n_valid"] for c in children), "counts": counts,
        "min": min((c["min"] for c in good if c["min"] is not None), default=None),
        "max": max((c["max"] for c in good if c["max"] is not None), default=None),
        "mean": sum(means) / len(means) if means else None,
        f"valid_{unit}": len(good), "required": needed, "valid": len(good) >= needed,
    }


def _group(records: Iterable[dict[str, Any]], key_of: Any) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    out: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["gateway"], r["device"], r["point"], key_of(r["start_ms"])), []).append(r)
    return out


def roll_days(hours: list[dict[str, Any]], rules: ValidityRules) -> list[dict[str, Any]]:
    groups = _group(hours, lambda ms: day_start(ms, rules))
    return [_merge(v, k[3], "hours", rules.min_valid_hours) for k, v in sorted(groups.items(), key=_order)]


def roll_months(days: list[dict[str, Any]], rules: ValidityRules) -> list[dict[str, Any]]:
    groups = _group(days, lambda ms: month_start(ms, rules))
    out = []
    for k, v in sorted(groups.items(), key=_order):
        february = time.gmtime((k[3] + rules.offset_ms) // 1000).tm_mon == 2
        out.append(_merge(v, k[3], "days", rules.min_valid_days_february if february else rules.min_valid_days))
    return out


def _order(item: tuple[tuple[Any, ...], Any]) -> tuple[str, str, int]:
    gw, _dev, point, start = item[0]
    return (point, gw, start)


async def rollups(store: Store, q: SeriesQuery, granularity: Granularity = "hour",
                  rules: ValidityRules | None = None) -> list[dict[str, Any]]:
    """Statistics per point and period over [start, end), widened to whole periods."""
    rules = rules or ValidityRules()
    start, end = align(q.start_ms, q.end_ms, granularity, rules)
    rows = await store.data.hour_rollups(dataclasses.replace(q, start_ms=start, end_ms=end))  # keeps q.tenant
    hours = [hour_record(r, rules) for r in rows]
    if granularity == "hour":
        return hours
    days = roll_days(hours, rules)
    return days if granularity == "day" else roll_months(days, rules)
