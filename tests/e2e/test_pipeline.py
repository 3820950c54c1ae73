"""End to end: Modbus TCP simulators → edge agent → real broker → ingest → store, nothing lost or doubled."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from carbonlink.commands.demo import run_demo
from tests.services import require_mosquitto_service


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
async def test_demo_pipeline_stores_everything_once(tmp_path: Path, broker: str, port: int) -> None:
    mqtt = require_mosquitto_service() if broker == "mosquitto" else None
    s = await run_demo(duration=5, data_dir=tmp_path, mqtt_url=mqtt, http_port=port, live=False,
                       past_day=False)  # the simulated past day: tests/commands/test_demo_accounts.py
    assert s.drained and s.unacked == 0
    assert s.produced > 0 and s.published == s.produced
    assert s.stored == s.published and s.rejected == 0 and s.duplicates == 0
    db = sqlite3.connect(tmp_path / "cloud.sqlite")
    rows = db.execute("SELECT s.device, s.point, r.value, r.quality FROM readings r"
                      " JOIN series s ON s.id = r.series").fetchall()
    assert len(rows) == s.stored
    devices = {r[0] for r in rows}
    # All three families: CEMS over Modbus TCP, the inverter over SunSpec, the forest over BTHome.
    assert {"cems-stack-1", "inverter-1", "tree-001"} <= devices
    assert {r[1] for r in rows if r[0] == "inverter-1"} >= {"ac_power", "energy", "state"}
    assert {r[1] for r in rows if r[0] == "tree-001"} >= {"soil_moisture", "dendrometer", "battery"}
    so2 = [r[2] for r in rows if r[1] == "so2"]
    assert so2 and all(0 < v < 100 for v in so2) and len(set(so2)) > 1  # plausible and changing
    # A second run continues the gateway's sequence: nothing collides with the first run's batches.
    s2 = await run_demo(duration=2, data_dir=tmp_path, mqtt_url=mqtt, http_port=port, live=False, past_day=False)
    assert s2.stored == s2.published > 0 and s2.duplicates == 0
    seqs = [r[0] for r in db.execute("SELECT seq FROM batches ORDER BY seq")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_cli_demo_json_summary(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "carbonlink"
    proc = subprocess.run([str(exe), "demo", "--duration", "6", "--json", "--data-dir", str(tmp_path),
                           "--http-port", "0", "--no-past-day"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stored"] == summary["published"] > 0
    assert summary["rejected"] == 0 and summary["produced"] == summary["published"]
    # Port 0 means "any free one": the summary names the port the dashboard really had, not 0.
    assert re.fullmatch(r"http://127\.0\.0\.1:[1-9][0-9]*/", summary["dashboard"]), summary["dashboard"]
