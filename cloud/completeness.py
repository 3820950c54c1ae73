"""Completeness: which batches never arrived, which came late, and how much of each hour is there.

- Sequence gaps: gateways number batches 1, 2, 3, ...; a seq below the highest stored one that is
  not stored is a batch the cloud does not have (still in an outbox, or lost).
- Late batches: received long after they were created, i.e. replayed from an outbox (backfill).
- Availability: per point and hour, readings received against readings expected from the point's
  observed poll interval (the median spacing of its readings within hours), the figure a
  compliance report starts from; HJ 76 validity is applied on top of it by cloud/rollups.py.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from carbonlink.kernel.wire import format_ts

from .rollups import HOUR_MS
from .store import SeriesQuery, Store

DEFAULT_LATE_MS = 5 * 60_000


async def seq_gaps(store: Store, gateway: str, limit: int = 1000) -> dict[str, Any]:
    return await store.data.seq_gaps(gateway, limit)


async def late_batches(store: Store, gateway: str, min_delay_ms: int = DEFAULT_LATE_MS,
                       limit: int = 1000) -> list[dict[str, Any]]:
    rows = await store.data.late_batches(gateway, min_delay_ms, limit)
    for r in rows:
        r["created"], r["received"] = format_ts(r["created_ms"]), format_ts(r["received_ms"])
    return rows


def observed_interval_ms(hours: list[dict[str, Any]]) -> int | None:
    """Median spacing of readings inside each hour that has at least two; None when unknown."""
    spacings = [(int(h["last_ms"]) - int(h["first_ms"])) / (int(h["n"]) - 1) for h in hours if int(h["n"]) >= 2]
    spacings = [s for s in spacings if s > 0]
    return max(1, round(statistics.median(spacings))) if spacings else None


async def availability(store: Store, q: SeriesQuery, interval_ms: int | None = None) -> list[dict[str, Any]]:
    """Per point series: every hour of [start, end) with expected, received and valid reading counts."""
    start, end = q.start_ms // HOUR_MS * HOUR_MS, -(-q.end_ms // HOUR_MS) * HOUR_MS
    rows = await store.data.hour_rollups(dataclasses.replace(q, start_ms=start, end_ms=end))  # keeps q.tenant
    series: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
    for r in rows:
        series.setdefault((r["gateway"], r["point"]), []).append(r)
    if not series and q.point is not None:
        series[(q.gateway, q.point)] = []  # asked for one point and nothing came: every hour is missing
    out = []
    for (gateway, point), hours in series.items():
        interval = interval_ms or observed_interval_ms(hours)
        per_hour = {int(h["hour_ms"]): h for h in hours}
        expected_each = HOUR_MS // interval if interval else None
        table: list[dict[str, Any]] = []
        for t in range(start, end, HOUR_MS):
            h = per_hour.get(t)
            received, valid = (int(h["n"]), int(h["q_n"])) if h else (0, 0)
            table.append({"start_ms": t, "start": format_ts(t), "expected": expected_each, "received": received,
                          "valid": valid,
                          "availability": min(1.0, received / expected_each) if expected_each else None})
        expected_total = expected_each * len(table) if expected_each else None
        received_total = sum(h["received"] for h in table)
        out.append({
            "gateway": gateway, "device": q.device, "point": point, "interval_ms": interval,
            "expected": expected_total, "received": received_total,
            "valid": sum(h["valid"] for h in table),
            "availability": min(1.0, received_total / expected_total) if expected_total else None,
            "missing_hours": sum(1 for h in table if h["received"] == 0), "hours": table,
        })
    return out
