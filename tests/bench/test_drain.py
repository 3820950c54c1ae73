"""bench/drain.py end to end on a small backlog: every reading stored, on SQLite and on PostgreSQL, with the
figures the README quotes (rate, the edge's ceiling through the pipelined cutter, live latency, CPU) present."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.services import ROOT, require, require_postgres


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgresql", marks=pytest.mark.service("postgres"))])
def test_a_small_drain_stores_every_reading(store: str) -> None:
    require(shutil.which("mosquitto") is not None, "mosquitto", "apt-get install -y mosquitto")
    extra = ["--store", require_postgres()] if store == "postgresql" else []
    proc = subprocess.run([sys.executable, "bench/drain.py", "--readings", "40000", "--baseline", "1.0", "--json",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    r = json.loads(proc.stdout)
    assert r["store"] == store and r["stored"] == r["readings"] == 40_000
    assert r["readings_per_s"] > 0 and r["edge_ceiling_per_s"] > 0
    assert r["live_before"]["n"] > 0 and r["live_during"]["n"] > 0  # live readings arrived before and during
    assert r["live_during"]["p99_ms"] >= r["live_during"]["p50_ms"]
    assert r["edge_cpu_us_per_reading"] > 0 and r["ingest_cpu_us_per_reading"] > 0
