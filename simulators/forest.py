"""A simulated forest plot: N trees, each with a BTHome v2 sensor, emitting advert bytes.

Each tree reports soil moisture, air temperature and humidity (diurnal), a slowly
draining battery (and its voltage), and a point dendrometer on the stem. The
dendrometer follows what real stems do (Zweifel 2016, doi:10.1111/nph.13995):
they shrink by day while transpiration outruns root uptake (deepest around
15:00) and swell back by night, on top of slow irreversible growth. The
zero-growth method counts growth only above the previous maximum, so the daily
dip must be visible: it is tens of micrometres, which is why the dendrometer is
sent in micrometres as a signed 32-bit count (object 0x5B; see edge/drivers/ble.py),
or optionally as BTHome distance 0x40 in whole millimetres.

A plain advert is 22 bytes of service data and fits a legacy 31-byte advert;
encrypted ones (30 bytes) need BLE 5 extended advertising on real hardware.

Time can run faster than the wall clock (``speed``) so a demo shows a day in a minute.
Faults on demand per tree: stuck, drift, spikes, dropout, battery death.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from carbonlink.codecs.bthome import RawAdvert, encode

from .clock import wall_clock

DendrometerEncoding = Literal["count_um", "distance_mm"]
DENDRO_OBJECT = {"count_um": 0x5B, "distance_mm": 0x40}
PROBE_MID_UM = 5000.0  # the probe is mounted mid-travel, so shrinkage never reads below zero
TZ_HOURS = 8  # local solar-ish time for China, as the CEMS simulator uses
DAY = 86400.0
STEP_S = 600.0  # the tree's state (soil, growth, battery) advances in steps of this length
# Species the simulated plot draws from: codes of the factor table (cloud/carbon/factors/species.toml).
SPECIES = ("cunninghamia_lanceolata", "pinus_massoniana", "populus")


class Fault(enum.StrEnum):
    STUCK = "stuck"  # values frozen, adverts continue
    DRIFT = "drift"  # a growing offset on one point (default: the dendrometer, which would fake growth)
    SPIKES = "spikes"  # now and then one value jumps far off
    DROPOUT = "dropout"  # no adverts (radio or antenna fault)
    BATTERY_DEATH = "battery_death"  # the battery collapses within a few adverts, then silence


def local_hour(t: float) -> float:
    return (t / 3600.0 + TZ_HOURS) % 24


def shrink_fraction(h: float) -> float:
    """0 at dawn (stem fullest) .. 1 around 15:00 (most shrunk), smooth both ways."""
    if 7.0 <= h < 15.0:
        return (1 - math.cos(math.pi * (h - 7.0) / 8.0)) / 2
    since = (h - 15.0) % 24  # 16 hours of refilling, slower than the shrinking
    return (1 + math.cos(math.pi * since / 16.0)) / 2


def tree_key(seed: int, index: int) -> bytes:
    """A deterministic 128-bit key per tree, so a gateway config can be written for the simulator."""
    return hashlib.sha256(f"carbonlink-forest-{seed}-{index}".encode()).digest()[:16]


def tree_mac(index: int) -> str:
    # A static random address (top two bits set), recognisable as ours.
    return f"D2:FC:00:00:{(index >> 8) & 0xFF:02X}:{index & 0xFF:02X}"


@dataclass
class Tree:
    mac: str
    device_id: str
    key: bytes | None = None
    dendrometer: DendrometerEncoding = "count_um"
    seed: int = 0
    include_mac: bool = False
    species: str = ""  # a code of the species table (cloud/carbon/factors/species.toml); "" = drawn
    dbh_cm: float = 0.0  # diameter at breast height when the sensor was fitted; 0 = drawn
    height_m: float = 0.0  # 0 = from the diameter by a height-diameter curve
    # state, advanced by values(t)
    packet_id: int = field(default=0, init=False)
    counter: int = field(default=0, init=False)
    faults: dict[Fault, dict[str, Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        rng = random.Random(f"{self.seed}:{self.mac}")
        self._rng = rng
        self.growth_um_per_day = rng.uniform(4.0, 12.0)  # 1.5-4.4 mm of radius a year
        self.shrink_um = rng.uniform(25.0, 60.0)
        self.temp_offset = rng.uniform(-1.0, 1.0)
        self.moisture = rng.uniform(25.0, 38.0)
        self.battery = rng.uniform(85.0, 100.0)
        self.drain_per_day = rng.uniform(0.05, 0.15)  # a coin cell lasting a few years
        self.rssi_mean = rng.randint(-92, -55)
        self.growth_um = 0.0  # true radial growth since the sensor was fitted (the forest's right answer)
        self.dead = False
        self._last_t: float | None = None
        self._grid_t: float | None = None
        stand = random.Random(f"{self.seed}:{self.mac}:stand")  # its own stream: the sensor values stay as they were
        self.species = self.species or stand.choice(SPECIES)
        self.dbh_cm = self.dbh_cm or round(stand.uniform(12.0, 32.0), 1)
        self.height_m = self.height_m or round(1.3 + 24.0 * (1 - math.exp(-0.055 * self.dbh_cm)), 1)
        self._last_values: dict[str, float] | None = None

    # --- faults ---------------------------------------------------------------------------

    def set_fault(self, kind: Fault | str, **params: Any) -> None:
        kind = Fault(kind)
        self.faults[kind] = {"since": self._last_t, **params}
        if kind is Fault.BATTERY_DEATH:
            self.battery = min(self.battery, 5.0)

    def clear_fault(self, kind: Fault | str) -> None:
        kind = Fault(kind)
        self.faults.pop(kind, None)
        if kind is Fault.BATTERY_DEATH and self.dead:  # a fresh battery: the device restarts
            self.dead, self.battery, self.packet_id = False, 100.0, 0

    # --- physics --------------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        """Move the tree's state to ``t`` in fixed steps on a grid, so the state at an instant is the same
        however often the tree was read (the right answer does not depend on the polling rate)."""
        if self._grid_t is None:
            self._grid_t = math.floor(t / STEP_S) * STEP_S
        while self._grid_t + STEP_S <= t:
            self._step(self._grid_t, STEP_S)
            self._grid_t += STEP_S
        self._last_t = t

    def _step(self, t0: float, dt: float) -> None:
        dt_days = dt / DAY
        h = local_hour(t0 + dt / 2)
        daylight = max(0.0, math.sin(math.pi * (h - 6.0) / 12.0)) if 6.0 <= h <= 18.0 else 0.0
        # Soil dries towards the wilting point by day; rain (a seeded daily schedule) refills it.
        self.moisture -= (self.moisture - 8.0) * 0.06 * dt_days * 2 * daylight
        self.moisture = min(45.0, self.moisture + forest_rain_mm(self.seed, t0, t0 + dt) * 0.8)
        dryness = min(1.0, max(0.0, (30.0 - self.moisture) / 22.0))
        self.growth_um += self.growth_um_per_day * dt_days * (1 - 0.7 * dryness)
        self.battery = max(0.0, self.battery - self.drain_per_day * dt_days)

    def true_dbh_cm(self) -> float:
        """The diameter now: the fitted diameter plus twice the radial growth (a point dendrometer's ΔD ≈ 2Δr)."""
        return self.dbh_cm + 2 * self.growth_um / 10_000.0

    def values(self, t: float) -> dict[str, float]:
        """Sensor values at simulated time ``t`` (seconds since the epoch), faults applied."""
        self._advance(t)
        if Fault.STUCK in self.faults and self._last_values is not None:
            return dict(self._last_values, battery=round(self.battery), voltage=self.voltage())
        rng = self._rng
        h = local_hour(t)
        wave = math.sin(2 * math.pi * (h - 9.0) / 24.0)  # coolest near 03:00, warmest near 15:00
        dryness = min(1.0, max(0.0, (30.0 - self.moisture) / 22.0))
        v = {
            "temperature": 14.0 + 7.0 * wave + self.temp_offset + rng.gauss(0, 0.1),
            "humidity": min(100.0, max(20.0, 78.0 - 18.0 * wave + rng.gauss(0, 0.5))),
            "soil_moisture": self.moisture + rng.gauss(0, 0.05),
            "battery": float(round(self.battery)),
            "voltage": self.voltage(),
            "dendrometer": PROBE_MID_UM + self.growth_um
            - self.shrink_um * (1 + dryness) * shrink_fraction(h) + rng.gauss(0, 1.0),
        }
        self._apply_faults(v, t)
        self._last_values = v
        return v

    def voltage(self) -> float:
        # A lithium coin cell: flat near 3.0 V, sagging fast in its last tenth.
        pct = self.battery
        v = 2.9 + 0.1 * (pct - 10) / 90 if pct > 10 else 2.2 + 0.7 * pct / 10
        return round(v, 3)

    def _apply_faults(self, v: dict[str, float], t: float) -> None:
        drift = self.faults.get(Fault.DRIFT)
        if drift is not None:
            if drift.get("since") is None:  # set before the first advert: drift starts now
                drift["since"] = t
            since = drift["since"]
            point = drift.get("point", "dendrometer")
            v[point] += drift.get("per_day", 20.0) * (t - since) / DAY
        spikes = self.faults.get(Fault.SPIKES)
        if spikes is not None and self._rng.random() < spikes.get("probability", 0.2):
            point, jump = self._rng.choice([("temperature", 40.0), ("soil_moisture", 30.0), ("dendrometer", 2000.0)])
            v[point] += jump * self._rng.choice((-1, 1))
        v["soil_moisture"] = min(100.0, max(0.0, v["soil_moisture"]))
        v["temperature"] = min(120.0, max(-40.0, v["temperature"]))
        v["dendrometer"] = max(0.0, v["dendrometer"])

    # --- adverts --------------------------------------------------------------------------

    def advert(self, t: float) -> bytes | None:
        """Service data for the next advert, or None when the tree is silent."""
        v = self.values(t)
        if Fault.BATTERY_DEATH in self.faults and not self.dead:
            self.battery = max(0.0, self.battery - 1.0)
            self.dead = self.battery <= 0.0
        if self.dead or Fault.DROPOUT in self.faults:
            return None
        self.packet_id = (self.packet_id + 1) % 256
        self.counter = (self.counter + 1) % 2**32
        dendro = v["dendrometer"] if self.dendrometer == "count_um" else v["dendrometer"] / 1000.0
        objects = [
            (0x00, self.packet_id),
            (0x01, v["battery"]),
            (0x02, v["temperature"]),
            (0x03, v["humidity"]),
            (0x0C, v["voltage"]),
            (0x14, v["soil_moisture"]),
            (DENDRO_OBJECT[self.dendrometer], dendro),
        ]
        return encode(objects, key=self.key, mac=self.mac, counter=self.counter, include_mac=self.include_mac)

    def rssi(self) -> int:
        return self.rssi_mean + self._rng.randint(-4, 4)


def forest_rain_mm(seed: int, t0: float, t1: float) -> float:
    """Rain falling in (t0, t1]: on about one day in five, a shower at 16:00 local time."""
    total = 0.0
    day0 = math.floor((t0 / 3600.0 + TZ_HOURS) / 24)
    day1 = math.floor((t1 / 3600.0 + TZ_HOURS) / 24)
    for day in range(day0, day1 + 1):
        shower_at = (day * 24 + 16 - TZ_HOURS) * 3600.0
        if t0 < shower_at <= t1:
            rng = random.Random(f"rain:{seed}:{day}")
            if rng.random() < 0.2:
                total += rng.uniform(5.0, 15.0)
    return total


@dataclass
class Forest:
    trees: list[Tree]
    speed: float = 1.0  # simulated seconds per wall-clock second
    repeats: int = 1  # BLE sensors send each advert several times; the driver must drop the copies
    start: float = field(default_factory=wall_clock)
    wall: Callable[[], float] = field(default=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        self._wall0 = self.wall()

    @classmethod
    def plot(cls, n: int, *, encrypted: bool = False, seed: int = 1, dendrometer: DendrometerEncoding = "count_um",
             **kw: Any) -> Forest:
        trees = [Tree(tree_mac(i), f"tree-{i:03d}", tree_key(seed, i) if encrypted else None, dendrometer, seed)
                 for i in range(1, n + 1)]
        return cls(trees, **kw)

    def now(self) -> float:
        return self.start + (self.wall() - self._wall0) * self.speed

    def tree(self, ref: int | str) -> Tree:
        """A tree by 1-based number, device id or MAC."""
        for i, tr in enumerate(self.trees, 1):
            if ref in (i, tr.device_id, tr.mac) or str(ref).upper() == tr.mac:
                return tr
        raise KeyError(f"no tree {ref!r}; trees are 1..{len(self.trees)}")

    def stand(self) -> list[dict[str, Any]]:
        """Each tree's species, fitted diameter and height: what an account needs besides the readings."""
        return [{"id": tr.device_id, "species": tr.species, "dbh_cm": tr.dbh_cm, "height_m": tr.height_m,
                 "dendrometer": "point"} for tr in self.trees]

    def sensor_config(self) -> list[dict[str, str]]:
        """The ``sensors`` list of a ble_bthome device in gateway.yaml that reads this plot."""
        out = []
        for tr in self.trees:
            entry = {"mac": tr.mac, "id": tr.device_id, "dendrometer": tr.dendrometer}
            if tr.key is not None:
                entry["key"] = tr.key.hex()
            out.append(entry)
        return out

    def tick(self) -> list[RawAdvert]:
        """One advert round: every live tree once (each sent ``repeats`` times)."""
        t = self.now()
        out = []
        for tr in self.trees:
            data = tr.advert(t)
            if data is not None:
                out.extend([RawAdvert(tr.mac, data, tr.rssi())] * self.repeats)
        return out

    async def adverts(self, interval_s: float, stop: asyncio.Event | None = None) -> AsyncIterator[RawAdvert]:
        """Adverts as a radio would hear them, one round every ``interval_s``, until ``stop`` is set."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while stop is None or not stop.is_set():
            for adv in self.tick():
                yield adv
            next_at += interval_s
            delay = max(0.0, next_at - loop.time())
            if stop is None:
                await asyncio.sleep(delay)
            else:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass


async def run_forest(
    trees: int | Forest,
    interval_s: float,
    stop_event: asyncio.Event,
    *,
    out: Callable[[str], None] = print,
    fmt: Callable[[RawAdvert], str] | None = None,
    summary_every_s: float | None = None,
    **plot_kw: Any,
) -> int:
    """Run a plot until ``stop_event``; print each advert (hex, or ``fmt``), or a summary every N seconds.

    Returns the number of adverts sent.
    """
    forest = trees if isinstance(trees, Forest) else Forest.plot(trees, **plot_kw)
    count = 0
    last_summary = time.monotonic()
    async for adv in forest.adverts(interval_s, stop_event):
        count += 1
        if summary_every_s is None:
            out(fmt(adv) if fmt else f"{adv.mac} rssi={adv.rssi} fcd2={adv.data.hex()}")
        elif time.monotonic() - last_summary >= summary_every_s:
            last_summary = time.monotonic()
            live = sum(1 for tr in forest.trees if not tr.dead and Fault.DROPOUT not in tr.faults)
            out(f"{time.strftime('%H:%M:%S')} sim {time.strftime('%Y-%m-%d %H:%M', time.gmtime(forest.now()))}Z"
                f" trees live {live}/{len(forest.trees)}, adverts {count}")
    return count
