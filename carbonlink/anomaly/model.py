"""Loading, checking and running an anomaly model: an ONNX file and what it says about itself.

A model is one ONNX file. Its metadata (``metadata_props``) names it and states its contract:

* ``carbonlink.model_id``, ``carbonlink.version`` (an integer): provenance carried by every flag it raises;
* ``carbonlink.feature_set`` and ``carbonlink.features``: exactly ``features.FEATURE_SET`` / ``FEATURES``,
  so a model trained on other features is refused rather than fed the wrong columns;
* ``carbonlink.score``: ``proba`` (output ``probabilities``, [n, classes], class 0 is normal; the score is
  1 − P(normal)) or ``decision`` (output ``scores``, [n] or [n, 1], higher is more normal, as
  IsolationForest's decision function; the score is its negation);
* ``carbonlink.threshold``: a window whose score is at or above it is an anomaly;
* ``carbonlink.classes`` (optional): class names, for the most likely fault type in an event.

``load`` checks the hash (when one is expected), that onnxruntime can build a session, the input's name,
type and width, the metadata, and that a fixed probe batch gives one finite score per row. Any failure
is a ``ModelError`` with a short code and a sentence; nothing is half-loaded.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from .features import FEATURE_SET, FEATURES, N_FEATURES

META_PREFIX = "carbonlink."
MAX_MODEL_BYTES = 8 * 1024 * 1024  # larger files are refused before onnxruntime sees them
# A gateway's budget: a tree ensemble's session holds 10–13 bytes of memory per byte of its ONNX file
# (about 0.5 KB per tree node; measured with bench/ml.py) on top of the first session's own ~10 MB.
EDGE_MAX_MODEL_BYTES = 1024 * 1024
DEFAULT_MODEL = "default.onnx"


class ModelError(ValueError):
    """A model that cannot be used; ``code`` is one of not_onnx, hash_mismatch, wrong_inputs, bad_metadata,
    bad_output, too_large, unavailable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    version: int
    sha256: str
    threshold: float
    score: str
    classes: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_version": self.version, "model_sha256": self.sha256}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _probe_rows() -> np.ndarray:
    """A fixed batch every model must score with finite numbers: zeros, ones and a spread of values."""
    grid = np.linspace(-3.0, 3.0, 8, dtype=np.float32)
    rows = [np.zeros(N_FEATURES, dtype=np.float32), np.ones(N_FEATURES, dtype=np.float32)]
    rows += [np.full(N_FEATURES, g, dtype=np.float32) for g in grid]
    return np.stack(rows)


class AnomalyModel:
    """A verified model, ready to score feature rows. Build it with ``load``."""

    def __init__(self, session: Any, info: ModelInfo, input_name: str, output_name: str) -> None:
        self._session = session
        self.info = info
        self._input = input_name
        self._output = output_name

    def raw(self, rows: np.ndarray) -> np.ndarray:
        """The model's output for [n, N_FEATURES] rows: probabilities [n, k] or decisions [n]."""
        out = self._session.run([self._output], {self._input: np.ascontiguousarray(rows, dtype=np.float32)})[0]
        return np.asarray(out, dtype=np.float64)

    def score(self, rows: np.ndarray) -> np.ndarray:
        """One anomaly score per row (higher is more anomalous); NaN where the model gave no usable number."""
        if len(rows) == 0:
            return np.zeros(0)
        out = self.raw(rows)
        if self.info.score == "proba":
            if out.ndim != 2 or out.shape[0] != len(rows):
                raise ModelError("bad_output", f"probabilities have shape {out.shape}, expected [{len(rows)}, k]")
            s = 1.0 - out[:, 0]
        else:
            s = -out.reshape(len(rows), -1)[:, 0]
        return np.where(np.isfinite(s), s, np.nan)

    def fault_type(self, rows: np.ndarray) -> list[str | None]:
        """The most likely fault type per row, for models that name classes (else None)."""
        if self.info.score != "proba" or len(self.info.classes) < 3 or len(rows) == 0:
            return [None] * len(rows)
        p = self.raw(rows)
        idx = np.argmax(p[:, 1:], axis=1) + 1
        return [self.info.classes[i] if i < len(self.info.classes) else None for i in idx]


def _session(data: bytes) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # the gateway was installed without the edge-ml extra
        raise ModelError("unavailable", "onnxruntime is not installed (pip install 'carbonlink[edge-ml]')") from exc
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # a gateway has few cores and other work; one window is tiny
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Memory over speed (bench/ml.py): no arena and no memory pattern, so a large poll's buffers are given
    # back after the run instead of kept for the next one; a tree ensemble has nothing for the graph
    # optimiser to fuse, and skipping it saves the optimised copy of the graph (about 0.7 MB).
    opts.enable_cpu_mem_arena = False
    opts.enable_mem_pattern = False
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for every kind of bad file
        raise ModelError("not_onnx", f"not a loadable ONNX model: {type(exc).__name__}: {str(exc)[:200]}") from None


def load(data: bytes, *, expect_sha256: str | None = None, max_bytes: int = MAX_MODEL_BYTES) -> AnomalyModel:
    """Verify and load a model file's bytes; raises ModelError saying what is wrong.

    ``max_bytes`` is the memory budget as a file size (a gateway passes ``EDGE_MAX_MODEL_BYTES``)."""
    if not isinstance(data, bytes | bytearray):
        raise ModelError("not_onnx", "a model is the bytes of an ONNX file")
    if len(data) > max_bytes:
        raise ModelError("too_large", f"model is {len(data)} bytes; the limit is {max_bytes} "
                                      f"(up to {13 * max_bytes / 1e6:.0f} MB of memory once loaded)")
    digest = sha256_hex(bytes(data))
    if expect_sha256 is not None and digest != expect_sha256.lower():
        raise ModelError("hash_mismatch", f"model has sha256 {digest[:16]}…, expected {expect_sha256[:16]}…")
    sess = _session(bytes(data))
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise ModelError("wrong_inputs", f"model has {len(inputs)} inputs; expected one [n, {N_FEATURES}] float tensor")
    inp = inputs[0]
    shape = list(inp.shape)
    if inp.type != "tensor(float)" or len(shape) != 2 or shape[1] != N_FEATURES:
        raise ModelError("wrong_inputs", f"model input {inp.name!r} is {inp.type} {shape}; "
                                         f"expected tensor(float) [n, {N_FEATURES}]")
    meta = dict(sess.get_modelmeta().custom_metadata_map)
    info = _info(meta, digest)
    want = "probabilities" if info.score == "proba" else "scores"
    names = [o.name for o in sess.get_outputs()]
    if want not in names:
        raise ModelError("bad_output", f"model has outputs {names}; a {info.score!r} model needs {want!r}")
    model = AnomalyModel(sess, info, inp.name, want)
    try:
        probe = model.score(_probe_rows())
    except ModelError:
        raise
    except Exception as exc:  # the session built but cannot run
        raise ModelError("bad_output", f"model fails on the probe batch: {type(exc).__name__}: {str(exc)[:200]}"
                         ) from None
    if probe.shape != (len(_probe_rows()),) or not np.all(np.isfinite(probe)):
        raise ModelError("bad_output", "model returns NaN or no score for the probe batch")
    return model


def _info(meta: dict[str, str], digest: str) -> ModelInfo:
    def get(key: str) -> str:
        v = meta.get(META_PREFIX + key)
        if v is None:
            raise ModelError("bad_metadata", f"model metadata lacks {META_PREFIX + key}")
        return v

    if get("feature_set") != FEATURE_SET or tuple(get("features").split(",")) != FEATURES:
        raise ModelError("wrong_inputs", f"model was trained on features {get('feature_set')!r}; "
                                         f"this runtime computes {FEATURE_SET!r}")
    try:
        version = int(get("version"))
        threshold = float(get("threshold"))
    except ValueError:
        raise ModelError("bad_metadata", "model version must be an integer and threshold a number") from None
    if not math.isfinite(threshold) or version < 0:
        raise ModelError("bad_metadata", "model threshold must be finite and version non-negative")
    score = get("score")
    if score not in ("proba", "decision"):
        raise ModelError("bad_metadata", f"model score kind {score!r} is not proba or decision")
    model_id = get("model_id")
    if not model_id or len(model_id) > 64:
        raise ModelError("bad_metadata", "model id must be 1-64 characters")
    classes = tuple(c for c in meta.get(META_PREFIX + "classes", "").split(",") if c)
    extra = {k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    return ModelInfo(model_id, version, digest, threshold, score, classes, extra)


def default_model_bytes() -> bytes:
    """The model shipped with the package (trained by ``carbonlink ml train --install``)."""
    return resources.files("carbonlink.anomaly").joinpath("models", DEFAULT_MODEL).read_bytes()


def load_default(*, max_bytes: int = MAX_MODEL_BYTES) -> AnomalyModel:
    return load(default_model_bytes(), max_bytes=max_bytes)
