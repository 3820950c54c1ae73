"""A simulated CEMS stack: a coal boiler's flue gas following a daily load curve.

Concentrations follow load with slow noise; NOx is reported as NO and NO2
(the analyser's view) and the DAHS's NOx-as-NO2 (HJ 75-2017 App. A:
C_NO·46/30 + C_NO2). Register layout: ``edge/pointmaps/cems.yaml``.

Faults live in this one model (``CemsStack.faults``) so every protocol the stack
is served over shows the same fault at the same time:

* drift (a share of the value per hour, growing since set), stuck values, spikes
  (one sample multiplied by a factor): in the values themselves;
* the operating mode, calibration / maintenance / fault: the status register on
  Modbus, a status code on OPC-UA, the data flag C / M / D on HJ 212. During
  calibration the gas analysers read span gas, during maintenance ambient air:
  plausible numbers that only the flag tells apart;
* communication loss, exception replies, a wrong map (every channel off by one),
  a restart: applied by each transport (simulators/modbus_host.py, cems_opcua.py,
  hj212_client.py).
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .modbus_host import HostFaults, f32

# Holding-register layout, float32 big-endian, two registers each; the status register follows.
LAYOUT = ["so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp", "pressure", "moisture", "load"]
STATUS_REGISTER = 2 * len(LAYOUT)  # 24, uint16
ANALYSER = ("so2", "nox", "no", "no2", "o2", "co2", "dust")  # what drift and spikes act on

# Span gas during calibration (mg/m³, %): what an analyser reads while the DAHS is calibrating it.
CAL_GAS = {"so2": 143.0, "no": 67.0, "no2": 0.0, "o2": 0.0, "co2": 15.0, "dust": 0.0}
# Ambient air through the probe during maintenance (sample line open).
AIR = {"so2": 0.0, "no": 0.0, "no2": 0.0, "o2": 20.9, "co2": 0.04, "dust": 0.0}


class Mode(enum.IntEnum):
    """The stack's operating status, as written to the Modbus status register."""

    NORMAL = 0
    CALIBRATION = 1
    MAINTENANCE = 2
    FAULT = 3


# HJ 212-2017 data flag for each mode (facts.md: N normal, C calibration, M maintenance, D fault).
MODE_FLAG = {Mode.NORMAL: "N", Mode.CALIBRATION: "C", Mode.MAINTENANCE: "M", Mode.FAULT: "D"}


@dataclass
class CemsFaults(HostFaults):
    """Every fault of the CEMS stack; the Modbus host reads the transport fields directly."""

    mode: Mode = Mode.NORMAL
    stuck: bool = False
    drift_per_h: float = 0.0  # analyser values grow by this share per hour since drift_since
    drift_since: float = 0.0
    spike_rate: float = 0.0  # probability that one sample's analyser values are multiplied by spike_factor
    spike_factor: float = 3.0
    restart_epoch: int = 0  # bumped on every restart; HJ 212 uploads drop their connection when it moves
    down_until: float = 0.0  # monotonic: the device is restarting until then

    @property
    def wrong_map(self) -> bool:
        return self.map_shift > 0

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until

    def check(self) -> None:
        super().check()
        if not 0 <= self.spike_rate <= 1:
            raise ValueError("spike rate is a probability, 0-1")
        if not -10 <= self.drift_per_h <= 10:
            raise ValueError("drift is a share per hour, -10 to 10")


@dataclass
class CemsStack:
    seed: int = 1
    rated_flow_m3s: float = 120.0
    clock: Callable[[], float] = field(default=time.time, repr=False)
    faults: CemsFaults = field(default_factory=CemsFaults)
    _rng: random.Random = field(init=False, repr=False)
    _walk: dict[str, float] = field(init=False, repr=False)
    _frozen: dict[str, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._walk = dict.fromkeys(LAYOUT, 0.0)

    # --- faults at run time -------------------------------------------------------------
    def set_mode(self, mode: Mode | int | str) -> None:
        self.faults.mode = Mode[mode.upper()] if isinstance(mode, str) else Mode(mode)

    def drift(self, per_h: float) -> None:
        self.faults.drift_per_h = per_h
        self.faults.drift_since = self.clock()
        self.faults.check()

    def begin_restart(self, down_s: float) -> None:
        """Mark a restart so that pushing transports (HJ 212) drop their link and stay away ``down_s``."""
        self.faults.restart_epoch += 1
        self.faults.down_until = time.monotonic() + down_s

    def clear_faults(self) -> None:
        """Back to normal, in place: transports hold this very CemsFaults object."""
        f = self.faults
        keep = (f.restart_epoch, f.down_until)  # a restart under way finishes; the epoch never goes back
        for name, value in vars(CemsFaults()).items():
            setattr(f, name, value)
        f.restart_epoch, f.down_until = keep
        self._frozen = None

    # --- the model ------------------------------------------------------------------------
    def load(self, t: float) -> float:
        """Boiler load 0.55-1.0: low at night, peaks mid-morning and evening (local hours)."""
        h = (t / 3600.0 + 8) % 24  # China Standard Time
        return 0.775 + 0.15 * math.sin((h - 6) / 24 * 2 * math.pi) + 0.075 * math.sin((h - 3) / 12 * 2 * math.pi)

    def _noise(self, name: str, scale: float) -> float:
        w = self._walk[name] * 0.95 + self._rng.gauss(0, scale)  # mean-reverting wander
        self._walk[name] = w
        return w

    def true_values(self, t: float) -> dict[str, float]:
        """The flue gas as it is, before any fault."""
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

    def values(self, t: float | None = None) -> dict[str, float]:
        """What the analysers and the DAHS report now, faults included."""
        t = self.clock() if t is None else t
        f = self.faults
        if f.stuck and self._frozen is not None:
            return dict(self._frozen)
        v = self.true_values(t)
        if f.mode in (Mode.CALIBRATION, Mode.MAINTENANCE):
            v |= CAL_GAS if f.mode is Mode.CALIBRATION else AIR
            v["nox"] = v["no"] * 46 / 30 + v["no2"]
        if f.drift_per_h:
            k = 1 + f.drift_per_h * max(0.0, t - f.drift_since) / 3600
            for name in ANALYSER:
                v[name] *= k
        if f.spike_rate and self._rng.random() < f.spike_rate:
            for name in ANALYSER:
                v[name] *= f.spike_factor
        self._frozen = dict(v) if f.stuck else None
        return v

    def status(self) -> int:
        return int(self.faults.mode)

    def flag(self) -> str:
        """The HJ 212 data flag every value of the stack carries now."""
        return MODE_FLAG[self.faults.mode]

    def fill(self, registers: list[int]) -> None:
        v = self.values()
        for i, name in enumerate(LAYOUT):
            registers[2 * i : 2 * i + 2] = f32(v[name])
        registers[STATUS_REGISTER] = self.status()
