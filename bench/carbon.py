"""Carbon accounting speed on PostgreSQL: a year of hourly data for 100 stacks, from scratch and one late hour.

    .venv/bin/python bench/carbon.py                      # 100 stacks x 8,760 h = 876,000 stack-hours
    .venv/bin/python bench/carbon.py --stacks 10 --json

The stacks' hour rollups (9 series each: flow, temperature, pressure, moisture, O2, CO2, SO2, NOx, dust;
7.9 million ``rollup_hour`` rows) are generated in the database, the stacks registered, and then, in the
same run and on the same rows:

* a plain SQL aggregate over those rollups (``count``, ``sum``): what reading them once costs;
* accounting from scratch (``sqlstore.account_sources``: one DELETE and one INSERT … SELECT for all stacks);
* one late hour: its rollup changed, then ``sqlstore.recompute`` for that hour (with its revision).

Targets (issue 13): from scratch ≤ 10 s, one late hour ≤ 50 ms. Works in a throwaway schema, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from carbonlink.cloud.carbon.cems import StackConfig
from carbonlink.cloud.carbon.sqlstore import account_sources, recompute, register_stack
from carbonlink.cloud.store import open_store
from carbonlink.cloud.store.model import FLAG_COLS
from carbonlink.cloud.store.postgres import drop_schema

T0_MS = 1_672_502_400_000  # 2023-01-01 00:00 +08:00
HOUR_MS = 3_600_000
POINTS = [("flow", "m³/h", 320000, 40000), ("temp", "°C", 58, 4), ("pressure", "Pa", 400, 200),
          ("moisture", "%", 9.5, 0.3), ("o2", "%", 7.0, 0.6), ("co2", "%", 12.3, 0.5), ("so2", "mg/m³", 25, 5),
          ("nox", "mg/m³", 120, 15), ("dust", "mg/m³", 3.5, 0.6)]


async def generate(db: Any, stacks: int, hours: int) -> None:
    for i in range(stacks):
        for point, unit, _, _ in POINTS:
            await db.execute("INSERT INTO series (gateway, device, point, unit, created_ms) VALUES (?, ?, ?, ?, 0)",
                             f"gw-{i:03d}", "cems-1", point, unit)
    cases = " ".join(f"WHEN '{p}' THEN {base} + {amp} * sin(h / 24.0 * 6.2832 + s.id)" for p, _, base, amp in POINTS)
    flags = ", ".join(["60"] + ["0"] * (len(FLAG_COLS) - 1))
    await db.execute(
        f"INSERT INTO rollup_hour (series, hour_ms, n, {', '.join(FLAG_COLS)}, vmin, vmax, vsum, valid_minutes,"
        " first_ms, last_ms)"
        f" SELECT s.id, {T0_MS} + h::bigint * {HOUR_MS}, 60, {flags}, v, v, v * 60, 60,"
        f" {T0_MS} + h::bigint * {HOUR_MS}, {T0_MS} + h::bigint * {HOUR_MS} + 3599000"
        f" FROM series s CROSS JOIN generate_series(0, {hours - 1}) h"
        f" CROSS JOIN LATERAL (SELECT CASE s.point {cases} END AS v) x")
    await db.execute("ANALYZE rollup_hour")


async def run(url: str, stacks: int, hours: int, repeats: int) -> dict[str, Any]:
    schema = "clbench_" + uuid.uuid4().hex[:10]
    store = open_store(f"{url}?schema={schema}")
    await store.open()
    db = store.db
    try:
        t = time.perf_counter()
        await generate(db, stacks, hours)
        gen_s = time.perf_counter() - t
        srcs = [await register_stack(db, tenant="bench", site=f"site-{i // 10}", config=StackConfig(
            f"stack-{i:03d}", p_atm_pa=Decimal(101325)), gateway=f"gw-{i:03d}", device="cems-1",
            pressure_kind="static") for i in range(stacks)]
        end = T0_MS + hours * HOUR_MS
        plain, scratch = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            await db.fetch("SELECT count(*) AS n, sum(vsum) AS s, sum(valid_minutes) AS m FROM rollup_hour"
                           " WHERE hour_ms >= ? AND hour_ms < ?", T0_MS, end)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            await account_sources(db, srcs, T0_MS, end)
            scratch.append(time.perf_counter() - t)
        n_hours = await db.fetchval("SELECT count(*) FROM carbon_hours")
        late = []
        for k in range(20):
            hour = T0_MS + (1000 + 97 * k) * HOUR_MS
            await db.execute("UPDATE rollup_hour SET vsum = vsum * 1.01 WHERE hour_ms = ? AND series IN"
                             " (SELECT series FROM carbon_points WHERE source_id = 'stack-000' AND role = 'co2')", hour)
            t = time.perf_counter()
            await recompute(db, [("gw-000", hour)], at_ms=hour + 10 * HOUR_MS)
            late.append(time.perf_counter() - t)
        revisions = await db.fetchval("SELECT count(*) FROM carbon_revisions")
        return {"stacks": stacks, "hours": hours, "stack_hours": int(n_hours), "rollup_rows": stacks * hours * 9,
                "generate_s": round(gen_s, 2), "plain_aggregate_s": round(min(plain), 3),
                "from_scratch_s": round(min(scratch), 3), "ratio_to_plain": round(min(scratch) / min(plain), 1),
                "late_hour_ms_median": round(statistics.median(late) * 1000, 1),
                "late_hour_ms_max": round(max(late) * 1000, 1), "revisions": int(revisions)}
    finally:
        await store.close()
        await drop_schema(url, schema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pg", default=os.environ.get("CARBONLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--stacks", type=int, default=100)
    ap.add_argument("--hours", type=int, default=8760)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = asyncio.run(run(a.pg, a.stacks, a.hours, a.repeats))
    if a.json:
        print(json.dumps(res))
        return
    print(f"{res['stack_hours']:,} stack-hours from {res['rollup_rows']:,} rollup rows (generated in "
          f"{res['generate_s']} s)")
    print(f"plain SQL aggregate over the rollups: {res['plain_aggregate_s']} s")
    print(f"accounting from scratch:              {res['from_scratch_s']} s  ({res['ratio_to_plain']}x the aggregate;"
          " target <= 10 s)")
    print(f"one late hour recomputed:             median {res['late_hour_ms_median']} ms, max "
          f"{res['late_hour_ms_max']} ms (target <= 50 ms); {res['revisions']} revisions kept")


if __name__ == "__main__":
    main()
