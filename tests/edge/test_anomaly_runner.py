"""The gateway's anomaly runner: flags never change values, models come through the shadow and are checked,
the last good model keeps running, and every failure is an event rather than a lost reading."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from carbonlink.anomaly.model import EDGE_MAX_MODEL_BYTES, default_model_bytes, load, sha256_hex
from carbonlink.edge.anomaly_runner import AnomalyRunner
from carbonlink.edge.shadow import plan
from carbonlink.kernel.wire import Quality
from tests.anomaly import fakes


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        if self.fail:
            raise RuntimeError("sink down")
        self.events.append({"kind": kind, "ts_ms": ts_ms, "severity": severity, "device": device, "point": point,
                            "body": body or {}})

    def kinds(self) -> list[str]:
        return [e["kind"] for e in self.events]


def runner(tmp_path: Path, sink: Sink | None = None) -> AnomalyRunner:
    return AnomalyRunner(data_dir=tmp_path, sink=sink or Sink(), clock=lambda: 1_767_225_600.0)


def doc(data: bytes, *, model_id: str = "cl-anomaly", version: int = 2, digest: str | None = None) -> dict[str, Any]:
    return {"id": model_id, "version": version, "sha256": digest or sha256_hex(data),
            "onnx_b64": base64.b64encode(data).decode()}


def test_stuck_readings_flagged_values_untouched_events_carry_provenance(tmp_path: Path) -> None:
    sink = Sink()
    r = runner(tmp_path, sink)
    info = r.model.info
    out_all, in_all = [], []
    for p in fakes.cems_polls(260, stuck_from=150):
        out = r.feed(p)
        assert len(out) == len(p)
        assert [(x.device, x.point, x.ts_ms, x.value, x.unit) for x in out] == \
            [(x.device, x.point, x.ts_ms, x.value, x.unit) for x in p]
        out_all += out
        in_all += p
    flagged = [x for x in out_all if x.quality is Quality.FAULT]
    assert flagged and all(x.ts_ms >= fakes.T0 + 150 * 60_000 for x in flagged[-10:])
    detected = [e for e in sink.events if e["kind"] == "anomaly.detected"]
    assert detected and detected[0]["severity"] == "warning"
    body = detected[0]["body"]
    assert (body["model_id"], body["model_version"], body["model_sha256"]) == (info.model_id, info.version,
                                                                               info.sha256)
    assert r.state()["flagged"] == len(flagged) and r.state()["running"]["sha256"] == info.sha256


def test_device_flags_are_left_alone(tmp_path: Path) -> None:
    r = runner(tmp_path)
    from dataclasses import replace
    for p in fakes.cems_polls(200, stuck_from=130):
        p = [replace(x, quality=Quality.CALIBRATION) for x in p] if p[0].ts_ms > fakes.T0 + 150 * 60_000 else p
        out = r.feed(p)
        assert all(o.quality is Quality.CALIBRATION for o in out if o.ts_ms > fakes.T0 + 150 * 60_000)


def test_new_model_through_the_shadow_is_saved_and_survives_a_restart(tmp_path: Path) -> None:
    sink = Sink()
    r = runner(tmp_path, sink)
    v2 = fakes.with_meta(version="20")  # versions the packaged model will not reach soon
    assert r.apply(doc(v2, version=20)) is None
    assert r.model.info.version == 20 and "anomaly.model_applied" in sink.kinds()
    assert (tmp_path / "anomaly" / "current.onnx").read_bytes() == v2
    assert r.apply(doc(v2, version=20)) is None  # the same again: nothing to do
    v3 = fakes.with_meta(version="21")
    assert r.apply(doc(v3, version=21)) is None
    assert (tmp_path / "anomaly" / "previous.onnx").read_bytes() == v2
    assert runner(tmp_path).model.info.version == 21


@pytest.mark.parametrize("case,code", [
    ("hash", "hash_mismatch"), ("not_onnx", "not_onnx"), ("width", "wrong_inputs"), ("nan", "bad_output"),
    ("b64", "base64"), ("version", "says it is"), ("shape", "must be"),
])
def test_bad_models_refused_previous_keeps_running(tmp_path: Path, case: str, code: str) -> None:
    sink = Sink()
    r = runner(tmp_path, sink)
    before = r.model.info.sha256
    d: Any = {
        "hash": doc(fakes.with_meta(version="2"), digest="a" * 64),
        "not_onnx": doc(b"MZ\x90\x00 definitely not a model"),
        "width": doc(fakes.wrong_width(), model_id="fake", version=1),
        "nan": doc(fakes.always_nan(), model_id="fake", version=1),
        "b64": {**doc(default_model_bytes()), "sha256": "b" * 64, "onnx_b64": "%%%not base64%%%"},
        "version": doc(fakes.with_meta(version="7"), version=8),
        "shape": ["not", "an", "object"],
    }[case]
    refused = r.apply(d)
    assert refused and code in refused
    assert r.model.info.sha256 == before and r.state()["error"] == refused
    assert sink.kinds()[-1] == "anomaly.model_rejected"
    assert not (tmp_path / "anomaly" / "current.onnx").exists()
    polls = fakes.cems_polls(130)
    out = [x for p in polls for x in r.feed(p)]
    assert len(out) == sum(len(p) for p in polls)


def test_a_model_over_the_gateway_memory_budget_is_refused(tmp_path: Path) -> None:
    """A valid model the cloud could run, but whose file (~13 bytes of RSS per byte) is over the edge's budget."""
    sink = Sink()
    r = runner(tmp_path, sink)
    before = r.model.info.sha256
    big = fakes.with_meta(version="2", padding="x" * EDGE_MAX_MODEL_BYTES)
    assert load(big).info.version == 2  # nothing wrong with it but its size
    refused = r.apply(doc(big))
    assert refused and "too_large" in refused and "memory" in refused
    assert r.model.info.sha256 == before and sink.kinds()[-1] == "anomaly.model_rejected"
    assert not (tmp_path / "anomaly" / "current.onnx").exists()
    # one written to disk some other way is not loaded at start either: the packaged model runs
    (tmp_path / "anomaly").mkdir()
    (tmp_path / "anomaly" / "current.onnx").write_bytes(big)
    assert runner(tmp_path).model.info.sha256 == sha256_hex(default_model_bytes())


def test_model_returning_nan_on_live_windows_is_rolled_back(tmp_path: Path) -> None:
    sink = Sink()
    r = runner(tmp_path, sink)
    good = r.model.info.sha256
    bad = fakes.nan_above(column=7, limit=3.5, model_id="fragile", version=5)  # NaN once a big jump shows
    assert r.apply(doc(bad, model_id="fragile", version=5)) is None
    polls = fakes.cems_polls(200, spike_at=150)
    out = [x for p in polls for x in r.feed(p)]
    assert len(out) == sum(len(p) for p in polls) and [x.value for x in out] == [x.value for p in polls for x in p]
    assert "anomaly.score_invalid" in sink.kinds() and "anomaly.model_rollback" in sink.kinds()
    assert r.model.info.sha256 == good
    again = r.apply(doc(bad, model_id="fragile", version=5))  # the shadow sends it again: not re-applied
    assert again and "rolled back" in again and r.model.info.sha256 == good
    # the packaged model ran before: a restart runs it too, not the bad file
    assert not (tmp_path / "anomaly" / "current.onnx").exists()
    assert runner(tmp_path).model.info.sha256 == good


def test_previous_model_is_held_by_hash_and_reloaded_on_rollback(tmp_path: Path) -> None:
    """One onnxruntime session at a time: the model before is reloaded from previous.onnx when needed."""
    sink = Sink()
    r = runner(tmp_path, sink)
    v20 = fakes.with_meta(version="20")
    assert r.apply(doc(v20, version=20)) is None
    bad = fakes.nan_above(column=7, limit=3.5, model_id="fragile", version=5)
    assert r.apply(doc(bad, model_id="fragile", version=5)) is None
    assert r._previous == sha256_hex(v20)  # a hash, not a second session
    for p in fakes.cems_polls(200, spike_at=150):
        r.feed(p)
    assert r.model.info.version == 20 and "anomaly.model_rollback" in sink.kinds()
    assert (tmp_path / "anomaly" / "current.onnx").read_bytes() == v20
    assert runner(tmp_path).model.info.version == 20


def test_rollback_without_the_previous_file_keeps_the_model_and_says_so(tmp_path: Path) -> None:
    sink = Sink()
    r = runner(tmp_path, sink)
    assert r.apply(doc(fakes.with_meta(version="20"), version=20)) is None
    bad = fakes.nan_above(column=7, limit=3.5, model_id="fragile", version=5)
    assert r.apply(doc(bad, model_id="fragile", version=5)) is None
    (tmp_path / "anomaly" / "previous.onnx").unlink()  # lost since (a wiped card, a hand edit)
    polls = fakes.cems_polls(200, spike_at=150)
    out = [x for p in polls for x in r.feed(p)]
    assert [x.value for x in out] == [x.value for p in polls for x in p]  # nothing lost, values untouched
    assert r.model.info.model_id == "fragile" and sink.kinds().count("anomaly.model_rollback_failed") == 1
    assert "anomaly.model_rollback" not in sink.kinds()


def test_corrupt_saved_model_falls_back(tmp_path: Path) -> None:
    (tmp_path / "anomaly").mkdir()
    (tmp_path / "anomaly" / "current.onnx").write_bytes(b"garbage")
    sink = Sink()
    r = runner(tmp_path, sink)
    assert r.model.info.sha256 == sha256_hex(default_model_bytes())
    assert sink.kinds() == ["anomaly.model_rejected"]


def test_missing_points_and_nan_are_events_not_losses(tmp_path: Path) -> None:
    from dataclasses import replace
    sink = Sink()
    r = runner(tmp_path, sink)
    polls = fakes.cems_polls(130)
    polls[125] = [replace(polls[125][0], value=float("nan")), *polls[125][1:]]
    del polls[100:110]  # ten minutes missing
    out = [x for p in polls for x in r.feed(p)]
    assert len(out) == sum(len(p) for p in polls)
    reasons = [e["body"]["reason"] for e in sink.events if e["kind"] == "anomaly.window_incomplete"]
    assert any("missing points" in x for x in reasons) and any("finite" in x for x in reasons)


def test_a_failing_sink_never_costs_a_reading(tmp_path: Path) -> None:
    r = runner(tmp_path, Sink(fail=True))
    polls = fakes.cems_polls(260, stuck_from=150)
    assert sum(len(r.feed(p)) for p in polls) == sum(len(p) for p in polls)


def test_shadow_passes_model_to_the_runner() -> None:
    ok, rejected = plan({"model": {"id": "x"}, "bogus": 1}, {})
    assert ok == {"model": {"id": "x"}} and "bogus" in rejected


def test_without_onnxruntime_readings_pass_and_state_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import sys
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # an edge-only install
    sink = Sink()
    r = runner(tmp_path, sink)
    polls = fakes.cems_polls(130)
    assert [r.feed(p) for p in polls] == polls
    assert r.model is None and "edge-ml" in r.state()["error"] and sink.kinds() == ["anomaly.unavailable"]
    refused = r.apply(doc(fakes.with_meta(version="2")))
    assert refused and "onnxruntime" in refused


def test_a_held_model_by_hash_alone(tmp_path: Path) -> None:
    r = runner(tmp_path)
    packaged = r.model.info
    assert r.apply(doc(fakes.with_meta(version="20"), version=20)) is None
    back = {"id": packaged.model_id, "version": packaged.version, "sha256": packaged.sha256}
    assert r.apply(back) is None and r.model.info.sha256 == packaged.sha256  # back to the packaged model
    unknown = {"id": "x", "version": 9, "sha256": "c" * 64}
    refused = r.apply(unknown)
    assert refused and "not on this gateway" in refused and r.model.info.sha256 == packaged.sha256


def test_switched_off_in_the_config_the_runner_judges_nothing_and_says_why(tmp_path: Path) -> None:
    from carbonlink.kernel.wire import Reading

    sink = Sink()
    off = AnomalyRunner(data_dir=tmp_path, sink=sink, clock=lambda: 1_767_225_600.0, enabled=False)
    rs = [Reading.make("cems-1", "so2", 1_767_225_600_000 + i * 1000, 1.0, "mg/m³") for i in range(200)]
    assert off.feed(rs) == rs and off.model is None
    state = off.state()
    assert state["running"] is None and "anomaly.enabled: false" in state["error"]
    data = default_model_bytes()
    refused = off.apply(doc(data))
    assert refused is not None and "anomaly.enabled" in refused
    assert off.holds("ab" * 32)  # nothing to fetch for a gateway that does not run models
    assert not (tmp_path / "anomaly").exists()
