"""Figures the benches print from samples."""

from __future__ import annotations

from collections.abc import Sequence


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """Count, median, 99th percentile (nearest rank below) and maximum of ``values``; zeros when there are none."""
    if not values:
        return {"n": 0, "p50_ms": 0, "p99_ms": 0, "max_ms": 0}
    v = sorted(values)
    return {"n": len(v), "p50_ms": v[len(v) // 2], "p99_ms": v[min(len(v) - 1, int(len(v) * 0.99))], "max_ms": v[-1]}
