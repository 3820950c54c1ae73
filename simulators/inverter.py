"""A simulated solar inverter: clear-sky AC power with passing clouds and a rising energy counter.

First cut with a plain register map (``edge/pointmaps/inverter.yaml``); the SunSpec
model chain is served by simulators/sunspec.py when present.

The model is a function of (seed, time): clouds are deterministic noise, and energy is the exact
integral of the power curve sampled on a fixed 10-second grid (linear in between), so the counter's
rise between two instants is the same however often it was read, and ``energy_between(t0, t1)`` is the
right answer a test compares accounts with. ``produced_wh`` counts everything produced since the model
started, through counter resets, wraps and a replacement (``replace``), which the counter does not.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .clock import wall_clock
from .modbus_host import i16, u32
from .noise import SmoothNoise

# Inverter operating states, numbered as SunSpec model 103 'St'.
ST_OFF, ST_SLEEPING, ST_MPPT, ST_THROTTLED = 1, 2, 4, 5
GRID_S = 10.0  # power is sampled on this grid; energy integrates the line through the samples
WRAP_WH = 2.0**32  # SunSpec acc32 energy counters wrap here (with WH_SF 0)


@dataclass
class SolarInverter:
    rated_w: float = 100_000.0
    latitude: float = 31.2
    seed: int = 2
    clock: Callable[[], float] = field(default=wall_clock, repr=False)
    energy_wh: float = 12_345_678.0  # the counter as the device shows it
    serial: str = ""  # changes when the device is replaced
    _noise: SmoothNoise = field(init=False, repr=False)
    _last_t: float | None = field(init=False, default=None, repr=False)
    _cum_k: int | None = field(init=False, default=None, repr=False)
    _cum_wh: float = field(init=False, default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._noise = SmoothNoise(self.seed, knot_s=30.0)
        self.produced_wh = 0.0
        self._grid_cache: dict[int, float] = {}
        self.serial = self.serial or f"SIM-{self.seed}"

    def clear_sky_fraction(self, t: float) -> float:
        """Share of rated power under clear sky: sine of solar elevation, local solar time UTC+8."""
        h = (t / 3600.0 + 8) % 24
        day = time.gmtime(t).tm_yday
        decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + day) / 365)
        lat = math.radians(self.latitude)
        hour_angle = math.radians(15 * (h - 12))
        elev = math.asin(math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
        return max(0.0, math.sin(elev)) ** 1.15

    def _grid_power(self, k: int) -> float:
        p = self._grid_cache.get(k)
        if p is None:
            if len(self._grid_cache) > 50_000:
                self._grid_cache.clear()
            p = self._grid_cache[k] = self._grid_power_at(k)
        return p

    def _grid_power_at(self, k: int) -> float:
        t = k * GRID_S
        # Clouds: now and then the deterministic noise rises past 1 and a cloud dims the panels by up to 85 %.
        cloud = min(0.85, max(0.0, self._noise("cloud", t) - 1.0) * 0.6)
        return self.rated_w * self.clear_sky_fraction(t) * (1 - cloud)

    def power_w(self, t: float) -> float:
        """AC power at ``t``: the line between the grid samples around it."""
        x = t / GRID_S
        k = math.floor(x)
        p0, p1 = self._grid_power(k), self._grid_power(k + 1)
        return max(0.0, p0 + (p1 - p0) * (x - k))

    def _integral_wh(self, t: float) -> float:
        """∫P dt from the model's first grid point to ``t`` (exact for the piecewise-linear power)."""
        k_t = math.floor(t / GRID_S)
        if self._cum_k is None or k_t < self._cum_k:
            self._cum_k, self._cum_wh = k_t, 0.0 if self._cum_k is None else self._integral_back(k_t)
        while self._cum_k < k_t:
            k = self._cum_k
            self._cum_wh += (self._grid_power(k) + self._grid_power(k + 1)) / 2 * GRID_S / 3600.0
            self._cum_k = k + 1
        k = self._cum_k
        frac = t - k * GRID_S
        return self._cum_wh + (self._grid_power(k) + self.power_w(t)) / 2 * frac / 3600.0

    def _integral_back(self, k_t: int) -> float:
        assert self._cum_k is not None
        wh = self._cum_wh
        for k in range(self._cum_k - 1, k_t - 1, -1):
            wh -= (self._grid_power(k) + self._grid_power(k + 1)) / 2 * GRID_S / 3600.0
        return wh

    def energy_between(self, t0: float, t1: float) -> float:
        """The energy produced in [t0, t1] (Wh): the right answer for the counter's rise."""
        start = self._integral_wh(t0)  # the earlier instant first: the running integral only moves forward
        return self._integral_wh(t1) - start

    def values(self, t: float | None = None) -> dict[str, float]:
        t = self.clock() if t is None else t
        p = self.power_w(t)
        if self._last_t is not None and t > self._last_t:
            step = self.energy_between(self._last_t, t)
            self.energy_wh += step
            self.produced_wh += step
        if self._last_t is None or t > self._last_t:
            self._last_t = t
        state = ST_MPPT if p > 0 else ST_SLEEPING
        dc_w = p / 0.975 if p > 0 else 0.0
        return {"ac_power": p, "energy": self.energy_wh, "dc_power": dc_w, "state": state,
                "temp": 35 + 20 * p / self.rated_w}

    def replace(self, counter_wh: float = 0.0, serial: str | None = None) -> None:
        """The inverter swapped for another unit: a new serial and that unit's own counter."""
        self.energy_wh = counter_wh
        self.serial = serial or f"{self.serial}-R"

    def fill(self, registers: list[int]) -> None:
        v = self.values()
        registers[0:2] = u32(int(v["ac_power"]))
        registers[2:4] = u32(int(v["energy"]))
        registers[4:6] = u32(int(v["dc_power"]))
        registers[6] = int(v["state"])
        registers[7] = i16(int(v["temp"] * 10))
