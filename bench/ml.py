"""The anomaly model at the edge: CPU time per 1,000 readings, latency per 60-point window, memory added.

    .venv/bin/python bench/ml.py            # the packaged model
    .venv/bin/python bench/ml.py --model anomaly.onnx --json

Readings are a simulated CEMS stack's nine points, one poll a minute, fed through the gateway's own code
path (``WindowStream.score``: window features + one onnxruntime call per poll). Memory is the process's
resident set (VmRSS) step by step: importing numpy, importing onnxruntime (these two are the floor any
model pays), loading the model (onnxruntime's first session, ~10 MB, plus the model's trees), and scoring;
the total leaves out the kernel's Python code (an agent has it loaded anyway) and the bench's own readings.
Each step is also split into anonymous memory (the process's own heap: what a model really costs a
gateway) and pages of mapped files (numpy's and onnxruntime's libraries: clean, given back first under
memory pressure), with USS (private to this process) and PSS (shared pages divided among their users).
A second session of the same model shows what the trees cost (the rest of the first session is
onnxruntime's once per process); ``steady_state_mb`` counts the pages the scoring loop actually touched
(kernel's Referenced bits, cleared before it), against what is resident.
Goals (issue 16): < 1 ms per 60-point window, < 30 MB added.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_mb() -> float:
    return memory_now()["rss"]


def memory_now() -> dict[str, float]:
    """Resident memory now (MB): all, anonymous, mapped files; USS and PSS from smaps_rollup (Linux ≥ 4.14)."""
    want = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "Pss": "pss", "Private_Clean": "uss",
            "Private_Dirty": "uss"}
    out = dict.fromkeys(want.values(), 0.0)
    lines = Path("/proc/self/status").read_text().splitlines()
    try:
        lines += Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        out["pss"] = out["uss"] = float("nan")
    for line in lines:
        key, _, rest = line.partition(":")
        if key in want:
            out[want[key]] += int(rest.split()[0]) / 1024
    return out


def referenced(lib: str) -> dict[str, float] | None:
    """Resident and recently referenced MB: all mappings, and those of files whose path holds ``lib``."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    out = {"rss": 0.0, "referenced": 0.0, "lib_rss": 0.0, "lib_referenced": 0.0}
    in_lib = False
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            in_lib = len(head) == 6 and lib in head[5]
            continue
        key, _, rest = line.partition(":")
        if key in ("Rss", "Referenced"):
            mb = int(rest.split()[0]) / 1024
            out[key.lower()] += mb
            if in_lib:
                out["lib_" + key.lower()] += mb
    return {k: round(v, 1) for k, v in out.items()}


def clear_referenced() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("1")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="an ONNX model file (default: the packaged one)")
    ap.add_argument("--readings", type=int, default=20_000, help="readings fed after warm-up")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    m0 = memory_now()  # the interpreter and this script only: every figure below is added to it
    rss0 = m0["rss"]
    import numpy as np

    m_numpy = memory_now()
    rss_numpy = m_numpy["rss"]
    import onnxruntime  # noqa: F401

    m_import = memory_now()
    rss_import = m_import["rss"]
    from carbonlink.anomaly.model import default_model_bytes, load, load_default
    from carbonlink.anomaly.stream import WindowStream

    m_code = memory_now()  # the kernel and the anomaly runtime's Python code: an agent has most of it loaded anyway
    rss_code = m_code["rss"]
    model = load(args.model.read_bytes()) if args.model else load_default()
    m_model = memory_now()
    rss_model = m_model["rss"]

    from carbonlink.kernel.wire import Reading
    from carbonlink.simulators.cems import CemsStack

    stack = CemsStack(seed=1, clock=lambda: 0.0)
    points = ("so2", "nox", "no", "no2", "o2", "co2", "dust", "flow", "temp")
    t0 = 1_767_225_600
    n_polls = 120 + args.readings // len(points) + 1
    polls = []
    for m in range(n_polls):
        v = stack.true_values(t0 + m * 60)
        polls.append([Reading("stack-1", p, (t0 + m * 60) * 1000, float(v[p]), "") for p in points])
    rss_data = rss_mb()  # the bench's own readings: not part of the model's cost

    m_data = memory_now()
    stream = WindowStream()
    for p in polls[:120]:
        stream.score(p, model)  # buffers full from here on
    fed = polls[120:]
    cleared = clear_referenced()
    n = sum(len(p) for p in fed)
    c0, w0 = time.process_time(), time.perf_counter()
    for p in fed:
        stream.score(p, model)
    cpu_per_1000 = (time.process_time() - c0) / n * 1000 * 1000  # ms
    steady = referenced("onnxruntime") if cleared else None
    wall_per_1000 = (time.perf_counter() - w0) / n * 1000 * 1000

    # features alone, so the model's share shows
    st2 = WindowStream()
    for p in polls[:120]:
        st2.features(p)
    c0 = time.process_time()
    rows = []
    for p in fed:
        rows.append(st2.features(p)[1])
    feat_per_1000 = (time.process_time() - c0) / n * 1000 * 1000

    # one window, one call: the latency a lone reading sees (features of one 60-point window + inference)
    one_row = rows[-1][:1]
    lat_model, lat_total = [], []
    single = WindowStream()
    for p in polls[:120]:
        single.features(p[:1])
    for p in fed[:2000]:
        a = time.perf_counter()
        model.score(one_row)
        b = time.perf_counter()
        single.score(p[:1], model)
        c = time.perf_counter()
        lat_model.append((b - a) * 1000)
        lat_total.append((c - b) * 1000)
    m_run = memory_now()
    rss_run = m_run["rss"]
    again = load(args.model.read_bytes()) if args.model else load(default_model_bytes())
    m_again = memory_now()  # a second session of the same model: what its trees cost (the rest is once per process)
    del again

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]

    out = {
        "model": model.info.provenance(),
        "readings": n,
        "cpu_ms_per_1000_readings": round(cpu_per_1000, 2),
        "wall_ms_per_1000_readings": round(wall_per_1000, 2),
        "features_cpu_ms_per_1000_readings": round(feat_per_1000, 2),
        "window_latency_ms": {"inference_median": round(statistics.median(lat_model), 4),
                              "inference_p99": round(pct(lat_model, 0.99), 4),
                              "features_plus_inference_median": round(statistics.median(lat_total), 4),
                              "features_plus_inference_p99": round(pct(lat_total, 0.99), 4)},
        "rss_mb": {"before": round(rss0, 1), "after_import_numpy": round(rss_numpy, 1),
                   "after_import_onnxruntime": round(rss_import, 1), "after_import_carbonlink": round(rss_code, 1),
                   "after_model_load": round(rss_model, 1),
                   "after_bench_data": round(rss_data, 1), "after_scoring": round(rss_run, 1)},
        "memory_added_mb": {"numpy": round(rss_numpy - rss0, 1), "onnxruntime": round(rss_import - rss_numpy, 1),
                            "runtime_imports": round(rss_import - rss0, 1),
                            "carbonlink_code": round(rss_code - rss_import, 1),
                            "model": round(rss_model - rss_code, 1), "scoring": round(rss_run - rss_data, 1),
                            "total": round(rss_run - rss_data + rss_model - rss_code + rss_import - rss0, 1)},
        "memory_kinds_added_mb": {
            step: {k: round(b[k] - a[k], 1) for k in ("rss", "anon", "file", "uss", "pss")}
            for step, a, b in (("numpy", m0, m_numpy), ("onnxruntime", m_numpy, m_import),
                               ("model", m_code, m_model), ("second_session", m_run, m_again),
                               ("scoring", m_data, m_run))},
        "steady_state_mb": steady,
        "goals": {"window_latency_ms": 1.0, "memory_added_mb": 30.0},
    }
    kinds = out["memory_kinds_added_mb"]
    out["memory_kinds_added_mb"]["total"] = {  # type: ignore[index]
        k: round(sum(kinds[s][k] for s in ("numpy", "onnxruntime", "model", "scoring")), 1)  # type: ignore[index]
        for k in ("rss", "anon", "file", "uss", "pss")}
    out["goal_ratios"] = {"latency_median_vs_1ms": round(out["window_latency_ms"]["features_plus_inference_median"], 3),
                          "memory_total_vs_30mb": round(out["memory_added_mb"]["total"] / 30.0, 3)}
    del np
    if args.json:
        print(json.dumps(out, indent=2))
        return
    lat = out["window_latency_ms"]
    mem = out["memory_added_mb"]
    print(f"model {model.info.model_id} v{model.info.version} ({model.info.sha256[:12]}), {n} readings after warm-up")
    print(f"CPU per 1,000 readings: {cpu_per_1000:.1f} ms (features alone {feat_per_1000:.1f} ms), "
          f"wall {wall_per_1000:.1f} ms")
    print(f"one 60-point window: inference {lat['inference_median']:.3f} ms median, {lat['inference_p99']:.3f} ms p99;"
          f" features + inference {lat['features_plus_inference_median']:.3f} ms median, "
          f"{lat['features_plus_inference_p99']:.3f} ms p99 (goal < 1 ms)")
    print(f"memory added: numpy {mem['numpy']} MB + onnxruntime {mem['onnxruntime']} MB (the runtime's floor), "
          f"model session {mem['model']} MB, scoring {mem['scoring']} MB; total {mem['total']} MB (goal < 30 MB)")
    kinds = out["memory_kinds_added_mb"]
    for step, k in kinds.items():  # type: ignore[attr-defined]
        print(f"  {step:14} RSS {k['rss']:5.1f} = anonymous {k['anon']:5.1f} + files {k['file']:5.1f};"
              f" USS {k['uss']:5.1f}, PSS {k['pss']:5.1f}")
    if steady:
        print(f"touched while scoring: {steady['referenced']} MB of {steady['rss']} MB resident; of onnxruntime's "
              f"library {steady['lib_referenced']} MB of {steady['lib_rss']} MB (the rest was touched at load only)")


if __name__ == "__main__":
    main()
