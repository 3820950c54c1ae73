"""Tonnes so far, from the raw readings of a short run (the demo's summary), before any hour is complete.

The accounts proper are built from complete, valid hours (HJ 76); a demo of a minute has none. This gives
provisional figures from the same formulas, marked as such:

* emitted: each CEMS poll's dry standard flow and CO2 (HJ 75 App. A) as a rate, over the time to the
  next poll (at most ``max_gap_s``), summed; flagged polls (not N) are left out;
* avoided: the inverters' energy counters (``energy.account_counter``) × the grid factor of the year
  (the newest published factor as a marked proxy when the year has none yet);
* sequestered: each tree's dendrometer growth (``forest.account_tree``) with the species given, or the
  generic IPCC entry, for trees with at least a day of readings (less shows the daily swell, not growth).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from itertools import pairwise
from typing import Any

from . import formulas as fm
from .cems import normalise
from .energy import CounterConfig, CounterReading, PowerReading, account_counter, grid_emissions, year_of
from .errors import CarbonInputError
from .factors import FactorSet
from .forest import DendroReading, TreeConfig, account_tree

HOUR_MS = 3_600_000
CEMS_POINTS = {"flow": "flow", "temp": "temp", "pressure": "p_static", "moisture": "moisture", "co2": "co2"}


async def _rows(db: Any, gateway: str, device: str, start_ms: int, end_ms: int) -> list[dict[str, Any]]:
    return await db.fetch(  # type: ignore[no-any-return]
        "SELECT s.point, s.unit, r.ts_ms, r.value, r.quality FROM readings r JOIN series s ON s.id = r.series"
        " WHERE s.gateway = ? AND s.device = ? AND r.ts_ms >= ? AND r.ts_ms < ? ORDER BY r.ts_ms",
        gateway, device, start_ms, end_ms)


async def emitted_t(db: Any, gateway: str, device: str, start_ms: int, end_ms: int, *,
                    p_atm_pa: Decimal = fm.P0_PA, max_gap_s: int = 10) -> Decimal:
    polls: dict[int, dict[str, Decimal]] = {}
    for r in await _rows(db, gateway, device, start_ms, end_ms):
        role = CEMS_POINTS.get(r["point"])
        if role is None or r["quality"] != "N":
            continue
        polls.setdefault(int(r["ts_ms"]), {})[role] = normalise(
            role, Decimal(repr(float(r["value"]))), r["unit"], pressure_kind="absolute", p_atm_pa=p_atm_pa)
    times = sorted(t for t, v in polls.items() if len(v) == len(CEMS_POINTS))
    total = Decimal(0)
    for t0, t1 in pairwise(times):
        v = polls[t0]
        dt_h = Decimal(min(t1 - t0, max_gap_s * 1000)) / HOUR_MS
        try:
            q = fm.std_dry_flow(v["flow"], v["temp"], v["p_static"], p_atm_pa, v["moisture"])
            total += fm.co2_cems(v["co2"], q, dt_h)
        except CarbonInputError:
            continue  # an implausible poll (e.g. ambient air) is not counted
    return fm.round_fixed(total, 6)


async def avoided_t(db: Any, gateway: str, device: str, start_ms: int, end_ms: int, *, rated_w: Decimal,
                    factors: FactorSet | None = None, tz_offset_min: int = 480) -> tuple[Decimal, Decimal]:
    """(t CO2 avoided, MWh) from an inverter's energy counter (point ``energy``, Wh) and power (``ac_power``)."""
    rows = await _rows(db, gateway, device, start_ms, end_ms)
    counter = [CounterReading(int(r["ts_ms"]), Decimal(repr(float(r["value"]))), r["quality"] == "N")
               for r in rows if r["point"] == "energy"]
    power = [PowerReading(int(r["ts_ms"]), Decimal(repr(float(r["value"]))), r["quality"] == "N")
             for r in rows if r["point"] == "ac_power"]
    if len(counter) < 2:
        return Decimal(0), Decimal(0)
    a = counter[0].ts_ms - counter[0].ts_ms % HOUR_MS
    b = counter[-1].ts_ms - counter[-1].ts_ms % HOUR_MS + HOUR_MS
    period = account_counter(CounterConfig(device, rated_w), counter, power, start_ms=a, end_ms=b)
    # only what the counter measured: the hours around the run are not estimated here
    measured = type(period)(period.device_id, a, b, [type(h)(h.hour_ms, h.wh, Decimal(0)) for h in period.hours],
                            period.steps)
    fs = factors or FactorSet.default()
    t, _ = grid_emissions(measured, fs, tz_offset_min=tz_offset_min, latest_as_proxy=True)
    return t, measured.mwh


async def sequestered_t(db: Any, gateway: str, trees: Mapping[str, TreeConfig], start_ms: int,
                        end_ms: int, *, min_span_ms: int = 86_400_000) -> Decimal:
    total = Decimal(0)
    for device, cfg in trees.items():
        rows = [r for r in await _rows(db, gateway, device, start_ms, end_ms) if r["point"] == "dendrometer"]
        if not rows:
            continue
        if int(rows[-1]["ts_ms"]) - int(rows[0]["ts_ms"]) < min_span_ms:
            continue  # stems swell and shrink by the hour: growth needs a day of readings to be seen
        rs = [DendroReading(int(r["ts_ms"]), Decimal(repr(float(r["value"]))), r["quality"] == "N") for r in rows]
        try:
            total += account_tree(cfg, rs, start_ms=start_ms, end_ms=end_ms).co2_t
        except CarbonInputError:
            continue
    return total


def year_label(ts_ms: int, tz_offset_min: int = 480) -> int:
    return year_of(ts_ms, tz_offset_min)
