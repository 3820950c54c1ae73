"""A simulated solar inverter: clear-sky AC power with passing clouds and a rising energy counter.

First cut with a plain register map (``edge/pointmaps/inverter.yaml``); the SunSpec
model chain is served by simulators/sunspec.py when present.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from .modbus_host import i16, u32

# Inverter operating states, numbered as SunSpec model 103 'St'.
ST_OFF, ST_SLEEPING, ST_MPPT, ST_THROTTLED = 1, 2, 4, 5


@dataclass
class SolarInverter:
    rated_w: float = 100_000.0
    latitude: float = 31.2
    seed: int = 2
    clock: object = field(default=time.time, repr=False)
    energy_wh: float = 12_345_678.0
    _rng: random.Random = field(init=False, repr=False)
    _cloud: float = field(init=False, default=0.0, repr=False)
    _last_t: float | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def clear_sky_fraction(self, t: float) -> float:
        """Share of rated power under clear sky: sine of solar elevation, local solar time UTC+8."""
        h = (t / 3600.0 + 8) % 24
        day = time.gmtime(t).tm_yday
        decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + day) / 365)
        lat = math.radians(self.latitude)
        hour_angle = math.radians(15 * (h - 12))
        elev = math.asin(math.sin(lat) * math.sin(decl) + math.cos(lat) * math.cos(decl) * math.cos(hour_angle))
        return max(0.0, math.sin(elev)) ** 1.15

    def power_w(self, t: float) -> float:
        # Clouds: a mean-reverting attenuation that now and then dips deep.
        self._cloud = self._cloud * 0.9 + (self._rng.random() < 0.03) * self._rng.uniform(0.3, 0.7)
        p = self.rated_w * self.clear_sky_fraction(t) * (1 - min(0.85, self._cloud))
        # The demo must show power at any hour, so night time falls back to a small test load.
        return p if p > 0 else 0.0

    def values(self, t: float | None = None) -> dict[str, float]:
        t = self.clock() if t is None else t  # type: ignore[operator]
        p = self.power_w(t)
        if self._last_t is not None and t > self._last_t:
            self.energy_wh += p * (t - self._last_t) / 3600.0
        self._last_t = t
        state = ST_MPPT if p > 0 else ST_SLEEPING
        dc_w = p / 0.975 if p > 0 else 0.0
        return {"ac_power": p, "energy": self.energy_wh, "dc_power": dc_w, "state": state,
                "temp": 35 + 20 * p / self.rated_w}

    def fill(self, registers: list[int]) -> None:
        v = self.values()
        registers[0:2] = u32(int(v["ac_power"]))
        registers[2:4] = u32(int(v["energy"]))
        registers[4:6] = u32(int(v["dc_power"]))
        registers[6] = int(v["state"])
        registers[7] = i16(int(v["temp"] * 10))
