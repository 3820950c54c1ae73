"""The dashboard's figures as JSON written by the database: per site (or stack) and period, with coverage,
and the organisation's totals per period.

A year of daily figures for a hundred sites is 36,500 items. Summing the kept stack-days
(``carbon_days``) takes the database a few tens of milliseconds; building 36,500 Python dicts and
serialising them took longer than the goal of the whole request. So the database sums, formats and
orders everything and writes each item as a finished JSON text: exact decimals come from integer grams
(``"1920.123456"`` t, ``"300.5"`` kg, as ``Decimal(grams) / 10**n`` writes them), strings are quoted
by the engine's JSON function. PostgreSQL also joins the texts and answers one row (the items and the
totals, ``array_to_string`` of an ordered ``ARRAY``); SQLite answers them as rows that Python joins.
SQLite and PostgreSQL run the same SQL; what differs (quoting, dates, decimals, byte order) is the small
``_Dialect`` below, and a test holds the two engines to the same bytes.

Where the time went (a year of 100 sites, ``bench/console.py``): sorting and grouping on text keys (the
site and the ``to_char`` label of every day), the second pass of the totals over every stack-day, and
sorts spilling to disk at the default ``work_mem``. Now sites get integer keys, a day is grouped as its
number and labelled only when written, the site's part of the JSON is written once per site, and the
statement runs with a larger ``work_mem``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Literal

from .sqlstore import stack_days_sql

Granularity = Literal["day", "month", "year"]
By = Literal["site", "stack"]
# PostgreSQL's work_mem for the statement (SET LOCAL): a year of 100 sites' days (36,500 narrow rows, 6.7 MB)
# sorted in memory; with the default 4 MB the sort spills to disk.
WORK_MEM = "64MB"
# PostgreSQL writes the items of this many shares of the sites and the totals at once, one server process
# each (at most the pool's size less one in all; on a two-core host a year of 100 sites in about 0.6 of
# the time of one statement)
PARTS = 2
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


def _head_json(d: _Dialect, by: str) -> str:
    """An item's first keys, up to the period's opening quote: the same for every period of a site (stack)."""
    return d.concat(["'{\"site\":'", d.quote("site"),
                     *(["',\"stack\":'", d.quote("source_id")] if by == "stack" else []), "',\"period\":\"'"])


def _item_json(d: _Dialect, period: str) -> str:
    """One item: the same keys, in the same order, as the API always answered."""
    return d.concat([
        "g.head", period,
        "'\",\"scope1_t\":\"'", d.decimal("g.co2_g", 6),
        "'\",\"pollutants_kg\":{\"so2\":\"'", d.decimal("g.so2_g", 3),
        "'\",\"nox\":\"'", d.decimal("g.nox_g", 3),
        "'\",\"dust\":\"'", d.decimal("g.dust_g", 3),
        "'\"},\"coverage\":{\"valid\":'", "g.valid",
        "',\"substituted\":'", "g.substituted",
        "',\"missing\":'", "g.missing",
        "'},\"readings\":'", "g.readings", "'}'",
    ])


def _total_json(d: _Dialect, period: str) -> str:
    return d.concat(["'{\"period\":\"'", period, "'\",\"scope1_t\":\"'", d.decimal("g.co2_g", 6),
                     "'\",\"sites\":'", "g.n", "',\"coverage\":{\"valid\":'", "g.valid",
                     "',\"substituted\":'", "g.substituted", "',\"missing\":'", "g.missing", "'}}'"])


def dashboard_sql(dialect: str, days: str, granularity: str, by: str, parts: int = 1) -> tuple[list[str], str]:
    """The statements that write the body's ``items``, one per share of the sites (``parts``), and its
    ``totals``; each takes the tenant, then the tenant and the parameters of ``days``. On PostgreSQL
    each answers one row of one text, the JSON texts joined; on SQLite one row per JSON text, in order.

    Sites (and stacks) get integer keys in byte order of their names (``keys``) and their item's head
    written once; the kept days are summed per (site key, stack key, period) into narrow rows (``sp``),
    sorted while narrow and only then written as JSON: the outer ORDER BY repeats the inner one, so
    PostgreSQL sees them sorted already and never sorts the long texts. The totals sum the days per period
    once more, counting the sites (stacks) in it."""
    d = _Dialect(dialect == "postgresql")
    site, stack = d.bytewise("site"), d.bytewise("source_id")
    tk = f"dense_rank() OVER (ORDER BY {site}, {stack})" if by == "stack" else "0"
    keys = (f"SELECT r.*, (r.sk - 1) * {int(parts)} / max(r.sk) OVER () AS part FROM (SELECT src,"
            f" dense_rank() OVER (ORDER BY {site}) AS sk, {tk} AS tk, {_head_json(d, by)} AS head"
            " FROM carbon_sources WHERE tenant = ?) r")
    sums = ", ".join(f"CAST(coalesce(sum(x.{k}), 0) AS BIGINT) AS {k}" for k in _SUMS)
    # a day is its own period, labelled when written as JSON, after the sort; a month or a year is its label
    key = "day" if granularity == "day" else "period"
    pkey = "x.day" if granularity == "day" else d.bytewise(d.label("x.day", granularity))
    period = d.label("g.day", "day") if granularity == "day" else "g.period"

    def items(part: int) -> str:
        # head follows the keys it depends on, so sorting compares it only between the stacks of a site
        sp = (f"SELECT k.sk, k.tk, {pkey} AS {key}, k.head, {sums} FROM ({days}) x JOIN keys k ON k.src = x.src"
              f" AND k.part = {part} GROUP BY k.sk, k.tk, {pkey}, k.head ORDER BY k.sk, k.tk, {pkey}, k.head")
        inner, outer = (", ".join(f"{t}.{k}" for k in ("sk", "tk", key)) for t in "sg")
        return (f"SELECT {_item_json(d, period)} AS item FROM (SELECT * FROM ({sp}) s ORDER BY {inner}) g"
                f" ORDER BY {outer}")

    tsums = ", ".join(f"CAST(coalesce(sum(x.{k}), 0) AS BIGINT) AS {k}"
                      for k in ("co2_g", "valid", "substituted", "missing"))
    totals = (f"SELECT {_total_json(d, period)} AS item FROM (SELECT {pkey} AS {key},"
              f" count(DISTINCT k.{'tk' if by == 'stack' else 'sk'}) AS n, {tsums}"
              f" FROM ({days}) x JOIN keys k ON k.src = x.src GROUP BY {pkey} ORDER BY {pkey}) g ORDER BY g.{key}")
    with_ = f"WITH keys AS ({keys}) "
    if d.postgres:
        return ([f"{with_}SELECT array_to_string(ARRAY({items(i)}), ',') AS joined" for i in range(parts)],
                f"{with_}SELECT array_to_string(ARRAY({totals}), ',') AS joined")
    return [with_ + items(i) for i in range(parts)], with_ + totals


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
    if db.dialect == "postgresql":
        # the items of shares of the sites and the totals, each written by a server process of its own,
        # all on one snapshot (one connection: one after the other, in one transaction)
        async with db.read_snapshot(PARTS + 1) as cons:

            async def joined(con: Any, q: str) -> str:
                await con.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
                return str(await con.fetchval(q, tenant, tenant, *args) or "")

            parts, totals_sql = dashboard_sql(db.dialect, days, granularity, by, parts=max(1, len(cons) - 1))
            if len(cons) == 1:
                texts = [await joined(cons[0], q) for q in (*parts, totals_sql)]
            else:  # a failure cancels the others before their connections go back to the pool
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(joined(c, q)) for c, q in zip(cons, (*parts, totals_sql), strict=True)]
                texts = [t.result() for t in tasks]
        items, totals = ",".join(t for t in texts[:-1] if t), texts[-1]
    else:
        (items_sql,), totals_sql = dashboard_sql(db.dialect, days, granularity, by)
        items, totals = [",".join(r["item"] for r in await db.fetch(q, tenant, tenant, *args))
                         for q in (items_sql, totals_sql)]
    head = json.dumps({"tenant": tenant, "year": year, "granularity": granularity, "by": by},
                      ensure_ascii=False, separators=(",", ":"))
    return f'{head[:-1]},"items":[{items}],"totals":[{totals}]}}'.encode()


async def dashboard_figures(db: Any, tenant: str, year: int, granularity: Granularity, tz_offset_min: int, *,
                            by: By = "site") -> dict[str, Any]:
    """``dashboard_json`` parsed, for callers in Python."""
    return json.loads(await dashboard_json(db, tenant, year, granularity, tz_offset_min, by=by))  # type: ignore[no-any-return]
