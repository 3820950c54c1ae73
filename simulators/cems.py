"""A simulated CEMS stack: a coal boiler's flue gas following a daily load curve.

Concentrations follow load with slow noise; NOx is reported as NO and NO2
(the analyser's view) and the DAHS's NOx-as-NO2 (HJ 75-2017 App. A:
C_NO·46/30 + C_NO2). Register layout: ``edge/pointmaps/cems.yaml``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from .modbus_host import f32

# Holding-register layout, float32 big-endian, two registers each.
LAYOUT = ["so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp", "pressure", "moisture", "load"]


@dataclass
class CemsStack:
    seed: int = 1
    rated_flow_m3s: float = 120.0
    clock: object = field(default=time.time, repr=False)
    _rng: random.Random = field(init=False, repr=False)
    _walk: dict[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._walk = dict.fromkeys(LAYOUT, 0.0)

    def load(self, t: float) -> float:
        """Boiler load 0.55-1.0: low at night, peaks mid-morning and evening (local hours)."""
        h = (t / 3600.0 + 8) % 24  # China Standard Time
        return 0.775 + 0.15 * math.sin((h - 6) / 24 * 2 * math.pi) + 0.075 * math.sin((h - 3) / 12 * 2 * math.pi)

    def _noise(self, name: str, scale: float) -> float:
        w = self._walk[name] * 0.95 + self._rng.gauss(0, scale)  # mean-reverting wander
        self._walk[name] = w
        return w

    def values(self, t: float | None = None) -> dict[str, float]:
        t = self.clock() if t is None else t  # type: ignore[operator]
        ld = self.load(t)
        no = max(0.0, 95 * ld + self._noise("no", 2.0))
        no2 = max(0.0, 6 * ld + self._noise("no2", 0.3))
        o2 = min(20.0, max(2.0, 6.5 + 2.0 * (1 - ld) + self._noise("o2", 0.05)))
        return {
            "so2": max(0.0, 28 * ld + self._noise("so2", 0.8)),
            "nox": no * 46 / 30 + no2,
            "no": no,
            "no2": no2,
            "o2": o2,
            "co2": max(0.0, 12.5 * ld + self._noise("co2", 0.05)),
            "dust": max(0.0, 4.0 * ld + self._noise("dust", 0.1)),
            "flow": max(0.0, self.rated_flow_m3s * ld + self._noise("flow", 0.5)),
            "temp": 48 + 12 * ld + self._noise("temp", 0.2),
            "pressure": 101.3 + 0.8 * ld + self._noise("pressure", 0.02),
            "moisture": max(0.0, 9.5 + self._noise("moisture", 0.05)),
            "load": ld * 100,
        }

    def fill(self, registers: list[int]) -> None:
        v = self.values()
        for i, name in enumerate(LAYOUT):
            registers[2 * i : 2 * i + 2] = f32(v[name])
