"""Readings in, one scored window per reading out: the one code path for edge, cloud back-test and training.

``WindowStream`` keeps, per series (device, point), the last ``BUFFER`` values and relation residuals.
Each reading with quality N extends its series; once the buffer is full the reading's window becomes a
feature row. Readings flagged otherwise by their device (calibration, maintenance, fault…) are left out:
they are already marked, and their span-gas values would poison the reference.

A window is not judged — and the caller is told why (``Issue``) — when a value is not finite, when a
reading is older than the last one of its series, or when a gap of more than ``GAP_FACTOR`` typical
intervals opens between two readings: the series starts again and is judged once its buffer is full.
Nothing here ever changes a reading.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from carbonlink.kernel.wire import Quality, Reading

from .features import (
    BUFFER,
    CO2_MAX_PCT,
    N_FEATURES,
    RELATIONS,
    Family,
    ac_dc_residual,
    family_of,
    neighbour_residual,
    nox_residual,
    o2_co2_residual,
    small_median,
    window_features,
)
from .model import AnomalyModel

GAP_FACTOR = 3.0  # a step longer than this many typical steps breaks the window
NEIGHBOUR_MAX_AGE_MS = 15 * 60 * 1000  # a neighbour's value older than this is not compared against


CHUNK = 256  # rows featurised at once: a 1,000-point poll's temporaries stay a quarter of a megabyte each


class _Rings:
    """Every series' last ``BUFFER`` values, relation residuals and relation marks: one row per series of three
    arrays used as ring buffers. A deque of Python floats costs about four times the memory (a gateway with
    1,000 points held 9 MB in them), and the ready windows are gathered in one indexing step."""

    def __init__(self) -> None:
        self.values = np.zeros((16, BUFFER))
        self.res = np.zeros((16, BUFFER))
        self.rel = np.zeros((16, BUFFER), dtype=bool)
        self.rows = 0

    def new_row(self) -> int:
        if self.rows == len(self.values):
            grow = len(self.values)
            self.values = np.concatenate((self.values, np.zeros((grow, BUFFER))))
            self.res = np.concatenate((self.res, np.zeros((grow, BUFFER))))
            self.rel = np.concatenate((self.rel, np.zeros((grow, BUFFER), dtype=bool)))
        self.rows += 1
        return self.rows - 1

    def gather(self, rows: list[int], oldest: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The buffers of ``rows`` in time order (each starts at its ``oldest`` position), and whether a
        relation applied to every point of each."""
        idx = (np.asarray(oldest)[:, None] + np.arange(BUFFER)) % BUFFER
        r = np.asarray(rows)[:, None]
        return self.values[r, idx], self.res[r, idx], self.rel[r, idx].all(axis=1)


@dataclass
class _Series:
    row: int  # its row in the rings
    pos: int = 0  # where the next value goes; once the buffer is full, where the oldest is
    count: int = 0  # values held (at most BUFFER)
    steps: deque[int] = field(default_factory=lambda: deque(maxlen=9))
    last_ts: int | None = None
    alarm_since: int | None = None  # ts of the first flagged reading of the current episode
    alarm_count: int = 0
    alarm_peak: float = 0.0

    def reset(self) -> None:
        self.count = 0
        self.steps.clear()


@dataclass(frozen=True)
class Issue:
    """A window that could not be judged, and why (the readings themselves are untouched)."""

    kind: str  # window_incomplete | score_invalid
    device: str
    point: str
    ts_ms: int
    reason: str
    cause: str = ""  # not_finite | not_newer | gap | nan_score


@dataclass(frozen=True)
class Windows:
    """Ready windows' buffers, the inputs of ``features.window_features``: [n, BUFFER] values and residuals,
    whether a relation applied throughout, and the device family, per window."""

    values: np.ndarray
    residuals: np.ndarray
    rel_applies: np.ndarray
    family: np.ndarray

    def features(self) -> np.ndarray:
        return window_features(self.values, self.residuals, self.rel_applies, self.family)

    @staticmethod
    def join(parts: Sequence[Windows]) -> Windows:
        return Windows(*(np.concatenate([getattr(w, f) for w in parts])
                         for f in ("values", "residuals", "rel_applies", "family")))


@dataclass(frozen=True)
class Scored:
    reading: Reading
    score: float
    anomalous: bool
    fault: str | None


@dataclass(frozen=True)
class Episode:
    """A series entering (``started``) or leaving an anomaly."""

    device: str
    point: str
    started: bool
    since_ms: int
    ts_ms: int
    count: int
    peak: float
    fault: str | None = None


@dataclass
class Result:
    scored: list[Scored] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)


class WindowStream:
    def __init__(self, *, families: Mapping[str, Family] | None = None,
                 co2_max: Mapping[str, float] | None = None) -> None:
        self._families: dict[str, Family] = dict(families or {})
        self._co2_max = dict(co2_max or {})  # device -> CO2max of its fuel (default: coal)
        self._series: dict[tuple[str, str], _Series] = {}
        self._rings = _Rings()
        self._latest: dict[tuple[Family, str], dict[str, tuple[int, float]]] = {}  # for neighbours

    def family(self, device: str, points: set[str]) -> Family:
        fam = self._families.get(device)
        if fam is None or fam is Family.OTHER:
            fam = family_of(points)
            if fam is not Family.OTHER:
                self._families[device] = fam
        return fam

    def _residuals(self, device: str, fam: Family, vals: dict[str, float], ts: int) -> dict[str, float]:
        out: dict[str, float] = {}
        rel = RELATIONS.get(fam, {})
        if fam is Family.CEMS:
            if {"nox", "no", "no2"} <= vals.keys():
                r = float(nox_residual(vals["nox"], vals["no"], vals["no2"]))
                out.update({p: r for p in ("nox", "no", "no2")})
            if {"o2", "co2"} <= vals.keys():
                r = float(o2_co2_residual(vals["o2"], vals["co2"], self._co2_max.get(device, CO2_MAX_PCT["coal"])))
                out.update({"o2": r, "co2": r})
        elif fam is Family.INVERTER:
            if {"ac_power", "dc_power"} <= vals.keys():
                r = float(ac_dc_residual(vals["ac_power"], vals["dc_power"]))
                out.update({"ac_power": r, "dc_power": r})
        elif fam is Family.FOREST:
            for p, v in vals.items():
                if p not in rel:
                    continue
                latest = self._latest.setdefault((fam, p), {})
                others = [ov for d, (ots, ov) in latest.items()
                          if d != device and abs(ots - ts) <= NEIGHBOUR_MAX_AGE_MS]
                latest[device] = (ts, v)
                if len(others) >= 2:
                    out[p] = neighbour_residual(v, others)
        return out

    def features(self, readings: Sequence[Reading]) -> tuple[list[Reading], np.ndarray, list[Issue]]:
        """Extend the series with ``readings`` (a poll, or any mix of devices and instants in time order) and
        build the rows to judge; one device's readings of one instant are taken together for its relations."""
        ready, rows, oldest, fams, issues = self._extend(readings)
        if not ready:
            return [], np.zeros((0, 0), dtype=np.float32), issues
        out = np.empty((len(ready), N_FEATURES), dtype=np.float32)
        for a in range(0, len(ready), CHUNK):
            x, res_, applies = self._rings.gather(rows[a:a + CHUNK], oldest[a:a + CHUNK])
            out[a:a + CHUNK] = window_features(x, res_, applies, np.asarray(fams[a:a + CHUNK]))
        return ready, out, issues

    def windows(self, readings: Sequence[Reading]) -> tuple[list[Reading], Windows, list[Issue]]:
        """As ``features``, but the ready windows' buffers (copies) instead of their features: training gathers
        the windows of many polls and featurises them in one ``window_features`` call, whose rows are the same
        whatever the batch (numpy's fixed cost per call was a third of a retrain, at 70 rows a poll)."""
        ready, rows, oldest, fams, issues = self._extend(readings)
        if not ready:
            empty = np.zeros((0, BUFFER))
            return [], Windows(empty, empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)), issues
        x, res_, applies = self._rings.gather(rows, oldest)
        return ready, Windows(x, res_, applies, np.asarray(fams, dtype=np.int64)), issues

    def _extend(self, readings: Sequence[Reading]
                ) -> tuple[list[Reading], list[int], list[int], list[int], list[Issue]]:
        """Readings into the rings; the ready ones with their ring rows, oldest positions and families."""
        issues: list[Issue] = []
        ready: list[Reading] = []
        rows: list[int] = []
        oldest: list[int] = []
        fams: list[int] = []
        rings = self._rings
        by_instant: dict[tuple[str, int], list[Reading]] = {}  # a device's points at one instant go together
        for r in readings:
            by_instant.setdefault((r.device, r.ts_ms), []).append(r)
        for (device, _), group in by_instant.items():
            usable: list[Reading] = []
            for r in group:
                if r.quality is not Quality.NORMAL:
                    continue
                s = self._series.get((device, r.point))
                if s is None:
                    s = self._series[(device, r.point)] = _Series(rings.new_row())
                if not math.isfinite(r.value):
                    s.reset()
                    s.last_ts = r.ts_ms
                    issues.append(Issue("window_incomplete", device, r.point, r.ts_ms,
                                        "value is not a finite number; the series restarts", "not_finite"))
                    continue
                if s.last_ts is not None:
                    step = r.ts_ms - s.last_ts
                    if step <= 0:
                        issues.append(Issue("window_incomplete", device, r.point, r.ts_ms,
                                            "reading is not newer than the last one of its series; not judged",
                                            "not_newer"))
                        continue
                    if len(s.steps) >= 3 and step > GAP_FACTOR * small_median(s.steps):
                        issues.append(Issue("window_incomplete", device, r.point, r.ts_ms,
                                            f"{step / 1000:.0f} s since the last reading (missing points); "
                                            "the series restarts", "gap"))
                        s.reset()
                    else:
                        s.steps.append(step)
                s.last_ts = r.ts_ms
                usable.append(r)
            if not usable:
                continue
            vals = {r.point: r.value for r in usable}
            fam = self.family(device, set(vals))
            res = self._residuals(device, fam, vals, usable[0].ts_ms)
            for r in usable:
                s = self._series[(device, r.point)]
                rings.values[s.row, s.pos] = r.value
                rings.res[s.row, s.pos] = res.get(r.point, 0.0)
                rings.rel[s.row, s.pos] = r.point in res
                s.pos = (s.pos + 1) % BUFFER
                if s.count < BUFFER:
                    s.count += 1
                if s.count == BUFFER:
                    ready.append(r)
                    rows.append(s.row)
                    oldest.append(s.pos)
                    fams.append(int(fam))
        return ready, rows, oldest, fams, issues

    def score(self, readings: Sequence[Reading], model: AnomalyModel) -> Result:
        """Judge every reading whose window is complete; report new and ended anomaly episodes."""
        ready, rows, issues = self.features(readings)
        result = Result(issues=issues)
        if not ready:
            return result
        scores = model.score(rows)
        threshold = model.info.threshold
        hot = [i for i, sc in enumerate(scores) if math.isfinite(sc) and sc >= threshold]
        faults = model.fault_type(rows[hot]) if hot else []
        fault_of = dict(zip(hot, faults, strict=True))
        for i, (r, sc) in enumerate(zip(ready, scores, strict=True)):
            s = self._series[(r.device, r.point)]
            if not math.isfinite(sc):
                result.issues.append(Issue("score_invalid", r.device, r.point, r.ts_ms,
                                           "the model returned no finite score for this window; reading not judged",
                                           "nan_score"))
                continue
            bad = sc >= threshold
            fault = fault_of.get(i)
            result.scored.append(Scored(r, float(sc), bad, fault))
            if bad:
                if s.alarm_since is None:
                    s.alarm_since, s.alarm_count, s.alarm_peak = r.ts_ms, 0, 0.0
                    result.episodes.append(Episode(r.device, r.point, True, r.ts_ms, r.ts_ms, 1, float(sc), fault))
                s.alarm_count += 1
                s.alarm_peak = max(s.alarm_peak, float(sc))
            elif s.alarm_since is not None:
                result.episodes.append(Episode(r.device, r.point, False, s.alarm_since, r.ts_ms, s.alarm_count,
                                               s.alarm_peak))
                s.alarm_since = None
        return result
