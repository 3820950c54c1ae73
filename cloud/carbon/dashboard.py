"""The dashboard's figures as JSON written by the database: per site (or stack) and period, with coverage,
and the organisation's totals per period.

A year of daily figures for a hundred sites is 36,500 items. Summing the kept stack-days
(``carbon_days``) takes the database a few tens of milliseconds; building 36,500 Python dicts and
serialising them took longer than the goal of the whole request. So one statement sums, formats and
orders everything, and returns each item as a finished JSON text: exact decimals come from integer grams
(``"1920.123456"`` t, ``"300.5"`` kg, as ``Decimal(grams) / 10**n`` writes them), strings are quoted
by the engine's JSON function, and Python only joins the texts. SQLite and PostgreSQL run the same
statement; what differs (quoting, dates, decimals, byte order) is the small ``_Dialect`` below, and a
test holds the two engines to the same bytes.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from .sqlstore import stack_days_sql

Granularity = Literal["day", "month", "year"]
By = Literal["site", "stack"]
_SUMS = ("co2_g", "so2_g", "nox_g", "dust_g", "valid", "substituted", "missing", "readings")


@dataclass(frozen=True)
class _Dialect:
    """SQL expressions that the two engines write differently (each ``x`` is a column or expression)."""

    postgres: bool

    def quote(self, x: str) -> str:
        """A text as a JSON string, quotes included."""
        return f"to_json(CAST({x} AS TEXT))" if self.postgres else f"json_quote({x})"

    def concat(self, parts: list[str]) -> str:
        """Texts and numbers joined (PostgreSQL's ``concat`` writes the whole text at once)."""
        return f"concat({', '.join(parts)})" if self.postgres else " || ".join(parts)

    def label(self, day: str, granularity: str) -> str:
        """A local day number (days since 1970-01-01) as ``YYYY-MM-DD``, ``YYYY-MM`` or ``YYYY``."""
        if self.postgres:
            fmt = {"day": "YYYY-MM-DD", "month": "YYYY-MM", "year": "YYYY"}[granularity]
            return f"to_char(DATE '1970-01-01' + CAST({day} AS INTEGER), '{fmt}')"
        fmt = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[granularity]
        return f"strftime('{fmt}', {day} * 86400, 'unixepoch')"

    def decimal(self, x: str, scale: int) -> str:
        """Integer units as the exact decimal ``units / 10**scale``, no trailing zeros, no exponent."""
        if self.postgres:
            return f"trim_scale({x} * 0.{'0' * (scale - 1)}1)"
        unit = 10**scale
        return (f"(CASE WHEN {x} < 0 THEN '-' ELSE '' END || (abs({x}) / {unit})"
                f" || rtrim(rtrim(printf('.%0{scale}d', abs({x}) % {unit}), '0'), '.'))")

    def bytewise(self, x: str) -> str:
        """Order by code point, as Python sorts strings (SQLite's default; PostgreSQL's "C" collation)."""
        return f'{x} COLLATE "C"' if self.postgres else x


def _item_json(d: _Dialect, by: str) -> str:
    """One item: the same keys, in the same order, as the API always answered."""
    return d.concat([
        "'{\"site\":'", d.quote("g.site"),
        *(["',\"stack\":'", d.quote("g.stack")] if by == "stack" else []),
        "',\"period\":\"'", "g.period",
        "'\",\"scope1_t\":\"'", d.decimal("g.co2_g", 6),
        "'\",\"pollutants_kg\":{\"so2\":\"'", d.decimal("g.so2_g", 3),
        "'\",\"nox\":\"'", d.decimal("g.nox_g", 3),
        "'\",\"dust\":\"'", d.decimal("g.dust_g", 3),
        "'\"},\"coverage\":{\"valid\":'", "g.valid",
        "',\"substituted\":'", "g.substituted",
        "',\"missing\":'", "g.missing",
        "'},\"readings\":'", "g.readings", "'}'",
    ])


def _total_json(d: _Dialect) -> str:
    return d.concat(["'{\"period\":\"'", "g.period", "'\",\"scope1_t\":\"'", d.decimal("g.co2_g", 6),
                     "'\",\"sites\":'", "g.n", "',\"coverage\":{\"valid\":'", "g.valid",
                     "',\"substituted\":'", "g.substituted", "',\"missing\":'", "g.missing", "'}}'"])


def dashboard_sql(dialect: str, days: str, granularity: str, by: str) -> tuple[str, str]:
    """Two statements of one column ``item``: the items in (site, stack, period) order, and the totals by
    period. Each takes the tenant and the parameters of ``days``.

    The grouped rows are sorted while they are narrow and written as JSON after: the outer ORDER BY
    repeats the inner one, so PostgreSQL sees them sorted already and never sorts the long texts."""
    d = _Dialect(dialect == "postgresql")
    # Grouped, sorted and selected by the same byte-ordered keys, so one sort serves all three.
    site, stack, label = (d.bytewise(x) for x in ("c.site", "c.source_id", d.label("x.day", granularity)))
    keys = [site, *([stack] if by == "stack" else []), label]
    sums = ", ".join(f"coalesce(sum(x.{k}), 0) AS {k}" for k in _SUMS)
    src = f"FROM ({days}) x JOIN carbon_sources c ON c.src = x.src"
    outer = ", ".join(d.bytewise(f"s.{k}") for k in ("site", *(["stack"] if by == "stack" else []), "period"))
    items = (f"SELECT item FROM (SELECT g.site, g.stack, g.period, {_item_json(d, by)} AS item"
             f" FROM (SELECT {site} AS site, {stack if by == 'stack' else chr(39) * 2} AS stack, {label} AS period,"
             f" {sums} {src} GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}) g) s ORDER BY {outer}")
    tsums = ", ".join(f"coalesce(sum(x.{k}), 0) AS {k}" for k in ("co2_g", "valid", "substituted", "missing"))
    rows = "DISTINCT c.src" if by == "stack" else "DISTINCT c.site"  # the items of each period
    totals = (f"SELECT {_total_json(d)} AS item FROM (SELECT {label} AS period, count({rows}) AS n, {tsums} {src}"
              f" GROUP BY {label} ORDER BY {label}) g ORDER BY {d.bytewise('g.period')}")
    return items, totals


def year_range_ms(year: int, tz_offset_min: int) -> tuple[int, int]:
    """The local calendar year at a UTC offset, in epoch milliseconds."""
    tz = dt.timezone(dt.timedelta(minutes=tz_offset_min))
    return (int(dt.datetime(year, 1, 1, tzinfo=tz).timestamp() * 1000),
            int(dt.datetime(year + 1, 1, 1, tzinfo=tz).timestamp() * 1000))


async def dashboard_json(db: Any, tenant: str, year: int, granularity: Granularity, tz_offset_min: int, *,
                         by: By = "site") -> bytes:
    """The body of ``GET /api/carbon/dashboard``: ``{tenant, year, granularity, by, items, totals}``, UTF-8."""
    if granularity not in ("day", "month", "year") or by not in ("site", "stack"):
        raise ValueError(f"granularity {granularity!r} / by {by!r}")
    start, end = year_range_ms(year, tz_offset_min)
    days, args = stack_days_sql(start, end, tz_offset_min)
    items_sql, totals_sql = dashboard_sql(db.dialect, days, granularity, by)
    items = [r["item"] for r in await db.fetch(items_sql, tenant, *args)]
    totals = [r["item"] for r in await db.fetch(totals_sql, tenant, *args)]
    head = json.dumps({"tenant": tenant, "year": year, "granularity": granularity, "by": by},
                      ensure_ascii=False, separators=(",", ":"))
    return f'{head[:-1]},"items":[{",".join(items)}],"totals":[{",".join(totals)}]}}'.encode()


async def dashboard_figures(db: Any, tenant: str, year: int, granularity: Granularity, tz_offset_min: int, *,
                            by: By = "site") -> dict[str, Any]:
    """``dashboard_json`` parsed, for callers in Python."""
    return json.loads(await dashboard_json(db, tenant, year, granularity, tz_offset_min, by=by))  # type: ignore[no-any-return]
