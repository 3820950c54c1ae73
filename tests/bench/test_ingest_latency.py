"""bench/ingest.py --latency-only: the steady phase alone, its latency percentiles and each worker's memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.services import ROOT, require, require_postgres


@pytest.mark.service("postgres")
def test_latency_mode_reports_percentiles_and_memory_and_loses_nothing() -> None:
    db = require_postgres()
    require(shutil.which("mosquitto") is not None, "mosquitto", "apt-get install -y mosquitto")
    proc = subprocess.run([sys.executable, "bench/ingest.py", "--latency-only", "--steady-rate", "2000",
                           "--steady-seconds", "2", "--steady-batch", "50", "--gateways", "5", "--workers", "1",
                           "--skip-nodered", "--db", db, "--json"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    r = json.loads(proc.stdout)
    assert r["latency_only"] and r["steady_complete"] and r["lost"] == 0 and r["published"] == 4000
    assert r["latency_p50_ms"] <= r["latency_p95_ms"] <= r["latency_p99_ms"] <= r["latency_max_ms"]
    assert len(r["worker_rss_steady_mb"]) == 1 and r["worker_rss_steady_mb"][0] > 0
    assert r["ack_statuses"] == {"committed": 80}
    disk = r["disk_fsync"]  # the disk's own flush latency, probed every 10 ms during the 2 s phase
    assert disk["n"] >= 20 and 0 < disk["p50_ms"] <= disk["p99_ms"] <= disk["max_ms"]
