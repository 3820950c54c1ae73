"""Labelled data from the simulators: clean series, faults injected at known times, one label per reading.

Every series comes from a simulator model driven by an injected clock (a time grid, never the wall clock)
and every random choice from ``random.Random(f"{seed}:…")``, so a seed gives the same data on every
machine. Faults are applied to the simulators' clean output by ``inject`` rather than through each
simulator's own fault switches, because the data set needs every fault type on every family with its
start, end and affected readings known exactly; the kinds mirror the simulators' (drift, stuck, spikes,
calibration gas) and add the ones a model must learn (offset, noise, impossible relations).

Labels: 0 normal, k > 0 the fault type ``FAULTS[k - 1]``, -1 ignored. Readings a fault left unchanged
(a stuck inverter at night reads 0 as it would anyway) are ignored, and so is the ``BUFFER`` after each
episode, while the reference half of the window still holds faulty values: counting those as false
alarms or as misses would measure the window length, not the model.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from carbonlink.anomaly.features import BUFFER, CEMS_ROLES, FOREST_ROLES, INVERTER_ROLES, Family
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import CAL_GAS, CemsStack
from carbonlink.simulators.forest import Tree, tree_mac
from carbonlink.simulators.inverter import SolarInverter

FAULTS = ("drift", "stuck", "spikes", "offset", "noise", "calibration", "nox_relation", "o2_co2",
          "ac_gt_dc", "tree_growth")
CLASSES = ("normal", *FAULTS)
GENERIC = ("drift", "stuck", "spikes", "offset", "noise")
FAMILY_FAULTS: dict[Family, tuple[str, ...]] = {
    Family.CEMS: (*GENERIC, "calibration", "nox_relation", "o2_co2"),
    Family.INVERTER: (*GENERIC, "ac_gt_dc"),
    Family.FOREST: (*GENERIC, "tree_growth"),
}
ROLES = {Family.CEMS: CEMS_ROLES, Family.INVERTER: INVERTER_ROLES, Family.FOREST: FOREST_ROLES}
UNITS = {"so2": "mg/m³", "nox": "mg/m³", "no": "mg/m³", "no2": "mg/m³", "o2": "%", "co2": "%", "dust": "mg/m³",
         "flow": "m³/s", "temp": "°C", "ac_power": "W", "dc_power": "W", "temperature": "°C", "humidity": "%",
         "soil_moisture": "%", "dendrometer": "µm"}
ANALYSER = ("so2", "no", "no2", "o2", "co2", "dust")
STEP_S = 60  # one reading a minute per point: a 60-point window is an hour


@dataclass(frozen=True)
class Plan:
    """What to simulate: devices per family, days, and the seed every random choice derives from."""

    seed: int
    days: float = 2.0
    stacks: int = 3
    inverters: int = 3
    trees: int = 6
    faults_per_day: float = 3.0  # episodes per device and day

    @property
    def steps(self) -> int:
        return int(self.days * 86400 // STEP_S)


@dataclass(frozen=True)
class Episode:
    kind: str
    points: tuple[str, ...]
    start: int  # index of the first faulty reading
    end: int  # index after the last


@dataclass
class Device:
    id: str
    family: Family
    values: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    episodes: list[Episode] = field(default_factory=list)


@functools.cache  # asked for every training row (index_of): one Random per call was 10 s of a retrain
def _t0(seed: int) -> int:
    """A start at local midnight (UTC+8) on a seeded day of 2026."""
    day = random.Random(f"{seed}:day").randrange(0, 360)
    return 1767196800 + day * 86400 - 8 * 3600  # 2026-01-01T00:00+08:00


def simulate(plan: Plan) -> list[Device]:
    """Clean series for every device of the plan."""
    t0, n = _t0(plan.seed), plan.steps
    ts = t0 + np.arange(n, dtype=np.int64) * STEP_S
    rng = random.Random(f"{plan.seed}:params")
    out: list[Device] = []
    for i in range(plan.stacks):
        stack = CemsStack(seed=plan.seed * 100 + i, rated_flow_m3s=rng.uniform(60.0, 200.0), clock=lambda: 0.0)
        rows = [stack.true_values(float(t)) for t in ts]
        out.append(Device(f"stack-{plan.seed}-{i}", Family.CEMS,
                          {p: np.array([r[p] for r in rows]) for p in CEMS_ROLES}))
    for i in range(plan.inverters):
        inv = SolarInverter(rated_w=rng.uniform(20e3, 250e3), latitude=rng.uniform(20.0, 45.0),
                            seed=plan.seed * 100 + i, clock=lambda: 0.0)
        rows = [inv.values(float(t)) for t in ts]
        vals = {p: np.array([r[p] for r in rows]) for p in ("ac_power", "dc_power", "temp")}
        vals["ac_power"] = np.round(vals["ac_power"])  # the register map carries whole watts
        vals["dc_power"] = np.round(vals["dc_power"])
        out.append(Device(f"inverter-{plan.seed}-{i}", Family.INVERTER, vals))
    for i in range(plan.trees):
        tree = Tree(tree_mac(i + 1), f"tree-{plan.seed}-{i}", seed=plan.seed)
        rows = [tree.values(float(t)) for t in ts]
        out.append(Device(tree.device_id, Family.FOREST, {p: np.array([r[p] for r in rows]) for p in FOREST_ROLES}))
    return out


def _scale(x: np.ndarray) -> tuple[float, float]:
    """A series' typical within-hour spread and step spread, floored at 1 % of its level."""
    floor = 0.01 * float(np.mean(np.abs(x))) + 1e-6
    view = np.lib.stride_tricks.sliding_window_view(x, 60)[::30]
    sd = float(np.median(view.std(axis=1)))
    dsd = float(np.median(np.diff(view, axis=1).std(axis=1)))
    return max(sd, floor), max(dsd, floor / 4)


def inject(devices: list[Device], plan: Plan) -> None:
    """Faults at seeded times on every device; fills ``labels`` and ``episodes``."""
    n = plan.steps
    for dev in devices:
        rng = random.Random(f"{plan.seed}:faults:{dev.id}")
        clean = {p: v.copy() for p, v in dev.values.items()}
        lab = {p: np.zeros(n, dtype=np.int64) for p in dev.values}
        i = BUFFER + rng.randrange(60, 240)
        mean_gap = 86400 / STEP_S / plan.faults_per_day
        while True:
            kind = rng.choice(FAMILY_FAULTS[dev.family])
            dur = rng.randrange(10, 31) if kind == "calibration" else rng.randrange(30, 181)
            if i + dur + BUFFER >= n:
                break
            _apply(dev, kind, i, i + dur, rng, lab)
            i += dur + BUFFER + int(rng.expovariate(1.0 / max(1.0, mean_gap - dur - BUFFER)))
        for p in dev.values:
            same = (dev.values[p] == clean[p]) & (lab[p] > 0)
            lab[p][same] = -1
        dev.labels = lab


def _apply(dev: Device, kind: str, a: int, b: int, rng: random.Random, lab: dict[str, np.ndarray]) -> None:
    code = CLASSES.index(kind)
    v = dev.values
    sign = rng.choice((-1.0, 1.0))
    points: list[str]
    if kind in GENERIC:
        p = rng.choice(list(v))
        x = v[p]
        sd, dsd = _scale(x)
        seg = slice(a, b)
        if kind == "offset":
            x[seg] += sign * rng.uniform(3.0, 8.0) * sd
        elif kind == "drift":
            x[seg] += sign * rng.uniform(3.0, 10.0) * sd * np.linspace(0.0, 1.0, b - a)
        elif kind == "stuck":
            x[seg] = x[a]
        elif kind == "noise":
            nrng = np.random.default_rng(rng.randrange(2**32))
            x[seg] += nrng.normal(0.0, rng.uniform(3.0, 8.0) * dsd, b - a)
        elif kind == "spikes":
            k = max(2, (b - a) // 20)
            idx = sorted(rng.sample(range(a, b), k))
            for j in idx:
                x[j] += rng.choice((-1.0, 1.0)) * rng.uniform(6.0, 15.0) * sd
            lab[p][idx] = code
            _recovery(lab[p], b)
            dev.episodes.append(Episode(kind, (p,), a, b))
            _nonneg(dev, p)
            return
        _nonneg(dev, p)
        points = [p]
    elif kind == "calibration":
        nrng = np.random.default_rng(rng.randrange(2**32))
        for p in ANALYSER:
            v[p][a:b] = CAL_GAS[p] * (1.0 + nrng.normal(0.0, 0.002, b - a))
        v["nox"][a:b] = v["no"][a:b] * 46 / 30 + v["no2"][a:b]
        points = [*ANALYSER, "nox"]
    elif kind == "nox_relation":
        if rng.random() < 0.5:  # the DAHS adds NO as if it were NO2 (factor 1 instead of 46/30)
            v["nox"][a:b] = v["no"][a:b] * rng.uniform(0.95, 1.15) + v["no2"][a:b]
        else:
            v["nox"][a:b] *= rng.choice((rng.uniform(0.6, 0.85), rng.uniform(1.2, 1.5)))
        points = ["nox"]
    elif kind == "o2_co2":
        v["co2"][a:b] *= rng.choice((rng.uniform(0.55, 0.85), rng.uniform(1.15, 1.4)))
        points = ["co2"]
    elif kind == "ac_gt_dc":
        v["dc_power"][a:b] = np.round(v["dc_power"][a:b] * rng.uniform(0.7, 0.93))
        points = ["dc_power"]
    elif kind == "tree_growth":  # a slipping probe or a wrong gauge factor: far more growth than its neighbours
        per_step = rng.uniform(300.0, 1500.0) / (86400 / STEP_S)
        v["dendrometer"][a:b] += per_step * np.arange(1, b - a + 1)
        points = ["dendrometer"]
    else:
        raise ValueError(f"unknown fault {kind}")
    for p in points:
        lab[p][a:b] = code
        _recovery(lab[p], b)
    dev.episodes.append(Episode(kind, tuple(points), a, b))


def _recovery(lab: np.ndarray, end: int) -> None:
    stop = min(len(lab), end + BUFFER)
    seg = lab[end:stop]
    seg[seg == 0] = -1


def _nonneg(dev: Device, p: str) -> None:
    if p not in ("temp", "temperature"):
        np.maximum(dev.values[p], 0.0, out=dev.values[p])


def build(plan: Plan) -> list[Device]:
    devices = simulate(plan)
    inject(devices, plan)
    return devices


def polls(devices: list[Device], plan: Plan) -> Iterator[list[Reading]]:
    """Every instant's readings of every device, in time order (as a gateway would see them)."""
    t0 = _t0(plan.seed)
    for i in range(plan.steps):
        ts = (t0 + i * STEP_S) * 1000
        out = []
        for dev in devices:
            for p, x in dev.values.items():
                val = float(x[i])
                out.append(Reading(dev.id, p, ts, val if math.isfinite(val) else 0.0, UNITS.get(p, "")))
        yield out


def label_of(devices: list[Device], plan: Plan) -> dict[tuple[str, str], np.ndarray]:
    return {(d.id, p): d.labels[p] for d in devices for p in d.values}


def index_of(ts_ms: int, plan: Plan) -> int:
    return (ts_ms // 1000 - _t0(plan.seed)) // STEP_S
