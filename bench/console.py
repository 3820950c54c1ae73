"""Console speed: first meaningful paint on the demo, and the dashboard API over a year of 100 sites.

    .venv/bin/python bench/console.py                 # both
    .venv/bin/python bench/console.py --skip-paint    # only the API (needs PostgreSQL; also --api-only)
    .venv/bin/python bench/console.py --json

1. **First meaningful paint**: ``carbonlink demo`` runs in a temporary folder; headless Chromium
   (``/usr/bin/chromium``) opens the console's sign-in link N times in fresh contexts. Measured in the
   page: the first contentful paint (the browser's ``paint`` entry) and the moment the console has
   drawn the fleet tree with live values (``performance.mark('console-ready')``), both from navigation
   start. Goal (issue 14): ≤ 1 s.
2. **Dashboard API on PostgreSQL**: 100 sites with one stack each, a year of stack-hours (876,000
   ``carbon_hours`` rows) generated in a throwaway schema; ``GET /api/carbon/dashboard?granularity=day``
   (365 × 100 figures with coverage, and the organisation's totals) through the real app in process,
   N times (``Accept-Encoding: identity``). Goal: ≤ 300 ms. Beside it, as a browser asks: gzipped
   (``gzip_ms_median``, ``gzip_mb``) and a repeat poll that gets 304 for its ETag
   (``not_modified_ms_median``). For scale, the same run times the plain SQL sum of those rows and, as
   the way it was done before, the same items built in Python from per site-day rows (``python_built``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.carbon.sqlstore import periods, refresh_days
from carbonlink.cloud.store import open_store
from carbonlink.cloud.store.postgres import drop_schema

PG = os.environ.get("CARBONLINK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
YEAR = 2025
T0_MS = 1_735_660_800_000  # 2025-01-01 00:00 +08:00
HOURS = 8760


def paint(runs: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    data = Path(tempfile.mkdtemp(prefix="bench-console-"))
    port = 18000 + os.getpid() % 1000
    exe = Path(sys.executable).with_name("carbonlink")
    proc = subprocess.Popen([str(exe), "demo", "--data-dir", str(data), "--http-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stderr is not None
        link = ""
        while not link.startswith("http"):
            link = proc.stderr.readline().strip()
            if proc.poll() is not None:
                raise SystemExit("the demo stopped before printing its link")
        time.sleep(3)  # first readings in
        fcp, ready = [], []
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            for _ in range(runs + 1):  # the first load warms the server's caches and is not counted
                ctx = browser.new_context(viewport={"width": 1400, "height": 900})
                page = ctx.new_page()
                page.goto(link)
                page.wait_for_function("() => performance.getEntriesByName('console-ready').length > 0", timeout=30_000)
                m = page.evaluate("() => ({fcp: (performance.getEntriesByName('first-contentful-paint')[0]"
                                  " || {}).startTime,"
                                  " ready: performance.getEntriesByName('console-ready')[0].startTime})")
                fcp.append(m["fcp"])
                ready.append(m["ready"])
                ctx.close()
            browser.close()
        fcp, ready = fcp[1:], ready[1:]
        return {"runs": runs, "fcp_ms_median": round(statistics.median(fcp)),
                "ready_ms_median": round(statistics.median(ready)), "ready_ms_max": round(max(ready)), "goal_ms": 1000}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(data, ignore_errors=True)


async def dashboard_api(sites: int, runs: int) -> dict[str, Any]:
    schema = "clbench_" + uuid.uuid4().hex[:10]
    store = open_store(f"{PG}?schema={schema}")
    await store.open()
    try:
        db = store.db
        await db.execute("INSERT INTO tenants (id, name, created_ms) VALUES ('bench', 'bench', 0)")
        for i in range(sites):
            await db.execute("INSERT INTO sites (id, tenant, name, created_ms) VALUES (?, 'bench', ?, 0)",
                             f"site-{i:03d}", f"site-{i:03d}")
            await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                             " created_ms) VALUES (?, ?, 'bench', ?, 'cems', 101325, '{}', 0)",
                             f"stack-{i:03d}", i + 1, f"site-{i:03d}")
        t = time.perf_counter()
        # A year of stack-hours: mostly valid, some substituted and missing, grams that vary by hour.
        await db.execute(
            "INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, qsn_m3, co2_g, so2_g, nox_g,"
            " dust_g, note, formula_version)"
            f" SELECT s, {T0_MS}::bigint + h::bigint * 3600000, CASE WHEN (s + h) % 97 = 0 THEN 'missing'"
            " WHEN (s + h) % 41 = 0 THEN 'substituted' ELSE 'valid' END, 5, 3600, 300000,"
            " 80000000 + ((s * 7919 + h * 104729) % 20000000), 12000 + (h % 500), 15000 + (s % 700), 1500, '', 'bench'"
            f" FROM generate_series(1, {sites}) AS s, generate_series(0, {HOURS - 1}) AS h")
        # the kept local days follow the hours, as the accounting keeps them (sqlstore.refresh_days)
        await refresh_days(db, list(range(1, sites + 1)), T0_MS, T0_MS + HOURS * 3_600_000)
        for table in ("carbon_sources", "carbon_hours", "carbon_days"):  # as autovacuum would have by then
            await db.execute(f"ANALYZE {table}")
        load_s = time.perf_counter() - t
        _, key = await create_api_key(store, "bench", "analyst", "bench")
        app = create_app(store)
        transport = httpx.ASGITransport(app=app)
        times, gz, repeat, raw, py = [], [], [], [], []
        q = {"year": YEAR, "granularity": "day"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench",
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for i in range(runs + 1):
                t = time.perf_counter()
                r = await client.get("/api/carbon/dashboard", params=q, headers={"Accept-Encoding": "identity"})
                dt = time.perf_counter() - t
                r.raise_for_status()
                body = r.json()
                if i:
                    times.append(dt)
                # as a browser asks: gzip (compressed by the app, decompressed by httpx), then a repeat poll
                t = time.perf_counter()
                z = await client.get("/api/carbon/dashboard", params=q, headers={"Accept-Encoding": "gzip"})
                dz = time.perf_counter() - t
                assert z.headers["content-encoding"] == "gzip" and z.content == r.content
                t = time.perf_counter()
                n = await client.get("/api/carbon/dashboard", params=q,
                                     headers={"Accept-Encoding": "gzip", "If-None-Match": z.headers["etag"]})
                dn = time.perf_counter() - t
                assert n.status_code == 304, n.status_code
                if i:
                    gz.append(dz)
                    repeat.append(dn)
                t = time.perf_counter()
                await db.fetchval("SELECT sum(co2_g) FROM carbon_hours")
                raw.append(time.perf_counter() - t)
                t = time.perf_counter()
                await python_built(db)
                py.append(time.perf_counter() - t)
        assert len(body["items"]) == sites * 365 and len(body["totals"]) == 365, len(body["items"])
        med = statistics.median(times)
        return {"sites": sites, "stack_hours": sites * HOURS, "figures": len(body["items"]), "load_s": round(load_s, 1),
                "api_ms_median": round(med * 1000), "api_ms_max": round(max(times) * 1000),
                "body_mb": round(len(r.content) / 1e6, 1),
                "gzip_ms_median": round(statistics.median(gz) * 1000),
                "gzip_mb": round(int(z.headers["content-length"]) / 1e6, 2),
                "not_modified_ms_median": round(statistics.median(repeat) * 1000),
                "python_built_ms_median": round(statistics.median(py) * 1000),
                "plain_sum_ms_median": round(statistics.median(raw) * 1000),
                "ratio_to_plain_sum": round(med / statistics.median(raw), 2), "goal_ms": 300}
    finally:
        await store.close()
        await drop_schema(PG, schema)


async def python_built(db: Any) -> bytes:
    """For comparison, the same items built the way the endpoint did before the database wrote its JSON:
    per site-day rows into Python (the accounts' ``sqlstore.periods``), dicts, ``json.dumps``."""
    start = T0_MS
    rows = await periods(db, "bench", "day", start, start + 365 * 86_400_000)
    return json.dumps({"items": rows}, separators=(",", ":")).encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--skip-paint", "--api-only", action="store_true")
    ap.add_argument("--skip-api", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict[str, Any] = {"load_average": [round(x, 1) for x in os.getloadavg()]}
    if not a.skip_paint:
        out["first_paint"] = paint(a.runs)
    if not a.skip_api:
        out["dashboard_api"] = asyncio.run(dashboard_api(a.sites, a.runs))
    if a.json:
        print(json.dumps(out))
        return
    for k, v in out.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
