"""`carbonlink ml`: the ONNX export equals the trained model, the commands check and ship models, evaluation
reports per fault type against the baseline on held-out data."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from carbonlink.anomaly.model import default_model_bytes, load, load_default, sha256_hex
from carbonlink.commands.ml import app, evaluation
from carbonlink.commands.mltrain import train as T
from carbonlink.commands.mltrain.data import FAULTS, Plan, build
from carbonlink.edge.anomaly_runner import AnomalyRunner
from tests.anomaly.fakes import with_meta

runner = CliRunner()
SMALL = Plan(seed=5, days=0.5, stacks=1, inverters=1, trees=3, faults_per_day=8)


@pytest.fixture(scope="module")
def small() -> T.DataSet:
    return T.dataset(SMALL)


def test_data_is_seeded_and_labelled() -> None:
    a, b = build(SMALL), build(SMALL)
    assert [d.id for d in a] == [d.id for d in b]
    for da, db in zip(a, b, strict=True):
        for p in da.values:
            assert np.array_equal(da.values[p], db.values[p]) and np.array_equal(da.labels[p], db.labels[p])
    assert any(d.episodes for d in a)
    other = build(Plan(seed=6, days=0.5, stacks=1, inverters=1, trees=3))
    assert not np.array_equal(a[0].values["so2"], other[0].values["so2"])


@pytest.mark.parametrize("algorithm", T.ALGORITHMS)
def test_onnx_scores_equal_sklearn(small: T.DataSet, algorithm: str) -> None:
    model = T.fit(small, algorithm, seed=1)
    data = T.to_onnx(model, model_id="t", version=1, threshold=0.5, extra={})
    assert T.onnx_vs_sklearn(model, data, small.x[:3000]) <= T.ONNX_TOLERANCE
    m = load(data)
    assert m.info.model_id == "t" and m.info.score == ("decision" if algorithm == "iforest" else "proba")
    if algorithm == "forest":
        assert m.info.classes[0] == "normal" and set(m.info.classes[1:]) <= set(FAULTS)


def test_metrics_count_per_fault_and_false_alarms(small: T.DataSet) -> None:
    truth = small.y > 0
    perfect = T.metrics(small, truth)
    assert perfect["overall"]["f1"] == 1.0 and perfect["false_alarms_per_device_day"] == 0
    assert all(v["recall"] == 1.0 and v["episode_recall"] == 1.0 for v in perfect["per_fault"].values())
    everything = T.metrics(small, np.ones(len(small.y), dtype=bool))
    assert everything["false_alarms_per_device_day"] > 0 and everything["overall"]["precision"] < 0.5


def test_train_command_writes_a_checked_model(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    res = runner.invoke(app, ["train", "--out", str(out), "--days", "0.5", "--version", "3", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["onnx_max_abs_diff"] <= summary["onnx_tolerance"] and summary["bytes"] < 1024 * 1024
    m = load(out.read_bytes())
    assert m.info.version == 3 and m.info.extra["train_seeds"] == "11,12" and m.info.sha256 == summary["sha256"]


def test_inspect_and_shadow_doc_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "v20.onnx"
    path.write_bytes(with_meta(version="20"))
    res = runner.invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["model_version"] == 20
    res = runner.invoke(app, ["shadow-doc", str(path)])
    doc = json.loads(res.output)["model"]
    assert base64.b64decode(doc["onnx_b64"]) == path.read_bytes() and doc["sha256"] == sha256_hex(path.read_bytes())

    class Sink:
        def emit(self, *a: object, **k: object) -> None:
            pass

    gw = AnomalyRunner(data_dir=tmp_path / "gw", sink=Sink())
    assert gw.apply(doc) is None and gw.model.info.version == 20
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    res = runner.invoke(app, ["inspect", str(bad)])
    assert res.exit_code == 2 and "not_onnx" in res.output


def test_evaluate_refuses_a_training_seed() -> None:
    res = runner.invoke(app, ["evaluate", "--seed", "11"])
    assert res.exit_code == 2 and "used to train" in res.output


def test_evaluation_on_held_out_data() -> None:
    res = evaluation(load_default(), seed=7, days=0.5)
    m, b = res["model_metrics"], res["baseline"]["metrics"]
    assert set(m["per_fault"]) <= set(FAULTS) and set(m["per_fault"]) == set(b["per_fault"])
    assert m["overall"]["f1"] > b["overall"]["f1"]
    assert res["model"]["model_sha256"] == sha256_hex(default_model_bytes())
    assert set(res["not_beaten_on"]) == {k for k, v in res["model_beats_baseline_f1"].items() if not v}
