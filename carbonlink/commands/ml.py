"""`carbonlink ml …`: train the anomaly model on simulated faults, evaluate it, check and ship model files.

* ``train``: simulated data with faults at known times → a random forest → ONNX, checked against the
  sklearn model; ``--install`` makes it the packaged default model.
* ``evaluate --seed N``: a fresh held-out data set; precision, recall and F1 per fault type, false alarms
  per device-day, for the model and for the z-score + rate-of-change baseline.
* ``inspect``: verify a model file as a gateway would, and print what it says about itself.
* ``shadow-doc``: the ``desired.model`` document that sends a model to gateways through the shadow.
* ``backtest``: score stored history with a model (the cloud's store), nothing written.
See docs/model-card.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from carbonlink.commands.common import DEFAULT_DB, DbOpt, JsonOpt, fail

app = typer.Typer(help="The anomaly model: train on simulated faults, evaluate, inspect, ship, back-test.",
                  no_args_is_help=True)

TRAIN_SEED = 11  # the training data; validation uses TRAIN_SEED + 1
DEFAULT_EVAL_SEED = 99
ModelOpt = Annotated[Path | None, typer.Option("--model", help="an ONNX model file (default: the packaged model)")]


def _packaged_path() -> Path:
    return Path(__file__).resolve().parent.parent / "anomaly" / "models" / "default.onnx"


def _load_model(path: Path | None) -> Any:
    from carbonlink.anomaly.model import ModelError, load, load_default

    try:
        if path is None:
            return load_default()
        return load(path.read_bytes())
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    except ModelError as exc:
        raise fail(f"{path or 'the packaged model'} is not usable ({exc.code}): {exc}") from None


@app.command()
def train(out: Annotated[Path, typer.Option("--out", help="where to write the ONNX file")] = Path("anomaly.onnx"),
          seed: Annotated[int, typer.Option(help="seed of the training data (validation: seed + 1)")] = TRAIN_SEED,
          days: Annotated[float, typer.Option(min=0.5, max=30, help="simulated days of training data")] = 3.0,
          algorithm: Annotated[str, typer.Option(help="binary-forest (default), forest (one class per fault) "
                                                 "or iforest (unsupervised)")] = "binary-forest",
          model_id: Annotated[str, typer.Option("--model-id")] = "cl-anomaly",
          version: Annotated[int, typer.Option(min=0)] = 2,
          install: Annotated[bool, typer.Option("--install", help="also make it the packaged default model")] = False,
          as_json: JsonOpt = False) -> None:
    """Train on simulated faults, export to ONNX and check the export against the trained model."""
    from carbonlink.anomaly.model import sha256_hex
    from carbonlink.commands.mltrain import train as T
    from carbonlink.commands.mltrain.data import Plan

    if algorithm not in T.ALGORITHMS:
        raise fail(f"--algorithm must be one of {', '.join(T.ALGORITHMS)}")
    t0 = time.perf_counter()
    tr = T.dataset(Plan(seed=seed, days=days, stacks=4, inverters=4, trees=6, faults_per_day=4))
    va = T.dataset(Plan(seed=seed + 1, days=min(1.0, days), stacks=3, inverters=3, trees=6, faults_per_day=4))
    t_data = time.perf_counter() - t0
    model = T.fit(tr, algorithm, seed)
    threshold = T.choose_threshold(T.sk_scores(model, va.x), va)
    z, roc = T.tune_baseline(tr)
    extra = {"algorithm": algorithm, "train_seeds": f"{seed},{seed + 1}", "baseline_z": repr(z),
             "baseline_roc": repr(roc), "onnx_tolerance": repr(T.ONNX_TOLERANCE)}
    data = T.to_onnx(model, model_id=model_id, version=version, threshold=threshold, extra=extra)
    diff = T.onnx_vs_sklearn(model, data, va.x)
    if diff > T.ONNX_TOLERANCE:
        raise fail(f"ONNX scores differ from the trained model's by {diff:.2e} (> {T.ONNX_TOLERANCE}); not written")
    out.write_bytes(data)
    if install:
        _packaged_path().write_bytes(data)
    digest = sha256_hex(data)
    total_s = round(time.perf_counter() - t0, 1)
    summary: dict[str, Any] = {"model": str(out), "installed": install, "model_id": model_id, "version": version,
               "algorithm": algorithm, "sha256": digest, "bytes": len(data),
               "threshold": round(threshold, 6), "train_rows": len(tr.x), "validation_rows": len(va.x),
               "onnx_max_abs_diff": diff, "onnx_tolerance": T.ONNX_TOLERANCE, "baseline": {"z": z, "roc": roc},
               "seconds": {"data": round(t_data, 1), "total": total_s}}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    typer.echo(f"wrote {out} ({len(data)} bytes, sha256 {digest[:16]}…), {algorithm}, "
               f"threshold {threshold:.4f}")
    typer.echo(f"ONNX vs sklearn: max |Δscore| {diff:.2e} on {len(va.x)} validation windows "
               f"(tolerance {T.ONNX_TOLERANCE}); {total_s} s in all")


def evaluation(model: Any, seed: int, days: float) -> dict[str, Any]:
    """The held-out evaluation, as a dict (also used by tests and the model card)."""
    from carbonlink.commands.mltrain import train as T
    from carbonlink.commands.mltrain.data import Plan

    used = model.info.extra.get("train_seeds", "")
    if str(seed) in used.split(","):
        raise fail(f"seed {seed} was used to train this model ({used}); pick another for a held-out set")
    # other seed, other plant sizes and plot, another season: parameters the training never saw
    ds = T.dataset(Plan(seed=seed, days=days, stacks=3, inverters=3, trees=7, faults_per_day=4))
    flags = model.score(ds.x) >= model.info.threshold
    z = float(model.info.extra.get("baseline_z", "4"))
    roc = float(model.info.extra.get("baseline_roc", "8"))
    m = T.metrics(ds, flags)
    b = T.metrics(ds, T.baseline_flags(ds, z, roc))
    beats = {k: v["f1"] > b["per_fault"][k]["f1"] for k, v in m["per_fault"].items()}
    return {"seed": seed, "days": days, "windows": len(ds.x), "devices": ds.devices,
            "model": model.info.provenance() | {"threshold": model.info.threshold},
            "model_metrics": m, "baseline": {"z": z, "roc": roc, "metrics": b},
            "model_beats_baseline_f1": beats,
            "not_beaten_on": sorted(k for k, v in beats.items() if not v)}


@app.command()
def evaluate(seed: Annotated[int, typer.Option(help="seed of the held-out data")] = DEFAULT_EVAL_SEED,
             days: Annotated[float, typer.Option(min=0.5, max=30)] = 2.0,
             model: ModelOpt = None, as_json: JsonOpt = False) -> None:
    """Precision, recall and F1 per fault type on fresh data, against the z-score + rate-of-change baseline."""
    m = _load_model(model)
    res = evaluation(m, seed, days)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    mm, bm = res["model_metrics"], res["baseline"]["metrics"]
    typer.echo(f"held-out seed {seed}: {res['windows']} windows, {res['devices']} devices, {days} days")
    typer.echo(f"{'fault':14} {'model P/R/F1':>20} {'baseline P/R/F1':>20}")
    for k, v in mm["per_fault"].items():
        b = bm["per_fault"][k]
        typer.echo(f"{k:14} {v['precision']:6.2f}/{v['recall']:.2f}/{v['f1']:.2f}      "
                   f"{b['precision']:6.2f}/{b['recall']:.2f}/{b['f1']:.2f}")
    typer.echo(f"overall F1 {mm['overall']['f1']:.3f} (baseline {bm['overall']['f1']:.3f}); false alarms per "
               f"device-day {mm['false_alarms_per_device_day']} (baseline {bm['false_alarms_per_device_day']})")
    if res["not_beaten_on"]:
        typer.echo(f"the model does not beat the baseline on: {', '.join(res['not_beaten_on'])}")


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help="an ONNX model file")], as_json: JsonOpt = False) -> None:
    """Verify a model file as a gateway would and print its identity and contract."""
    m = _load_model(path)
    info = {**m.info.provenance(), "threshold": m.info.threshold, "score": m.info.score,
            "classes": list(m.info.classes), "bytes": path.stat().st_size, **m.info.extra}
    print(json.dumps(info, indent=2) if as_json else "\n".join(f"{k}: {v}" for k, v in info.items()))


@app.command("shadow-doc")
def shadow_doc(path: Annotated[Path, typer.Argument(help="an ONNX model file")]) -> None:
    """Print the shadow's ``desired.model`` document for a model (hash, version and the file itself)."""
    m = _load_model(path)
    data = path.read_bytes()
    doc = {"model": {"id": m.info.model_id, "version": m.info.version, "sha256": m.info.sha256,
                     "onnx_b64": base64.b64encode(data).decode()}}
    print(json.dumps(doc))


@app.command()
def backtest(devices: Annotated[list[str], typer.Argument(help="device id(s); give all trees of a plot together")],
             db: DbOpt = DEFAULT_DB, model: ModelOpt = None,
             start: Annotated[str | None, typer.Option(help="from, YYYY-MM-DDTHH:MM:SS.mmmZ")] = None,
             end: Annotated[str | None, typer.Option(help="until (excluded)")] = None,
             as_json: JsonOpt = False) -> None:
    """Score stored history with a model: which readings it would have flagged. Writes nothing."""
    from carbonlink.commands.common import open_store
    from carbonlink.kernel.wire import WireError, parse_ts

    try:
        start_ms = parse_ts(start) if start else None
        end_ms = parse_ts(end) if end else None
    except WireError as exc:
        raise fail(str(exc)) from None
    m = _load_model(model)

    async def go() -> dict[str, Any]:
        from carbonlink.cloud.anomaly_backtest import backtest as run

        store = await open_store(db, create=False)
        try:
            return (await run(store, m, devices, start_ms=start_ms, end_ms=end_ms)).to_dict()
        except ValueError as exc:
            raise fail(str(exc)) from None
        finally:
            await store.close()

    rep = asyncio.run(go())
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    typer.echo(f"{rep['readings']} readings, {rep['judged']} judged, {rep['flagged']} flagged, "
               f"{len(rep['episodes'])} episode(s); model {m.info.model_id} v{m.info.version}")
    for e in rep["episodes"][:50]:
        typer.echo(f"  {e['device']}/{e['point']} {e['from']} → {e['to'] or 'end'} ({e['readings']} readings, "
                   f"peak {e['peak_score']})")
