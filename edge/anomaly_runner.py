"""The gateway's anomaly model: every reading's window scored with onnxruntime, offline too.

The agent calls ``feed`` with each poll's readings before they enter the outbox. A reading whose window
scores at or above the model's threshold leaves with the quality flag ``D`` (HJ 212 "fault": rollups
count it as invalid, the conservative choice for MRV) instead of ``N`` — its value is never changed — and
the series' first flagged reading raises an ``anomaly.detected`` event (``anomaly.cleared`` when it ends),
both carrying the model's id, version and hash. Readings the device already flagged are left alone.
There is no "suspect" letter of its own: the wire format's flags are HJ 212's eight, and HJ 76 would count
a suspect reading as not valid all the same (docs/model-card.md, "Why the flag is D").

A model file over ``EDGE_MAX_MODEL_BYTES`` (1 MiB) is refused (``too_large``) whatever its origin: its
onnxruntime session would cost the gateway 10–13 MB of memory per MiB of file.

Models arrive through the shadow as ``desired.model`` = {id, version, sha256, onnx_b64[, flag]} (without
``onnx_b64``: a model the gateway holds already, the packaged one or the one before): the hash is checked,
the file loaded and probed (``carbonlink.anomaly.model.load``), and only then does it replace the running
model; the last good one is kept on disk (``anomaly/current.onnx``, the one before it as ``previous.onnx``,
reloaded from there for a rollback rather than held as a second onnxruntime session).
The cloud's shadow holds at most 16 KB, so a full model file does not fit it yet (see docs/model-card.md).
A refused model, a model that later returns no finite score (rolled back to the previous one), a window
with missing or non-finite points: each is an event with its reason, and no reading is ever dropped or
altered because of it. Without onnxruntime (no ``edge-ml`` extra) the runner says so once and passes
readings through.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Quality, Reading

log = logging.getLogger(__name__)

_HASH_RE = re.compile(r"[0-9a-f]{64}")
MAX_B64 = 12 * 1024 * 1024
ISSUE_EVERY_MS = 3_600_000  # a series' repeated window problems: one event an hour, with the count
FLAGS = {"D": Quality.FAULT, "none": None}


class AnomalyRunner:
    def __init__(self, *, data_dir: Path, sink: EventSink, clock: Callable[[], float] = time.time,
                 flag: str = "D", enabled: bool = True) -> None:
        self.dir = data_dir / "anomaly"
        self.sink = sink
        self.clock = clock
        self.flag: Quality | None = FLAGS[flag]
        self.model: Any = None
        # the model before the running one, by hash: reloaded from disk (or the package) on a rollback rather
        # than kept as a second onnxruntime session (3-4 MB for the packaged model, up to 13 MB for 1 MiB)
        self._previous: str | None = None
        self.unavailable: str | None = None
        self.last_error: str | None = None
        self.flagged = 0
        self.judged = 0
        self._issue_at: dict[tuple[str, str, str], tuple[int, int]] = {}  # (cause, device, point)
        self._rolled_back: set[str] = set()  # hashes that failed on live data: not applied again
        self.disabled = not enabled
        if self.disabled:  # gateway.yaml anomaly.enabled: false — nothing imported, readings pass unjudged
            self.unavailable = "anomaly model off in gateway.yaml (anomaly.enabled: false)"
            log.info(self.unavailable)
            return
        try:
            from carbonlink.anomaly.stream import WindowStream
        except ImportError as exc:  # numpy missing: the gateway runs without the model
            self.unavailable = f"anomaly model off: {exc} (pip install 'carbonlink[edge-ml]')"
            log.warning(self.unavailable)
            return
        self.stream = WindowStream()
        self._load_saved()

    # --- models ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _emit(self, kind: str, severity: str = "info", device: str | None = None, point: str | None = None,
              ts_ms: int | None = None, **body: Any) -> None:
        try:
            self.sink.emit(f"anomaly.{kind}", ts_ms=ts_ms if ts_ms is not None else self._now_ms(),
                           severity=severity, device=device, point=point, body=body)
        except Exception:  # an event that cannot be kept must not stop readings
            log.exception("anomaly event %s could not be emitted", kind)

    def _load_saved(self) -> None:
        from carbonlink.anomaly.model import EDGE_MAX_MODEL_BYTES, ModelError, load, load_default

        for name in ("current", "previous"):
            path = self.dir / f"{name}.onnx"
            if not path.exists():
                continue
            try:
                self.model = load(path.read_bytes(), max_bytes=EDGE_MAX_MODEL_BYTES)
                log.info("anomaly model %s v%d from %s", self.model.info.model_id, self.model.info.version, path)
                return
            except (OSError, ModelError) as exc:
                self._emit("model_rejected", "warning", reason=f"saved model {path.name} does not load: {exc}",
                           code=getattr(exc, "code", "io"))
        try:
            self.model = load_default(max_bytes=EDGE_MAX_MODEL_BYTES)
        except (OSError, ModelError) as exc:
            self.unavailable = f"no usable anomaly model: {exc}"
            self._emit("unavailable", "warning", reason=self.unavailable)

    def apply(self, doc: Any) -> str | None:
        """The shadow's ``desired.model``; None when running it, else why it was refused (last good kept)."""
        refused = self._apply(doc)
        if refused:
            self.last_error = refused
            self._emit("model_rejected", "warning", reason=refused,
                       **({"model_id": doc.get("id"), "model_version": doc.get("version")}
                          if isinstance(doc, dict) else {}))
            log.warning("desired model refused: %s", refused)
        return refused

    def _apply(self, doc: Any) -> str | None:
        if self.disabled:
            return self.unavailable
        if self.unavailable and self.model is None and "onnxruntime" in self.unavailable:
            return self.unavailable
        if not isinstance(doc, dict):
            return "desired.model must be an object {id, version, sha256, onnx_b64}"
        unknown = set(doc) - {"id", "version", "sha256", "onnx_b64", "flag"}
        if unknown:
            return f"desired.model has unknown key(s) {', '.join(sorted(unknown))}"
        mid, ver, digest, b64 = doc.get("id"), doc.get("version"), doc.get("sha256"), doc.get("onnx_b64")
        if not isinstance(mid, str) or not 1 <= len(mid) <= 64:
            return "desired.model.id must be 1-64 characters"
        if not isinstance(ver, int) or isinstance(ver, bool) or ver < 0:
            return "desired.model.version must be a non-negative integer"
        if not isinstance(digest, str) or not _HASH_RE.fullmatch(digest):
            return "desired.model.sha256 must be 64 lowercase hex digits"
        flag = doc.get("flag", "D")
        if flag not in FLAGS:
            return f"desired.model.flag must be one of {', '.join(FLAGS)}"
        if digest in self._rolled_back:
            return f"model {mid} v{ver} was rolled back (no finite score on live windows); send another version"
        if self.model is not None and self.model.info.sha256 == digest:
            self.flag = FLAGS[flag]
            self.last_error = None
            return None  # running it already
        if b64 is None:  # by hash: a model this gateway already holds (the packaged one, or the one before)
            data = self._held(digest)
            if data is None:
                return (f"model {digest[:12]} is not on this gateway and was not delivered "
                        "(upload it with PUT /api/models/{id}/{version}; the gateway fetches it by hash)")
        elif not isinstance(b64, str) or len(b64) > MAX_B64:
            return "desired.model.onnx_b64 must be the model file in base64 (at most 9 MB)"
        else:
            try:
                data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError):
                return "desired.model.onnx_b64 is not valid base64"
        from carbonlink.anomaly.model import EDGE_MAX_MODEL_BYTES, ModelError, load

        try:
            model = load(data, expect_sha256=digest, max_bytes=EDGE_MAX_MODEL_BYTES)
        except ModelError as exc:
            keep = f"; keeps running {self.model.info.model_id} v{self.model.info.version}" if self.model else ""
            return f"model {mid} v{ver} refused ({exc.code}): {exc}{keep}"
        if (model.info.model_id, model.info.version) != (mid, ver):
            return (f"model file says it is {model.info.model_id} v{model.info.version}, "
                    f"the shadow says {mid} v{ver}; not applied")
        try:
            self._save(data)
        except OSError as exc:
            return f"model {mid} v{ver} could not be saved ({exc}); not applied"
        self._previous, self.model = (self.model.info.sha256 if self.model else None), model
        self.flag = FLAGS[flag]
        self.last_error = None
        self._emit("model_applied", **model.info.provenance())
        log.info("anomaly model %s v%d applied", mid, ver)
        return None

    def holds(self, digest: str) -> bool:
        """Whether this gateway can run the model ``digest`` without fetching it (running, kept or packaged)."""
        if self.disabled:
            return True  # nothing to fetch it for: the shadow gets the reason from apply
        if self.model is not None and self.model.info.sha256 == digest:
            return True
        try:
            return self._held(digest) is not None
        except ImportError:  # no runtime: nothing to fetch it for either
            return True

    def _held(self, digest: str) -> bytes | None:
        from carbonlink.anomaly.model import default_model_bytes, sha256_hex

        for read in (default_model_bytes, (self.dir / "previous.onnx").read_bytes,
                     (self.dir / "current.onnx").read_bytes):
            try:
                data = read()
            except OSError:
                continue
            if sha256_hex(data) == digest:
                return data
        return None

    def _save(self, data: bytes) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.dir / "candidate.onnx"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        cur = self.dir / "current.onnx"
        if cur.exists():
            os.replace(cur, self.dir / "previous.onnx")
        os.replace(tmp, cur)

    def _rollback(self, why: str) -> None:
        from carbonlink.anomaly.model import EDGE_MAX_MODEL_BYTES, ModelError, load

        bad = self.model.info
        if self._previous is None:
            return
        data = self._held(self._previous)  # the packaged model or previous.onnx, checked by hash
        try:
            good = load(data, expect_sha256=self._previous, max_bytes=EDGE_MAX_MODEL_BYTES) if data else None
        except ModelError:
            good = None
        if good is None:  # gone or damaged since it ran: the bad model goes on, NaN windows pass unjudged
            self._previous = None
            lost = "does not load" if data else "is no longer on this gateway"
            self._emit("model_rollback_failed", "warning", reason=f"{why}; the previous model {lost}",
                       **bad.provenance())
            return
        self._rolled_back.add(bad.sha256)
        self.model, self._previous = good, None
        prev, cur = self.dir / "previous.onnx", self.dir / "current.onnx"
        if prev.exists():
            os.replace(prev, cur)
        else:  # the previous one was the packaged model: a restart must not load the bad one again
            cur.unlink(missing_ok=True)
        self._emit("model_rollback", "warning", reason=why, bad_model_id=bad.model_id,
                   bad_model_version=bad.version, **self.model.info.provenance())

    # --- readings -------------------------------------------------------------------------

    def feed(self, readings: list[Reading]) -> list[Reading]:
        """The same readings, those found anomalous with the flag set; never raises, never drops one."""
        if self.model is None or not readings:
            return readings
        try:
            return self._feed(readings)
        except Exception as exc:  # a bug or a model failing at run time must not cost a reading
            log.exception("anomaly scoring failed; readings pass unjudged")
            self._emit("error", "warning", reason=f"{type(exc).__name__}: {str(exc)[:200]}")
            return readings

    def _feed(self, readings: list[Reading]) -> list[Reading]:
        res = self.stream.score(readings, self.model)
        info = self.model.info
        prov = info.provenance()
        for issue in res.issues:
            key = (issue.cause, issue.device, issue.point)
            last, count = self._issue_at.get(key, (-ISSUE_EVERY_MS, 0))
            if issue.ts_ms - last >= ISSUE_EVERY_MS:
                self._emit(issue.kind, "warning" if issue.kind == "score_invalid" else "info", issue.device,
                           issue.point, issue.ts_ms, reason=issue.reason, cause=issue.cause, suppressed=count, **prov)
                self._issue_at[key] = (issue.ts_ms, 0)
            else:
                self._issue_at[key] = (last, count + 1)
        if any(i.kind == "score_invalid" for i in res.issues):
            self._rollback("the model returned no finite score for live windows")
        for e in res.episodes:
            if e.started:
                self._emit("detected", "warning", e.device, e.point, e.ts_ms, score=round(e.peak, 4),
                           threshold=info.threshold, flag=self.flag.value if self.flag else None, **prov)
            else:
                self._emit("cleared", "info", e.device, e.point, e.ts_ms, since=e.since_ms, readings=e.count,
                           peak_score=round(e.peak, 4), **prov)
        self.judged += len(res.scored)
        hot = {(s.reading.device, s.reading.point, s.reading.ts_ms) for s in res.scored if s.anomalous}
        if not hot or self.flag is None:
            return readings
        self.flagged += len(hot)
        return [replace(r, quality=self.flag) if r.quality is Quality.NORMAL and (r.device, r.point, r.ts_ms) in hot
                else r for r in readings]

    def state(self) -> dict[str, Any]:
        """What the shadow reports as ``reported.model``."""
        if self.model is None:
            return {"running": None, "error": self.unavailable}
        return {"running": {"id": self.model.info.model_id, "version": self.model.info.version,
                            "sha256": self.model.info.sha256},
                "flag": self.flag.value if self.flag else "none", "judged": self.judged, "flagged": self.flagged,
                "error": self.last_error}
