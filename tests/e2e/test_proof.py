"""From a simulated reading to an on-chain root to a verified bundle, after the demo has stopped."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from carbonlink.cloud.anchor.proof import bundle_for, verify_bundle
from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.store import open_store
from carbonlink.commands.demo import TENANT_ID, run_demo


async def test_demo_readings_are_provable_after_restart(tmp_path: Path, port: int) -> None:
    # Without the simulated past day: its 1,440 windows are anchored first, and a 9 s run on a slow
    # machine then anchored none of its own (seen once in CI).
    s = await run_demo(duration=9, data_dir=tmp_path, mqtt_url=None, http_port=port, live=False, anchor_window_s=3,
                       past_day=False)
    assert s.anchored_windows >= 1 and s.anchored_readings > 0
    db = sqlite3.connect(tmp_path / "cloud.sqlite")
    gateway, device, point, ts_ms = db.execute(
        "SELECT s.gateway, s.device, s.point, a.ts_ms FROM anchor_leaves a JOIN series s ON s.id = a.series"
        " ORDER BY a.ts_ms LIMIT 1").fetchone()
    db.close()
    # The demo is gone; the API (a new process would do the same) still builds the bundle...
    store = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await store.open()
    try:
        _, key = await create_api_key(store, TENANT_ID, "auditor", "proof test")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(store)), base_url="http://t",
                                     headers={"Authorization": f"Bearer {key}"}) as c:
            r = await c.get("/api/proof", params={"gateway": gateway, "device": device, "point": point,
                                                  "ts": str(ts_ms)})
            assert r.status_code == 200, r.text
            bundle = r.json()
            missing = await c.get("/api/proof", params={"gateway": gateway, "device": device, "point": "nope",
                                                        "ts": str(ts_ms)})
            assert missing.status_code == 404
    finally:
        await store.close()
    assert bundle == await bundle_for(f"sqlite:///{tmp_path / 'cloud.sqlite'}", gateway, device, point, ts_ms)
    # ...and a fresh process verifies it against the chain replayed from the demo's journal.
    (tmp_path / "bundle.json").write_text(json.dumps(bundle))
    chain = f"evm:///{tmp_path / 'chain.jsonl'}"
    proc = subprocess.run([sys.executable, "-m", "carbonlink.cli", "verify", "bundle", str(tmp_path / "bundle.json"),
                           "--rpc", chain, "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A tampered value fails, naming what does not match.
    bundle["reading"]["value"] = str(float(bundle["reading"]["value"]) + 1)  # canonical text in the bundle
    report = await verify_bundle(bundle, chain)
    assert not report.ok
    assert any("value" in f.detail or f.name in ("batch", "leaf") for f in report.failures), report.failures
