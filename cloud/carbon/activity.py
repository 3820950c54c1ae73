"""Fuel and activity data without a meter: a CSV upload, validated row by row.

Columns (header required, UTF-8, comma separated; a BOM is accepted):
``date`` (YYYY-MM-DD, the day the fuel was burnt or the month's first day), ``site``, ``source`` (a stack
or ``site``), ``fuel`` (a code of the fuel table), ``quantity`` (≥ 0, in the fuel's unit: t, or 10⁴ Nm³
for gas), ``unit`` (must equal the fuel's unit) and, optionally, measured ``ncv`` (GJ per unit), ``cc``
(t C/GJ) and ``oxidation`` (fraction) that replace the table's defaults for that row, and ``note``.

Each bad row becomes an error with its row number, the column, the problem and the fix; no figure is
computed from a bad row. A file with any error is refused whole by callers that store it (``ok`` is
False), so a corrected file can simply be uploaded again. Size is bounded (``MAX_BYTES``, ``MAX_ROWS``).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from . import formulas as fm
from .errors import CarbonInputError
from .factors import FactorRef, FactorSet

MAX_BYTES = 2_000_000
MAX_ROWS = 20_000
REQUIRED = ("date", "site", "source", "fuel", "quantity", "unit")
OPTIONAL = ("ncv", "cc", "oxidation", "note")


@dataclass(frozen=True)
class RowError:
    row: int  # 1 = the header line; data rows start at 2, as a spreadsheet numbers them
    column: str
    problem: str
    fix: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "problem": self.problem, "fix": self.fix}


@dataclass(frozen=True)
class ActivityRow:
    row: int
    date: dt.date
    site: str
    source: str
    fuel: str
    quantity: Decimal
    unit: str
    ncv: FactorRef | Decimal
    cc: FactorRef | Decimal
    oxidation: FactorRef | Decimal
    co2_t: Decimal
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        def v(x: FactorRef | Decimal) -> str:
            return str(x.value if isinstance(x, FactorRef) else x)

        return {"row": self.row, "date": self.date.isoformat(), "site": self.site, "source": self.source,
                "fuel": self.fuel, "quantity": str(self.quantity), "unit": self.unit, "ncv": v(self.ncv),
                "cc": v(self.cc), "oxidation": v(self.oxidation),
                "measured": [k for k in ("ncv", "cc", "oxidation") if not isinstance(getattr(self, k), FactorRef)],
                "co2_t": str(self.co2_t), "note": self.note}


@dataclass(frozen=True)
class ActivityResult:
    rows: list[ActivityRow] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": [r.as_dict() for r in self.rows], "errors": [e.as_dict() for e in self.errors]}


def _decimal(text: str) -> Decimal | None:
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() and abs(d.adjusted()) <= 15 else None


def parse_activity_csv(data: bytes, factors: FactorSet | None = None) -> ActivityResult:
    """Every row checked; valid rows come with their CO2 (t, 1 g resolution)."""
    fs = factors or FactorSet.default()
    if len(data) > MAX_BYTES:
        return ActivityResult(errors=[RowError(0, "-", f"{len(data):,} bytes is over {MAX_BYTES:,}",
                                               "split the file by month")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ActivityResult(errors=[RowError(0, "-", f"not UTF-8 (byte {exc.start})", "save the file as UTF-8")])
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except (StopIteration, csv.Error):
        return ActivityResult(errors=[RowError(1, "-", "no header line", "start with: " + ",".join(REQUIRED))])
    missing = [c for c in REQUIRED if c not in header]
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        problem = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "",
                                          f"unknown {', '.join(unknown)}" if unknown else "",
                                          "a column twice" if len(set(header)) != len(header) else ""]))
        return ActivityResult(errors=[RowError(1, "header", problem,
                                               f"columns: {', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}")])
    rows: list[ActivityRow] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    n = 1
    try:
        for n, cells in enumerate(reader, start=2):
            if n - 1 > MAX_ROWS:
                errors.append(RowError(n, "-", f"more than {MAX_ROWS:,} rows", "split the file by month"))
                break
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                errors.append(RowError(n, "-", f"{len(cells)} cells, the header has {len(header)}",
                                       "give every column (empty optional cells are fine)"))
                continue
            row = dict(zip(header, (c.strip() for c in cells), strict=True))
            parsed = _row(n, row, fs, errors)
            if parsed is None:
                continue
            key = (parsed.date.isoformat(), parsed.site, parsed.source, parsed.fuel)
            if key in seen:
                errors.append(RowError(n, "date", f"same day, site, source and fuel as row {seen[key]}",
                                       "add the quantities into one row, or correct the date"))
                continue
            seen[key] = n
            rows.append(parsed)
    except csv.Error as exc:
        errors.append(RowError(n + 1, "-", f"unreadable CSV ({exc})", "check quoting on that line"))
    return ActivityResult(rows, errors)


def _row(n: int, row: dict[str, str], fs: FactorSet, errors: list[RowError]) -> ActivityRow | None:
    before = len(errors)
    try:
        date = dt.date.fromisoformat(row["date"])
        if not 2000 <= date.year <= 2100:
            raise ValueError
    except ValueError:
        errors.append(RowError(n, "date", f"{row['date']!r} is not a date", "write it as YYYY-MM-DD, e.g. 2024-03-01"))
        date = None  # type: ignore[assignment]
    for col in ("site", "source"):
        if not row[col] or len(row[col]) > 128:
            errors.append(RowError(n, col, "empty or over 128 characters", f"give the {col} id"))
    fuel = None
    try:
        fuel = fs.fuel(row["fuel"])
    except CarbonInputError as exc:
        errors.append(RowError(n, "fuel", f"{row['fuel']!r} is {exc.problem}", exc.fix))
    qty = _decimal(row["quantity"])
    if qty is None or qty < 0:
        errors.append(RowError(n, "quantity", f"{row['quantity']!r} is not a quantity ≥ 0",
                               "give the amount burnt as a non-negative number"))
    if fuel is not None and row["unit"] != fuel.unit:
        errors.append(RowError(n, "unit", f"{row['unit']!r} does not match fuel {fuel.code} (per {fuel.unit})",
                               f"give the quantity in {fuel.unit}"))
    measured: dict[str, Decimal] = {}
    for col, lo, hi in (("ncv", 0, 1000), ("cc", 0, Decimal("0.2")), ("oxidation", 0, 1)):
        text = row.get(col, "")
        if text:
            d = _decimal(text)
            if d is None or not lo < d <= hi:
                hint = {"ncv": "GJ per fuel unit", "cc": "t C/GJ (26.18 t C/TJ is 0.02618)",
                        "oxidation": "a fraction (98 % is 0.98)"}[col]
                errors.append(RowError(n, col, f"{text!r} is outside ({lo}, {hi}]", f"give {col} in {hint}"))
            else:
                measured[col] = d
    if len(errors) > before or fuel is None or qty is None or date is None:
        return None
    ncv: FactorRef | Decimal = measured.get("ncv", fuel.ncv)
    cc: FactorRef | Decimal = measured.get("cc", fuel.cc)
    ox: FactorRef | Decimal = measured.get("oxidation", fuel.oxidation)

    def val(x: FactorRef | Decimal) -> Decimal:
        return x.value if isinstance(x, FactorRef) else x

    co2 = fm.round_fixed(fm.co2_fuel(qty, val(ncv), val(cc), val(ox)), 6)
    return ActivityRow(n, date, row["site"], row["source"], fuel.code, qty, fuel.unit, ncv, cc, ox, co2,
                       row.get("note", "")[:500])
