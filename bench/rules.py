"""Rules engine throughput and memory, in one process as the edge agent runs it.

    .venv/bin/python bench/rules.py            # figures as a table
    .venv/bin/python bench/rules.py --json

(a) one filter rule, (b) a 1-minute tumbling average over 1,000 points, (c) 100 rules at once;
readings per second of process CPU time (one core: the engine is single-threaded), and the memory
the 100 rules add (compiled rules plus their state after the run, by tracemalloc). Goals from
issue 15: >= 40,000 readings/s for (a) and (b), <= 20 MB for (c). No asserts: figures only.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carbonlink.kernel.wire import Reading
from carbonlink.rules import Engine, RuleDoc, RuleSetDoc, compile_ruleset

T0 = 1_700_000_000_000


def readings(n_points: int, seconds: int, seed: int = 1) -> list[Reading]:
    """n_points points at 1 Hz over 20 devices (CEMS-like units), in event-time order."""
    rng = random.Random(seed)
    per_dev = max(1, n_points // 20)
    out = []
    for s in range(seconds):
        for i in range(n_points):
            dev, p = divmod(i, per_dev)
            point = "so2" if p == 0 else ("o2" if p == 1 else f"p{p}")
            unit = "%" if point == "o2" else "mg/m³"
            out.append(Reading(f"dev-{dev}", point, T0 + s * 1000, round(rng.uniform(0, 400), 3), unit))
    return out


def run(rules: list[RuleDoc], data: list[Reading], batch: int = 500) -> dict[str, Any]:
    compiled = compile_ruleset(RuleSetDoc(rules=rules))
    engine = Engine(compiled, source="gw-1")
    outputs = 0
    gc.collect()
    t_cpu, t_wall = time.process_time(), time.perf_counter()
    for i in range(0, len(data), batch):
        outputs += len(engine.feed(data[i:i + batch]))
    outputs += len(engine.flush())
    cpu, wall = time.process_time() - t_cpu, time.perf_counter() - t_wall
    return {"readings": len(data), "outputs": outputs, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "readings_per_cpu_s": round(len(data) / cpu)}


def hundred_rules() -> list[RuleDoc]:
    kinds = [
        "SELECT value FROM 'dev-{d}/p{p}' WHERE value > 390 mg/m3",
        "SELECT avg(value) AS m FROM 'dev-{d}/+' GROUP BY TUMBLING(1m) RAISE WHEN m > 390 mg/m3",
        "SELECT max(value) AS mx FROM '+/p{p}' GROUP BY device, HOPPING(5m, 1m)",
        "SELECT value FROM 'dev-{d}/so2' RAISE WHEN value > 395 FOR 10s CLEAR WHEN value < 300",
        "SELECT convert(so2, 'mg/m3') * (21 % - 6 %) / (21 % - o2) AS c FROM 'dev-{d}/so2' WHERE o2 < 20 %",
    ]
    return [RuleDoc(id=f"r{i}", text=kinds[i % len(kinds)].format(d=i % 20, p=2 + i % 40)) for i in range(100)]


def memory_of_rules(rules: list[RuleDoc], data: list[Reading]) -> dict[str, Any]:
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    compiled = compile_ruleset(RuleSetDoc(rules=rules))
    engine = Engine(compiled, source="gw-1")
    after_compile = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(data), 500):
        engine.feed(data[i:i + 500])
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"compiled_mb": round((after_compile - base) / 1e6, 2), "with_state_mb": round((current - base) / 1e6, 2),
            "peak_mb": round((peak - base) / 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=120, help="seconds of 1 Hz data for 1,000 points")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = readings(1000, args.seconds)
    res = {
        "a_one_filter_rule": run([RuleDoc(id="f", text="SELECT value FROM '+/+' WHERE value > 390 mg/m3")], data),
        "b_tumbling_avg_1000_points": run([RuleDoc(id="avg", text="SELECT avg(value) AS m FROM '+/+' "
                                                   "GROUP BY TUMBLING(1m)")], data),
        "c_100_rules": run(hundred_rules(), data),
    }
    # the data itself is not the rules' memory: measure on a shorter run, state included
    res["c_memory"] = memory_of_rules(hundred_rules(), readings(1000, 60, seed=2))
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{'case':32} {'readings':>9} {'outputs':>8} {'cpu s':>7} {'readings/cpu-s':>15}")
    for k, v in res.items():
        if "readings" in v:
            print(f"{k:32} {v['readings']:>9,} {v['outputs']:>8,} {v['cpu_s']:>7} {v['readings_per_cpu_s']:>15,}")
    m = res["c_memory"]
    print(f"memory added by 100 rules: {m['compiled_mb']} MB compiled, {m['with_state_mb']} MB with a minute of"
          f" state for 1,000 points (peak {m['peak_mb']} MB)")
    print("goals: >= 40,000 readings/cpu-s for a and b; <= 20 MB for c")


if __name__ == "__main__":
    main()
