"""Helpers to run the firmware node under MicroPython in a temp dir: config, simulated sensors, a cloud."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from carbonlink.cloud.ingest import IngestService
from carbonlink.cloud.store import open_store

from .conftest import mp_argv, mp_env

SECRET_HEX = "5eb63bbbe01eeed093cb22bb8f5acdc3" * 2


def bthome_advert(temp_c100: int, hum100: int, battery: int) -> str:
    sd = bytes([0x16, 0xD2, 0xFC, 0x40, 0x01, battery, 0x02]) + temp_c100.to_bytes(2, "little", signed=True)
    sd += bytes([0x03]) + hum100.to_bytes(2, "little")
    return (bytes([2, 1, 6, len(sd)]) + sd).hex()


SIM: dict[str, Any] = {
    "modbus": {"1": {"0": 1234, "1": 65500, "2": 1, "3": 34464}},
    "adc": {"34": 30000},
    "i2c": {"32": {"0": 400, "5": 65526}},
    "ble": [["a4c138000001", bthome_advert(2150, 5055, 97)]],
}

SENSORS: list[dict[str, Any]] = [
    {"id": "flow", "kind": "modbus", "device": "flow-1", "unit": 1, "points": [
        {"point": "flow", "reg": 0, "decimals": 2, "unit": "m3/h"},
        {"point": "temp", "reg": 1, "type": "i16", "decimals": 1, "unit": "°C"},
        {"point": "total", "reg": 2, "type": "u32", "unit": "m3"}]},
    {"id": "soil", "kind": "soil_adc", "device": "soil-1", "pin": 34, "dry": 50000, "wet": 20000},
    {"id": "soil2", "kind": "soil_i2c", "device": "soil-2"},
    {"id": "air", "kind": "bthome", "devices": {"A4:C1:38:00:00:01": "air-1"}},
]
READINGS_PER_BATCH = 3 + 2 + 3 + 3


def make_node(d: Path, port: int, **over: Any) -> dict[str, Any]:
    """Write config.json and sim.json into d; returns the config."""
    cfg: dict[str, Any] = {
        "node_id": f"node-{uuid.uuid4().hex[:8]}", "site": "fw-test", "secret_hex": SECRET_HEX,
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive_s": 30}, "sample_interval_s": 10,
        "watchdog_s": 30, "ack_timeout_s": 5, "reconnect_initial_ms": 200, "uplink_attempts": 6,
        "sensors": SENSORS,
    }
    sim = over.pop("_sim", SIM)
    cfg.update(over)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "sim.json").write_text(json.dumps(sim))
    return cfg


async def run_node(d: Path, cycles: int, heap: str | None = None, time_limit: float = 60, modules: Path | None = None,
                   script: str = "run_node.py") -> tuple[str, dict[str, Any]]:
    """Run the node's main loop for `cycles` wakes in d; returns (stdout, final buffer stats)."""
    proc = await asyncio.create_subprocess_exec(
        *mp_argv(script, "config.json", str(cycles), heap=heap), cwd=d,
        env=mp_env({"CL_SIM": "sim.json", "CL_STATE": str(d), "CL_SLEEP_SCALE": "1000"}, modules),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:] + err.decode()[-3000:]
    stats = [ln for ln in text.splitlines() if ln.startswith("stats ")]
    if script != "run_node.py":
        return text, {}
    assert stats, text + err.decode()
    return text, json.loads(stats[-1][6:])


@contextlib.asynccontextmanager
async def cloud(tmp: Path, url: str, cfg: dict[str, Any]) -> AsyncIterator[IngestService]:
    """The real ingest with a SQLite store, the node registered with its HMAC secret."""
    store = open_store(f"sqlite:///{tmp / 'cloud.db'}")
    await store.open()
    await store.registry.register_gateway(cfg["node_id"], cfg["site"], "hmac-sha256", cfg["secret_hex"])
    svc = IngestService(store, url, client_id=f"ingest-{uuid.uuid4().hex[:8]}")
    task = asyncio.create_task(svc.run())
    try:
        await asyncio.wait_for(svc.connected.wait(), 10)
        yield svc
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()
