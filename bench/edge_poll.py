"""Edge agent cost: CPU share and peak RSS while polling 1,000 points at 1 Hz across 20 devices.

The agent runs as its own process (`carbonlink edge run`), so its figures are its
own; simulators, broker and ingest run in this process. Targets on a 2-core
machine: under 4 % of one core and under 80 MB (issue 11) for the agent alone
(``anomaly.enabled: false``, or an install with only the ``edge`` extra), and under
30 MB more with the anomaly model scoring every window (issue 16). Both are
measured in the same run by default.

    .venv/bin/python bench/edge_poll.py [--devices 20] [--points 50] [--seconds 60] [--model both|on|off] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carbonlink.cloud.broker import EmbeddedBroker  # noqa: E402
from carbonlink.cloud.service import running_cloud  # noqa: E402
from carbonlink.edge.identity import load_or_create_key, public_key_hex  # noqa: E402
from carbonlink.kernel.ports import free_port  # noqa: E402
from carbonlink.simulators.modbus_host import ModbusDeviceHost, f32  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def status_mb(pid: int, field: str) -> float:
    """A memory figure of /proc/PID/status: VmHWM (peak RSS), RssAnon (the process's own memory) or RssFile
    (pages of mapped files such as onnxruntime's library: shared, and given back under memory pressure)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rollup_mb(pid: int) -> dict[str, float]:
    """PSS (shared pages divided among the processes mapping them) and USS (pages only this process holds)."""
    out = {"pss": 0.0, "uss": 0.0}
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return {"pss": float("nan"), "uss": float("nan")}
    for line in lines:
        key, _, rest = line.partition(":")
        if key == "Pss":
            out["pss"] += int(rest.split()[0]) / 1024
        elif key in ("Private_Clean", "Private_Dirty"):
            out["uss"] += int(rest.split()[0]) / 1024
    return out


def make_filler(n_points: int, seed: int):
    def fill(regs: list[int]) -> None:
        t = time.time()
        for i in range(n_points):
            regs[2 * i : 2 * i + 2] = f32(seed + i + (t % 60) / 60)
    return fill


async def main(devices: int, points: int, seconds: float, warmup: float, model: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        hosts = [ModbusDeviceHost(make_filler(points, k), port=free_port(), size=max(256, 2 * points))
                 for k in range(devices)]
        for h in hosts:
            await h.start()
        point_list = [{"name": f"p{i:03d}", "register": 2 * i, "type": "float32", "unit": "u"}
                      for i in range(points)]
        async with EmbeddedBroker() as broker, \
                running_cloud(f"sqlite:///{work / 'cloud.sqlite'}", broker.url, http_port=free_port()) as cloud:
            cfg = {
                "gateway": {"id": "gw-bench", "site": "bench", "key_file": "gw.key", "data_dir": "edge"},
                "mqtt": {"url": broker.url},
                "batch": {"max_readings": 1000, "max_age_s": 1.0},
                "log_level": "WARNING",
                "anomaly": {"enabled": model},
                "devices": [{"id": f"dev-{k:02d}", "driver": "modbus_tcp", "host": "127.0.0.1", "port": h.port,
                             "poll_interval_s": 1.0, "points": point_list} for k, h in enumerate(hosts)],
            }
            (work / "gateway.yaml").write_text(yaml.safe_dump(cfg))
            key = load_or_create_key(work / "gw.key")
            await cloud.store.registry.register_gateway("gw-bench", "bench", "ed25519", public_key_hex(key))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "carbonlink.cli", "edge", "run", "--config", str(work / "gateway.yaml"),
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            try:
                await asyncio.sleep(warmup)  # imports, connections, first batches
                stored0, cpu0, t0 = cloud.ingest.counters.readings_stored, cpu_seconds(proc.pid), time.monotonic()
                await asyncio.sleep(seconds)
                stored1, cpu1, t1 = cloud.ingest.counters.readings_stored, cpu_seconds(proc.pid), time.monotonic()
                rss = status_mb(proc.pid, "VmHWM")
                anon, file = status_mb(proc.pid, "RssAnon"), status_mb(proc.pid, "RssFile")
                shares = rollup_mb(proc.pid)
            finally:
                proc.terminate()
                await proc.wait()
        for h in hosts:
            await h.stop()
    wall = t1 - t0
    expected = devices * points / 1.0 * wall
    return {
        "anomaly_model": model, "devices": devices, "points": devices * points, "seconds": round(wall, 1),
        "cpu_share_of_one_core_pct": round(100 * (cpu1 - cpu0) / wall, 2),
        "peak_rss_mb": round(rss, 1),
        "rss_anon_mb": round(anon, 1),
        "rss_file_mb": round(file, 1),
        "pss_mb": round(shares["pss"], 1),
        "uss_mb": round(shares["uss"], 1),
        "readings_stored_per_s": round((stored1 - stored0) / wall, 1),
        "readings_expected_per_s": round(expected / wall, 1),
        "targets": {"cpu_pct_below": 4, "rss_mb_below": 80},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--warmup", type=float, default=8)
    ap.add_argument("--model", choices=["both", "on", "off"], default="both",
                    help="the anomaly model off (the agent alone), on, or both one after the other")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    modes = {"both": [False, True], "on": [True], "off": [False]}[a.model]
    runs = [asyncio.run(main(a.devices, a.points, a.seconds, a.warmup, m)) for m in modes]
    if len(runs) == 2:
        for k in ("peak_rss", "rss_anon", "rss_file", "pss", "uss"):
            runs[1][f"{k}_added_by_model_mb"] = round(float(runs[1][f"{k}_mb"]) - float(runs[0][f"{k}_mb"]), 1)  # type: ignore[arg-type]
    if a.json:
        print(json.dumps(runs))
    else:
        from rich.console import Console
        from rich.table import Table

        first = runs[0]
        t = Table(title=f"edge agent polling {first['points']} points at 1 Hz across {first['devices']} devices")
        t.add_column("figure")
        for r in runs:
            t.add_column("model on" if r["anomaly_model"] else "agent alone", justify="right")
        t.add_column("target", justify="right")
        t.add_row("CPU, % of one core", *[str(r["cpu_share_of_one_core_pct"]) for r in runs], "< 4")
        t.add_row("peak RSS, MB", *[str(r["peak_rss_mb"]) for r in runs], "< 80 alone, < 30 more with the model")
        t.add_row("  of which anonymous at the end, MB", *[str(r["rss_anon_mb"]) for r in runs], "")
        t.add_row("  of which mapped files at the end, MB", *[str(r["rss_file_mb"]) for r in runs], "")
        t.add_row("PSS / USS at the end, MB", *[f"{r['pss_mb']} / {r['uss_mb']}" for r in runs], "")
        t.add_row("readings stored per s", *[str(r["readings_stored_per_s"]) for r in runs],
                  str(first["readings_expected_per_s"]))
        t.add_row("measured over, s", *[str(r["seconds"]) for r in runs], "")
        Console().print(t)
        if len(runs) == 2:
            print(f"memory added by the anomaly model: {runs[1]['peak_rss_added_by_model_mb']} MB peak RSS "
                  f"({runs[1]['rss_anon_added_by_model_mb']} MB anonymous, "
                  f"{runs[1]['rss_file_added_by_model_mb']} MB mapped library files; "
                  f"PSS {runs[1]['pss_added_by_model_mb']} MB, USS {runs[1]['uss_added_by_model_mb']} MB)")
