"""Training, export to ONNX, the ONNX-equals-sklearn check, and the evaluation against a rules baseline.

Rows are built by ``carbonlink.anomaly.stream.WindowStream``, the very code the gateway and the cloud
back-test run, fed the simulated readings poll by poll; so the model is trained on exactly the features
it will see. The baseline (z-score of the newest value against the trailing hour, and its rate of change
against the trailing hour's step spread) is computed on the same series with thresholds tuned on the
training data, so the comparison is fair to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from carbonlink.anomaly.features import FEATURE_SET, FEATURES, N_FEATURES, WINDOW, Family
from carbonlink.anomaly.model import META_PREFIX
from carbonlink.anomaly.stream import Windows, WindowStream

from .data import CLASSES, FAMILY_FAULTS, FAULTS, Plan, build, index_of, polls

ONNX_TOLERANCE = 1e-5  # |P_onnx − P_sklearn| allowed per row (float32 sums against float64)
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
ALGORITHMS = ("forest", "binary-forest", "iforest")
FEATURE_BATCH = 8192  # windows featurised at once (about 16 MB of buffers): the same rows as poll by poll


@dataclass
class DataSet:
    plan: Plan
    x: np.ndarray  # [m, N_FEATURES] float32
    y: np.ndarray  # [m] label: 0 normal, k fault, -1 ignored
    series: np.ndarray  # [m] series number
    device: np.ndarray  # [m] device number
    family: np.ndarray  # [m] Family
    step: np.ndarray  # [m] reading index in its series
    z: np.ndarray  # [m] baseline: |value − trailing mean| / trailing spread
    roc: np.ndarray  # [m] baseline: |step| / trailing step spread
    episodes: list[tuple[int, str, list[int]]]  # (series-independent id, kind, row indexes)
    devices: int


def dataset(plan: Plan) -> DataSet:
    devices = build(plan)
    stream = WindowStream(families={d.id: d.family for d in devices})
    keys: dict[tuple[str, str], int] = {}
    dev_no = {d.id: i for i, d in enumerate(devices)}
    for d in devices:
        for p in d.values:
            keys[(d.id, p)] = len(keys)
    xs: list[np.ndarray] = []
    ser: list[int] = []
    stp: list[int] = []
    pending: list[Windows] = []
    held = 0
    for poll in polls(devices, plan):
        ready, win, issues = stream.windows(poll)
        if issues:
            raise RuntimeError(f"simulated data gave window issues: {issues[0]}")
        if ready:
            pending.append(win)
            held += len(ready)
            ser += [keys[(r.device, r.point)] for r in ready]
            stp += [index_of(r.ts_ms, plan) for r in ready]
        if held >= FEATURE_BATCH:
            xs.append(Windows.join(pending).features())
            pending, held = [], 0
    if pending:
        xs.append(Windows.join(pending).features())
    x = np.concatenate(xs)
    series = np.asarray(ser)
    step = np.asarray(stp)
    names = list(keys)
    labels = {k: d.labels[k[1]] for d in devices for k in [(d.id, p) for p in d.values]}
    values = {(d.id, p): d.values[p] for d in devices for p in d.values}
    y = np.empty(len(series), dtype=np.int64)
    z = np.empty(len(series))
    roc = np.empty(len(series))
    fam = np.empty(len(series), dtype=np.int64)
    dev = np.empty(len(series), dtype=np.int64)
    fam_of = {d.id: int(d.family) for d in devices}
    for s, (d_id, p) in enumerate(names):
        m = series == s
        idx = step[m]
        y[m] = labels[(d_id, p)][idx]
        zz, rr = _baseline_inputs(values[(d_id, p)])
        z[m] = zz[idx]
        roc[m] = rr[idx]
        fam[m] = fam_of[d_id]
        dev[m] = dev_no[d_id]
    # episodes: rows of each injected episode (for episode-level recall)
    eps: list[tuple[int, str, list[int]]] = []
    row_of = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(series, step, strict=True))}
    for d in devices:
        for e in d.episodes:
            hits: list[int] = []
            for p in e.points:
                s = keys[(d.id, p)]
                lab = d.labels[p]
                hits += [row_of[(s, t)] for t in range(e.start, e.end) if (s, t) in row_of and lab[t] > 0]
            if hits:
                eps.append((len(eps), e.kind, hits))
    return DataSet(plan, x, y, series, dev, fam, step, z, roc, eps, len(devices))


def _baseline_inputs(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per reading: z-score against the previous WINDOW points and the step against their step spread."""
    n = len(x)
    z = np.zeros(n)
    roc = np.zeros(n)
    if n <= WINDOW + 1:
        return z, roc
    prev = np.lib.stride_tricks.sliding_window_view(x[:-1], WINDOW)  # row j: x[j .. j+W-1], judged: x[j+W]
    cur = x[WINDOW:]
    floor = 1e-2 * np.max(np.abs(prev), axis=1) + 1e-6
    sd = prev.std(axis=1) + floor
    dsd = np.diff(prev, axis=1).std(axis=1) + floor
    z[WINDOW:] = np.abs(cur - prev.mean(axis=1)) / sd
    roc[WINDOW:] = np.abs(cur - prev[:, -1]) / dsd
    return z, roc


# --- models -------------------------------------------------------------------------------

def fit(ds: DataSet, algorithm: str, seed: int) -> Any:
    from sklearn.ensemble import IsolationForest, RandomForestClassifier

    ok = ds.y >= 0
    x, y = ds.x[ok], ds.y[ok]
    rng = np.random.default_rng(seed)
    keep = (y > 0) | (rng.random(len(y)) < 0.35)  # normal rows are plentiful and alike: a third is enough
    x, y = x[keep], y[keep]
    if algorithm == "iforest":
        m = IsolationForest(n_estimators=100, max_samples=512, contamination="auto", random_state=seed)
        m.fit(x[y == 0])
        return m
    if algorithm == "binary-forest":
        y = (y > 0).astype(np.int64)
    # 20 trees of depth ≤ 10 (about 10 k nodes): a gateway's onnxruntime session holds about 0.5 KB a node, and
    # 30 trees of depth 12 (23 k nodes) were 7 MB more for no better F1 per fault type (docs/model-card.md)
    m = RandomForestClassifier(n_estimators=20, max_depth=10, min_samples_leaf=8, max_features="sqrt",
                               class_weight="balanced_subsample", n_jobs=2, random_state=seed)
    m.fit(x, y)
    return m


def sk_scores(model: Any, x: np.ndarray) -> np.ndarray:
    if hasattr(model, "predict_proba"):
        p = model.predict_proba(x)
        return 1.0 - p[:, list(model.classes_).index(0)]
    return -model.decision_function(x)


def choose_threshold(scores: np.ndarray, ds: DataSet) -> float:
    """The threshold with the best mean F1 over fault types on validation data (ties: the higher threshold).

    Per fault type, as the evaluation reports it: that type's readings against false alarms on the normal
    readings of the families where it occurs. The best F1 over all faulty readings together would let the
    long episodes (drift, stuck, offset) buy recall with false alarms, which every rare type — a spike is
    one reading — then pays for.
    """
    ok = ds.y >= 0
    s, y, fam = scores[ok], ds.y[ok], ds.family[ok]
    normal = y == 0
    kinds = [(k, np.isin(fam, [int(f) for f, ks in FAMILY_FAULTS.items() if kind in ks]))
             for k, kind in enumerate(FAULTS, 1) if np.any(y == k)]
    best, best_t = -1.0, 0.5
    for t in np.unique(np.quantile(s, np.linspace(0.5, 0.999, 200))):
        f = s >= t
        f1s = []
        for k, in_fam in kinds:
            pos = y == k
            tp = float(np.sum(f & pos))
            f1s.append(2 * tp / max(1.0, 2 * tp + float(np.sum(f & normal & in_fam)) + float(np.sum(~f & pos))))
        macro = float(np.mean(f1s)) if f1s else 0.0
        if macro >= best:
            best, best_t = macro, float(t)
    return best_t


def to_onnx(model: Any, *, model_id: str, version: int, threshold: float, extra: dict[str, str]) -> bytes:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options: dict[int, dict[str, Any]] = {}
    score = "decision"
    classes: list[str] = []
    if hasattr(model, "predict_proba"):
        options[id(model)] = {"zipmap": False}
        score = "proba"
        classes = [CLASSES[int(c)] if len(model.classes_) > 2 else ("normal", "anomaly")[int(c)]
                   for c in model.classes_]
        if int(model.classes_[0]) != 0:
            raise ValueError("class 0 (normal) must come first")
    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, N_FEATURES]))],
                          target_opset=TARGET_OPSET, options=options)
    meta = {"model_id": model_id, "version": str(version), "feature_set": FEATURE_SET,
            "features": ",".join(FEATURES), "score": score, "threshold": repr(float(threshold)),
            "classes": ",".join(classes), **extra}
    onnx.helper.set_model_props(onx, {META_PREFIX + k: v for k, v in meta.items()})
    onx.producer_name = "carbonlink"
    onx.graph.name = model_id  # skl2onnx names the graph with a random uuid: the same seed must give the same file
    onx.doc_string = "CarbonLink anomaly model: features of one window of one series (docs/model-card.md)"
    return bytes(onx.SerializeToString())


def onnx_vs_sklearn(model: Any, data: bytes, x: np.ndarray) -> float:
    """Largest difference between the ONNX model's scores and the sklearn model's on ``x``."""
    from carbonlink.anomaly.model import load

    m = load(data)
    a = m.score(x)
    b = sk_scores(model, x)
    return float(np.max(np.abs(a - b))) if len(x) else 0.0


# --- evaluation -----------------------------------------------------------------------------

def _f1(tp: int, fp: int, fn: int) -> dict[str, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "tp": tp, "fp": fp, "fn": fn}


def metrics(ds: DataSet, flags: np.ndarray) -> dict[str, Any]:
    """Per fault type (one against normal, within the families it applies to), overall, false alarms."""
    out: dict[str, Any] = {"per_fault": {}}
    normal = ds.y == 0
    for k, kind in enumerate(FAULTS, 1):
        fams = [int(f) for f, kinds in FAMILY_FAULTS.items() if kind in kinds]
        in_fam = np.isin(ds.family, fams)
        pos = ds.y == k
        if not pos.any():
            continue
        tp = int(np.sum(flags & pos))
        fn = int(np.sum(~flags & pos))
        fp = int(np.sum(flags & normal & in_fam))
        eps = [rows for _, kd, rows in ds.episodes if kd == kind]
        hit = sum(1 for rows in eps if flags[rows].any())
        out["per_fault"][kind] = {**_f1(tp, fp, fn), "episodes": len(eps),
                                  "episode_recall": round(hit / len(eps), 4) if eps else None}
    pos = ds.y > 0
    out["overall"] = _f1(int(np.sum(flags & pos)), int(np.sum(flags & normal)), int(np.sum(~flags & pos)))
    # false alarms: runs of flagged normal readings, per device and day
    alarms = 0
    for s in np.unique(ds.series):
        m = ds.series == s
        order = np.argsort(ds.step[m])
        fa = (flags[m] & normal[m])[order]
        alarms += int(fa[0]) + int(np.sum(fa[1:] & ~fa[:-1]))
    out["false_alarms_per_device_day"] = round(alarms / (ds.devices * ds.plan.days), 3)
    out["false_alarm_readings_share"] = round(float(np.sum(flags & normal)) / max(1, int(np.sum(normal))), 5)
    return out


def tune_baseline(ds: DataSet) -> tuple[float, float]:
    best, best_zr = -1.0, (4.0, 8.0)
    for z in (3.0, 4.0, 5.0, 6.0, 8.0, 12.0):
        for r in (4.0, 6.0, 8.0, 12.0, 20.0, float("inf")):
            f1 = metrics_overall_f1(ds, baseline_flags(ds, z, r))
            if f1 > best:
                best, best_zr = f1, (z, r)
    return best_zr


def metrics_overall_f1(ds: DataSet, flags: np.ndarray) -> float:
    pos, normal = ds.y > 0, ds.y == 0
    tp, fp, fn = np.sum(flags & pos), np.sum(flags & normal), np.sum(~flags & pos)
    return float(2 * tp / max(1, 2 * tp + fp + fn))


def baseline_flags(ds: DataSet, z: float, r: float) -> np.ndarray:
    return (ds.z > z) | (ds.roc > r)


def now() -> float:
    return time.perf_counter()


__all__ = ["ALGORITHMS", "CLASSES", "FAULTS", "ONNX_TOLERANCE", "DataSet", "Family", "Plan", "baseline_flags",
           "choose_threshold", "dataset", "fit", "metrics", "onnx_vs_sklearn", "sk_scores", "to_onnx", "tune_baseline"]
