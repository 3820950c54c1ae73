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

from .clock import wall_clock
from .modbus_host import HostFaults, f32
from .noise import SmoothNoise

# Holding-register layout, float32 big-endian, two registers each; the status register follows.
LAYOUT = ["so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp", "pressure", "moisture", "load"]
STATUS_REGISTER = 2 * len(LAYOUT)  # 24, uint16
FUEL_REGISTER = STATUS_REGISTER + 1  # 25-26, float32 fuel feed in t/h (a plant's DCS value)
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


@dataclass(frozen=True)
class FuelProperties:
    """The fuel the simulated boiler burns, as a plant's lab would report it (defaults: the factor table's
    ``cn_raw_coal`` entry, so accounting with table defaults matches the simulator's truth)."""

    code: str = "cn_raw_coal"
    ncv_gj_t: float = 20.908  # net calorific value, GJ/t
    cc_tc_gj: float = 0.02618  # carbon content, t C/GJ
    oxidation: float = 0.98  # oxidation factor, fraction

    @property
    def t_co2_per_t(self) -> float:
        """CO2 per tonne burnt: NCV · CC · OF · 44/12 (IPCC 2006 Vol. 2 Eq. 2.1)."""
        return self.ncv_gj_t * self.cc_tc_gj * self.oxidation * 44.0 / 12.0


CO2_MAX_PCT = 18.5  # dry CO2 of the flue gas at stoichiometric combustion of coal (no excess air)
CO2_KG_M3 = 44.01 / 22.4  # kg/m³ at 273 K, 101.325 kPa (HJ 75-2017 App. A's M/22.4)
KNOT_S = 20.0  # seconds between the noise knots
NOISE_SD = 3.2  # knot spread per unit of a parameter's noise scale (the old random walk's spread)


def _std_factor(temp_c: float, p_abs_kpa: float, moisture_pct: float) -> float:
    """Actual wet flow to standard dry flow (HJ 75-2017 App. A, with Ba + Ps the absolute pressure)."""
    return 273.0 / (273.0 + temp_c) * (p_abs_kpa * 1000.0 / 101325.0) * (1.0 - moisture_pct / 100.0)


@dataclass
class CemsStack:
    """A coal boiler's stack. The model is a function of (seed, time): the same instant always gives the
    same flue gas, however often and in whatever order it is asked, so tests know the right answer.

    The fuel drives it: fuel feed (t/h) follows the load; CO2 produced = fuel × NCV × CC × OF × 44/12;
    the dry flue-gas volume carries that CO2 at a CO2 share set by the excess air (O2); the actual flow
    follows from temperature, pressure and moisture. ``pressure`` is the absolute flue pressure (kPa);
    ``p_atm_kpa`` the site's barometric pressure. ``flue(t)`` is the gas as it is, ``true_values(t)`` what
    healthy analysers read (with measurement noise), ``values()`` what they report with faults.
    """

    seed: int = 1
    rated_flow_m3s: float = 120.0
    clock: Callable[[], float] = field(default=wall_clock, repr=False)
    faults: CemsFaults = field(default_factory=CemsFaults)
    fuel: FuelProperties = field(default_factory=FuelProperties)
    p_atm_kpa: float = 101.325
    _rng: random.Random = field(init=False, repr=False)
    _noise_at: SmoothNoise = field(init=False, repr=False)
    _frozen: dict[str, float] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)  # faults only (spikes); the model itself uses _noise_at
        self._noise_at = SmoothNoise(self.seed, KNOT_S)
        # The fuel feed at full load that gives the rated actual flow at nominal flue conditions.
        co2_pct = CO2_MAX_PCT * (21.0 - 6.5) / 21.0
        qsn = self.rated_flow_m3s * 3600.0 * _std_factor(60.0, 102.1, 9.5)
        self.rated_fuel_t_h = qsn * co2_pct / 100.0 * CO2_KG_M3 / 1000.0 / self.fuel.t_co2_per_t

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

    def _noise(self, name: str, scale: float, t: float) -> float:
        """Mean-reverting wander of one parameter: smooth, and the same for the same (seed, name, t)."""
        return NOISE_SD * scale * self._noise_at(name, t)

    def fuel_t_h(self, t: float) -> float:
        """Fuel fed to the boiler at ``t`` (t/h): the load plus a percent or so of feeder wander."""
        return max(0.0, self.rated_fuel_t_h * self.load(t) * (1.0 + self._noise("fuel", 0.003, t)))

    def flue(self, t: float) -> dict[str, float]:
        """The flue gas as it is at ``t`` (no analyser noise): what an account should find.

        Keys: fuel_t_h, co2_t_h (from the fuel), o2 and co2 (% dry), temp (°C), pressure (kPa absolute),
        moisture (%), flow (m³/s actual), q_std_dry_m3h, so2/no/no2/nox/dust (mg/m³ dry), load (%).
        """
        ld = self.load(t)
        fuel = self.fuel_t_h(t)
        co2_t_h = fuel * self.fuel.t_co2_per_t
        o2 = min(20.0, max(2.0, 6.5 + 2.0 * (1 - ld) + self._noise("o2", 0.05, t)))
        co2 = CO2_MAX_PCT * (21.0 - o2) / 21.0
        temp = 48 + 12 * ld + self._noise("temp", 0.2, t)
        pressure = 101.3 + 0.8 * ld + self._noise("pressure", 0.02, t)
        moisture = max(0.0, 9.5 + self._noise("moisture", 0.05, t))
        qsn = co2_t_h * 1000.0 / CO2_KG_M3 / (co2 / 100.0)
        no = max(0.0, 95 * ld + self._noise("no", 2.0, t))
        no2 = max(0.0, 6 * ld + self._noise("no2", 0.3, t))
        return {
            "fuel_t_h": fuel, "co2_t_h": co2_t_h, "o2": o2, "co2": co2, "temp": temp, "pressure": pressure,
            "moisture": moisture, "q_std_dry_m3h": qsn,
            "flow": qsn / _std_factor(temp, pressure, moisture) / 3600.0,
            "so2": max(0.0, 28 * ld + self._noise("so2", 0.8, t)), "no": no, "no2": no2,
            "nox": no * 46 / 30 + no2, "dust": max(0.0, 4.0 * ld + self._noise("dust", 0.1, t)),
            "load": ld * 100,
        }

    def true_values(self, t: float) -> dict[str, float]:
        """What healthy analysers read at ``t``: the flue gas plus a little measurement noise, no faults."""
        g = self.flue(t)
        m = self._noise
        return {
            "so2": max(0.0, g["so2"] + m("m:so2", 0.1, t)),
            "nox": g["nox"],
            "no": g["no"],
            "no2": g["no2"],
            "o2": min(21.0, max(0.0, g["o2"] + m("m:o2", 0.01, t))),
            "co2": max(0.0, g["co2"] + m("m:co2", 0.01, t)),
            "dust": max(0.0, g["dust"] + m("m:dust", 0.02, t)),
            "flow": max(0.0, g["flow"] + m("m:flow", 0.2, t)),
            "temp": g["temp"] + m("m:temp", 0.05, t),
            "pressure": g["pressure"],
            "moisture": max(0.0, g["moisture"] + m("m:moisture", 0.02, t)),
            "load": g["load"],
        }

    def truth(self, t0: float, t1: float, step_s: float = 10.0) -> dict[str, float]:
        """The right answer for [t0, t1): fuel burnt (t), CO2 from the fuel (t), CO2 through the stack by
        measurement-free flue gas (t), pollutant mass (kg), mean dry standard flow (m³/h); midpoint rule."""
        if t1 <= t0 or step_s <= 0:
            raise ValueError("need t1 > t0 and a positive step")
        n = max(1, round((t1 - t0) / step_s))
        dt_h = (t1 - t0) / n / 3600.0
        out = dict.fromkeys(("fuel_t", "co2_fuel_t", "co2_stack_t", "so2_kg", "nox_kg", "dust_kg",
                             "q_std_dry_m3h"), 0.0)
        for i in range(n):
            g = self.flue(t0 + (i + 0.5) * (t1 - t0) / n)
            q = g["q_std_dry_m3h"]
            out["fuel_t"] += g["fuel_t_h"] * dt_h
            out["co2_fuel_t"] += g["co2_t_h"] * dt_h
            out["co2_stack_t"] += g["co2"] / 100.0 * q * CO2_KG_M3 / 1000.0 * dt_h
            for p in ("so2", "nox", "dust"):
                out[f"{p}_kg"] += g[p] * q / 1e6 * dt_h
            out["q_std_dry_m3h"] += q / n
        return out

    def values(self, t: float | None = None) -> dict[str, float]:
        """What the analysers and the DAHS report at ``t`` (default: the clock), faults included."""
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
        t = self.clock()
        v = self.values(t)
        for i, name in enumerate(LAYOUT):
            registers[2 * i : 2 * i + 2] = f32(v[name])
        registers[STATUS_REGISTER] = self.status()
        # The DCS's coal feeder, beside the CEMS map (not in edge/pointmaps/cems.yaml): float32 t/h.
        registers[FUEL_REGISTER : FUEL_REGISTER + 2] = f32(self.fuel_t_h(t))
