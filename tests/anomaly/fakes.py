"""ONNX files for the bad-input tests, built with onnx.helper: other metadata, other inputs, NaN outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from carbonlink.anomaly.features import FEATURE_SET, FEATURES, N_FEATURES
from carbonlink.anomaly.model import META_PREFIX, default_model_bytes
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import CemsStack

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
POINTS = ("so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp")


def meta(model_id: str = "fake", version: int = 1, threshold: float = 0.5, **extra: str) -> dict[str, str]:
    m = {"model_id": model_id, "version": str(version), "feature_set": FEATURE_SET, "features": ",".join(FEATURES),
         "score": "proba", "threshold": repr(threshold), **extra}
    return {META_PREFIX + k: v for k, v in m.items()}


def with_meta(data: bytes | None = None, **changes: str) -> bytes:
    """The packaged model (or ``data``) with metadata keys replaced (a new version is a new file and hash)."""
    m = onnx.load_from_string(data or default_model_bytes())
    props = {p.key: p.value for p in m.metadata_props}
    props.update({META_PREFIX + k: v for k, v in changes.items()})
    del m.metadata_props[:]
    helper.set_model_props(m, props)
    return bytes(m.SerializeToString())


def _model(nodes: list[onnx.NodeProto], width: int, inits: list[onnx.TensorProto], props: dict[str, str]) -> bytes:
    g = helper.make_graph(nodes, "fake", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, width])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, props)
    return bytes(m.SerializeToString())


def nan_above(column: int = 7, limit: float = 3.5, **kw: str) -> bytes:
    """P(normal) = sqrt(limit - x[column]) / 4: finite on the probe batch (|x| <= 3), NaN beyond ``limit``."""
    c = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=np.float32), name)  # noqa: E731
    inits = [c("limit", [limit]), c("four", [4.0]), c("one", [1.0]),
             numpy_helper.from_array(np.asarray([column], dtype=np.int64), "col")]
    nodes = [helper.make_node("Gather", ["features", "col"], ["x"], axis=1),
             helper.make_node("Sub", ["limit", "x"], ["d"]), helper.make_node("Sqrt", ["d"], ["s"]),
             helper.make_node("Div", ["s", "four"], ["p"]), helper.make_node("Sub", ["one", "p"], ["q"]),
             helper.make_node("Concat", ["p", "q"], ["probabilities"], axis=1)]
    return _model(nodes, N_FEATURES, inits, meta(**kw))


def always_nan(**kw: str) -> bytes:
    return nan_above(limit=-100.0, **kw)


def wrong_width(width: int = 5) -> bytes:
    c = numpy_helper.from_array(np.asarray([0.5, 0.5], dtype=np.float32), "half")
    nodes = [helper.make_node("ReduceSum", ["features"], ["s"], keepdims=1),
             helper.make_node("Mul", ["s", "half"], ["probabilities"])]
    return _model(nodes, width, [c], meta())


def cems_polls(minutes: int, *, seed: int = 3, stuck_from: int | None = None, spike_at: int | None = None,
               device: str = "stack-1") -> list[list[Reading]]:
    """One reading a minute per point of a simulated stack; optionally stuck from a minute on, or one spike."""
    stack = CemsStack(seed=seed, clock=lambda: 0.0)
    out: list[list[Reading]] = []
    frozen: dict[str, float] | None = None
    for m in range(minutes):
        ts = T0 + m * 60_000
        v = stack.true_values(ts / 1000)
        if stuck_from is not None and m >= stuck_from:
            frozen = frozen or v
            v = frozen
        if spike_at is not None and m == spike_at:
            v = dict(v, so2=v["so2"] * 8.0)
        out.append([Reading(device, p, ts, float(v[p]), "") for p in POINTS])
    return out
