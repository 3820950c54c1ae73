"""Hour rollups of a simulated stack written straight into the store's ``rollup_hour`` (tests, bench)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from carbonlink.cloud.carbon.cems import HourValue
from carbonlink.cloud.store.model import FLAG_COLS

# the roles' points as a stack's gateway publishes them, in the units the rollups keep
POINTS = {"flow": ("flow", "m³/h"), "temp": ("temp", "°C"), "p_static": ("pressure", "Pa"),
          "moisture": ("moisture", "%"), "o2": ("o2", "%"), "co2": ("co2", "%"), "so2": ("so2", "mg/m³"),
          "nox": ("nox", "mg/m³"), "dust": ("dust", "mg/m³")}


async def add_series(db: Any, gateway: str, device: str) -> dict[str, int]:
    for point, unit in POINTS.values():
        await db.execute("INSERT INTO series (gateway, device, point, unit, created_ms) VALUES (?, ?, ?, ?, 0)",
                         gateway, device, point, unit)
    rows = await db.fetch("SELECT id, point FROM series WHERE gateway = ? AND device = ?", gateway, device)
    ids = {r["point"]: int(r["id"]) for r in rows}
    return {role: ids[point] for role, (point, _) in POINTS.items()}


def rollup_rows(series: Mapping[str, int], hours: Mapping[int, Mapping[str, HourValue]]) -> list[tuple[Any, ...]]:
    """One rollup row per role and hour: 60 readings, all flagged N; an invalid hour has 30 valid minutes."""
    out = []
    flags = len(FLAG_COLS)
    for t, row in sorted(hours.items()):
        hour_ms = t * 1000
        for role, sid in series.items():
            hv = row[role]
            v = float(hv.value) if hv.value is not None else 0.0
            minutes = 60 if hv.valid else 30
            out.append((sid, hour_ms, 60, 60, *([0] * (flags - 1)), v, v, v * 60, minutes, hour_ms,
                        hour_ms + 3_599_000))
    return out


async def write_rollups(db: Any, rows: list[tuple[Any, ...]]) -> None:
    cols = ("series", "hour_ms", "n", *FLAG_COLS, "vmin", "vmax", "vsum", "valid_minutes", "first_ms", "last_ms")
    marks = ", ".join("?" * len(cols))
    await db.executemany(f"INSERT INTO rollup_hour ({', '.join(cols)}) VALUES ({marks})", rows)


def as_decimal(x: float) -> Decimal:
    return Decimal(repr(x))
