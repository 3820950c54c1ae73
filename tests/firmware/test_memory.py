"""Deployment build and RAM: every module through mpy-cross; a full buffer delivered in a 64 KB heap."""

from __future__ import annotations

import subprocess
from pathlib import Path

from carbonlink.commands.firmwarelab.micropython import FIRMWARE, compile_firmware, mpy_cross_binary
from carbonlink.commands.firmwarelab.node import READINGS_PER_BATCH, cloud, fill_buffer, make_node, run_node
from tests.services import require_mosquitto_service


def test_every_module_compiles_with_mpy_cross(tmp_path: Path) -> None:
    built = compile_firmware(tmp_path)
    sources = {p.stem for p in FIRMWARE.glob("*.py")} - {"main"}
    assert {p.stem for p in built} == sources
    assert all(p.stat().st_size > 0 for p in built)
    binary = mpy_cross_binary()
    assert binary is not None
    proc = subprocess.run([binary, "-o", str(tmp_path / "main.mpy"), str(FIRMWARE / "main.py")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


async def test_full_buffer_delivered_in_a_64k_heap(tmp_path: Path, mpy_dir: Path) -> None:
    require_mosquitto_service()
    d = tmp_path / "node"
    # 8 segments of 16 KB: about 100 batches of 11 readings. Fill past the bound so the oldest drop.
    cfg = make_node(d, 1883, buffer={"segment_bytes": 16384, "max_segments": 8}, window=4)
    filled = await fill_buffer(d, 130, modules=mpy_dir)
    pending = filled.pending
    assert filled.bytes <= 8 * 16384 and filled.dropped > 0 and pending + filled.dropped == 130
    async with cloud(tmp_path, "mqtt://127.0.0.1:1883", cfg) as svc:
        out, stats = await run_node(d, 2, heap="64k", modules=mpy_dir, time_limit=80)
        assert out.count("uplink True") == 2, out
        assert stats["pending"] == 0
        assert svc.counters.batches_committed == pending + 2
        assert (await svc.store.data.counts())["readings"] >= (pending + 2) * READINGS_PER_BATCH
