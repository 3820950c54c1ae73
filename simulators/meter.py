"""A simulated electricity meter: the power a site buys from the grid and its import energy counter.

For scope-2 accounting. The load is a function of (seed, time): a base load, a working-day shape in
local time (UTC+8) and deterministic wander; the counter is the exact integral of the power sampled on a
10-second grid, so ``energy_between(t0, t1)`` is the right answer for any two instants, however often the
meter was read. Served over Modbus TCP with ``ModbusDeviceHost(meter.fill, …)``; the register layout is
``POINTS`` (a ``points:`` list for a ``modbus_tcp`` device in gateway.yaml).

Registers (holding, big-endian): 0-1 active power, float32 kW; 2-3 import energy, uint32 in units of
0.01 kWh (wraps at 42,949,672.95 kWh, as such counters do).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .clock import wall_clock
from .modbus_host import f32, u32
from .noise import SmoothNoise

GRID_S = 10.0
COUNTER_UNIT_KWH = 0.01
COUNTER_WRAP = 2**32
POINTS: list[dict[str, Any]] = [
    {"name": "power", "register": 0, "type": "float32", "unit": "kW"},
    {"name": "import_energy", "register": 2, "type": "uint32", "scale": COUNTER_UNIT_KWH, "unit": "kWh"},
]


@dataclass
class ElectricityMeter:
    base_kw: float = 400.0  # night-time load
    peak_kw: float = 900.0  # added at the middle of a working day
    seed: int = 3
    clock: Callable[[], float] = field(default=wall_clock, repr=False)
    import_kwh: float = 1_234_567.0  # the counter as the meter shows it
    _noise: SmoothNoise = field(init=False, repr=False)
    _last_t: float | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.base_kw < 0 or self.peak_kw < 0:
            raise ValueError("loads must be 0 or more kW")
        self._noise = SmoothNoise(f"meter-{self.seed}", knot_s=60.0)
        self.bought_kwh = 0.0  # everything imported since the model started (the right answer)
        self._grid_cache: dict[int, float] = {}

    def _grid_kw(self, k: int) -> float:
        p = self._grid_cache.get(k)
        if p is None:
            if len(self._grid_cache) > 50_000:
                self._grid_cache.clear()
            p = self._grid_cache[k] = self._grid_kw_at(k)
        return p

    def _grid_kw_at(self, k: int) -> float:
        t = k * GRID_S
        h = (t / 3600.0 + 8) % 24
        shape = max(0.0, math.sin(math.pi * (h - 7.0) / 12.0)) if 7.0 <= h <= 19.0 else 0.0
        return max(0.0, self.base_kw + self.peak_kw * shape + 0.03 * (self.base_kw + self.peak_kw)
                   * self._noise("load", t))

    def power_kw(self, t: float) -> float:
        x = t / GRID_S
        k = math.floor(x)
        p0, p1 = self._grid_kw(k), self._grid_kw(k + 1)
        return p0 + (p1 - p0) * (x - k)

    def energy_between(self, t0: float, t1: float) -> float:
        """kWh imported in [t0, t1]: the integral of the piecewise-linear power (exact, any t0 < t1)."""
        if t1 < t0:
            raise ValueError("t1 before t0")
        k0, k1 = math.floor(t0 / GRID_S), math.floor(t1 / GRID_S)
        if k0 == k1:
            return (self.power_kw(t0) + self.power_kw(t1)) / 2 * (t1 - t0) / 3600.0
        kwh = (self.power_kw(t0) + self._grid_kw(k0 + 1)) / 2 * ((k0 + 1) * GRID_S - t0)
        for k in range(k0 + 1, k1):
            kwh += (self._grid_kw(k) + self._grid_kw(k + 1)) / 2 * GRID_S
        kwh += (self._grid_kw(k1) + self.power_kw(t1)) / 2 * (t1 - k1 * GRID_S)
        return kwh / 3600.0

    def values(self, t: float | None = None) -> dict[str, float]:
        t = self.clock() if t is None else t
        if self._last_t is not None and t > self._last_t:
            step = self.energy_between(self._last_t, t)
            self.import_kwh += step
            self.bought_kwh += step
        if self._last_t is None or t > self._last_t:
            self._last_t = t
        return {"power": self.power_kw(t), "import_energy": self.import_kwh}

    def fill(self, registers: list[int]) -> None:
        v = self.values()
        registers[0:2] = f32(v["power"])
        registers[2:4] = u32(round(v["import_energy"] / COUNTER_UNIT_KWH) % COUNTER_WRAP)
