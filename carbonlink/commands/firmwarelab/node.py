"""One firmware node in a folder: its config and simulated sensors, its wakes under MicroPython, a cloud for it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonlink.cloud.ingest import IngestService
from carbonlink.cloud.store import open_store

from .micropython import SCRIPTS, mp_argv, mp_env

SECRET_HEX = "5eb63bbbe01eeed093cb22bb8f5acdc3" * 2


def bthome_advert(temp_c100: int, hum100: int, battery: int) -> str:
    """A BTHome v2 advert (hex) with temperature, humidity and battery, as a sensor broadcasts it."""
    sd = bytes([0x16, 0xD2, 0xFC, 0x40, 0x01, battery, 0x02]) + temp_c100.to_bytes(2, "little", signed=True)
    sd += bytes([0x03]) + hum100.to_bytes(2, "little")
    return (bytes([2, 1, 6, len(sd)]) + sd).hex()


# What the unix port's fake UART, ADC, I2C and BLE scanner answer (firmware/hw_unix.py reads it from $CL_SIM).
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


class NodeRunError(RuntimeError):
    """The MicroPython process failed (a MemoryError in a small heap, a crash); the message holds its output."""


@dataclass(frozen=True)
class Filled:
    """The flash buffer after `fill_buffer`: batches waiting, their bytes, batches dropped at the bound."""
    pending: int
    bytes: int
    dropped: int


def make_node(d: Path, port: int, **over: Any) -> dict[str, Any]:
    """Write config.json and sim.json into d (``_sim`` replaces the simulated sensors); returns the config."""
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


async def _run(d: Path, script: str, count: int, heap: str | None, time_limit: float,
               modules: Path | None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *mp_argv(SCRIPTS / script, "config.json", str(count), heap=heap), cwd=d,
        env=mp_env({"CL_SIM": "sim.json", "CL_STATE": str(d), "CL_SLEEP_SCALE": "1000"}, modules),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), time_limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode()
    if proc.returncode != 0:
        raise NodeRunError(f"{script} exited {proc.returncode}:\n{text[-3000:]}{err.decode()[-3000:]}")
    return text


async def run_node(d: Path, cycles: int, heap: str | None = None, time_limit: float = 60,
                   modules: Path | None = None) -> tuple[str, dict[str, Any]]:
    """Run the node's main loop for `cycles` wakes in d; returns (stdout, final buffer stats)."""
    text = await _run(d, "run_node.py", cycles, heap, time_limit, modules)
    stats = [ln for ln in text.splitlines() if ln.startswith("stats ")]
    if not stats:
        raise NodeRunError(f"run_node.py printed no stats:\n{text[-3000:]}")
    return text, json.loads(stats[-1][6:])


async def fill_buffer(d: Path, wakes: int, modules: Path | None = None, time_limit: float = 60) -> Filled:
    """`wakes` wakes' worth of signed batches straight into the node's flash buffer, with no radio."""
    text = await _run(d, "fill_buffer.py", wakes, None, time_limit, modules)
    line = next((ln.split() for ln in text.splitlines() if ln.startswith("filled ")), None)
    if line is None:
        raise NodeRunError(f"fill_buffer.py printed no figures:\n{text[-3000:]}")
    return Filled(int(line[1]), int(line[2]), int(line[3]))


@contextlib.asynccontextmanager
async def cloud(tmp: Path, url: str, cfg: dict[str, Any]) -> AsyncIterator[IngestService]:
    """The real ingest with a SQLite store in tmp, the node registered with its HMAC secret."""
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
