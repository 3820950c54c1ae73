"""Drain benchmark: a gateway with N buffered readings drains into the cloud through Mosquitto, live data flowing.

``python bench/drain.py [--readings 1000000] [--workers 2] [--store postgresql://…] [--live 200] [--json]``

A private Mosquitto, ingest worker process(es) on one shared subscription and a store (SQLite in a temp
folder by default; ``--store postgresql://user@host/db`` runs the cloud side on PostgreSQL in a throwaway
schema). The gateway is the real edge agent in its own process, its outbox pre-filled with readings
buffered an hour ago (the backlog lane), no rate limit, and a live feed of ``--live`` readings/s stamped
now (the live lane). The agent first runs live only for a few seconds (the baseline), then the backlog
is released: the clock starts there and stops when the cloud has every buffered reading.

Printed, all measured in this run: the drain rate and its ratio to the 200,000/s goal; the edge's own
ceiling (cutting and signing the same backlog in this process, no network) and the drain's share of it,
which says whether the gateway or the cloud side is the bottleneck; the live lane's latency (ingest
receipt minus reading time, p50/p99/max) before and during the drain, and their ratio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stats import percentiles  # noqa: E402
from carbonlink.cloud.store import open_store  # noqa: E402
from carbonlink.commands.faults.lab import Broker, Proc  # noqa: E402
from carbonlink.commands.faults.lab import store_url as throwaway_store_url  # noqa: E402
from carbonlink.edge.backlog_cutter import BacklogCutter  # noqa: E402
from carbonlink.edge.identity import load_or_create_key, public_key_hex  # noqa: E402
from carbonlink.edge.outbox import KeySigner, Outbox  # noqa: E402
from carbonlink.edge.uplink import BACKLOG_READINGS_PER_TURN  # noqa: E402
from carbonlink.kernel.wire import Reading  # noqa: E402

GOAL = 200_000
GW = "gw-drain"


def fill(path: Path, readings: int, added_ms: int) -> None:
    ob = Outbox(path, GW)
    try:
        for start in range(0, readings, 100_000):
            n = min(100_000, readings - start)
            ob.append([Reading("cems-stack-1", f"p{i % 10}", 1_600_000_000_000 + start + i, 12.5 + i % 97,
                               "mg/m3") for i in range(n)], added_ms=added_ms)
    finally:
        ob.close()


def edge_ceiling(src: Path, work: Path, key_file: Path, batch: int, limit: int = 200_000) -> float:
    """Readings/s the outbox cuts and signs backlog batches at, on a copy, in this process (no network), as the
    agent cuts them: through the pipelined BacklogCutter, as many batches a call as the uplink asks for."""
    copy = work / "ceiling.sqlite"
    shutil.copy(src, copy)
    ob = Outbox(copy, GW, synchronous="FULL")
    cutter = BacklogCutter(ob)
    signer = KeySigner(load_or_create_key(key_file))
    per_call = max(1, BACKLOG_READINGS_PER_TURN // batch)
    try:
        n, t = 0, time.perf_counter()
        while n < limit and (cut := cutter.cut(per_call, batch, signer, live_after_ms=2**62)):
            n += sum(b.n for b in cut)
        return n / (time.perf_counter() - t)
    finally:
        cutter.close()
        ob.close()
        for f in work.glob("ceiling.sqlite*"):
            f.unlink()


def cpu_s(pid: int | None) -> float:
    """User + system CPU seconds a process has used (Linux /proc; 0 elsewhere or once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far (Linux /proc/stat; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class EdgeChild:
    """The edge agent in its own process (this file with --edge-child), live feed included."""

    def __init__(self, config: Path, live: int, baseline_s: float, log: Path) -> None:
        self.log = open(log, "ab")  # closed in stop()
        self.p = subprocess.Popen([sys.executable, __file__, "--edge-child", str(config), str(live), str(baseline_s)],
                                  stdout=subprocess.PIPE, stderr=self.log, cwd=config.parent)

    def line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().decode().strip()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait()
        self.log.close()


async def edge_child(config: str, live: int, baseline_s: float) -> None:
    from carbonlink.edge.agent import EdgeAgent
    from carbonlink.edge.config import load_gateway_config

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    agent = EdgeAgent(load_gateway_config(config), config_path=Path(config))
    inflight = agent.policy.backlog_inflight
    agent.policy.backlog_inflight = 0  # live only, for the baseline
    await agent.start()
    while agent.uplink.state.value != "connected":  # the baseline starts with a working link
        await asyncio.sleep(0.05)
    print("ready", flush=True)

    async def feed() -> None:  # a device polled at a fixed rate: a late tick is read late, not skipped
        tick, per_tick = 0.05, max(1, live // 20)
        due = time.monotonic()
        while True:
            now = time.time_ns() // 1_000_000
            await agent._accept([Reading("live-meter", f"l{i}", now, float(i), "kW") for i in range(per_tick)])
            due += tick
            await asyncio.sleep(max(0.0, due - time.monotonic()))

    task = asyncio.create_task(feed()) if live else None
    print(f"live {time.time_ns() // 1_000_000}", flush=True)
    await asyncio.sleep(baseline_s)
    agent.policy.backlog_inflight = inflight
    agent.uplink.wakeup.set()
    print(f"drain {time.time_ns() // 1_000_000}", flush=True)
    await asyncio.Event().wait()
    if task is not None:
        task.cancel()


async def drain(readings: int, workers: int, batch: int, inflight: int, store: str | None, live: int,
                baseline_s: float, live_target_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="carbonlink-drain-") as d:
        work = Path(d)
        broker = Broker(work)
        broker.start()
        store_url, schema = throwaway_store_url(store, work, "drain_")
        cloud = open_store(store_url)
        await cloud.open()
        gw_dir = work / "gw"
        gw_dir.mkdir()
        key = load_or_create_key(gw_dir / "gw.key")
        await cloud.registry.register_gateway(GW, "bench", "ed25519", public_key_hex(key))
        cfg = {"gateway": {"id": GW, "site": "bench", "key_file": "gw.key", "data_dir": "edge"},
               "mqtt": {"url": broker.url, "ack_timeout_s": 30},
               "batch": {"max_readings": 500, "max_age_s": 0.1},
               "delivery": {"backlog_rate": 0, "backlog_max_readings": batch, "backlog_inflight": inflight,
                            "live_target_ms": live_target_ms},
               "devices": []}
        (gw_dir / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        outbox = gw_dir / "edge" / "outbox.sqlite"
        t = time.monotonic()
        fill(outbox, readings, time.time_ns() // 1_000_000 - 3_600_000)
        fill_s = time.monotonic() - t
        ceiling = edge_ceiling(outbox, work, gw_dir / "gw.key", batch)
        procs = [Proc("ingest", store_url, broker.url, f"ingest-{i}", "drain", log=work / f"ingest-{i}.log")
                 for i in range(workers)]
        edge = EdgeChild(gw_dir / "gateway.yaml", live, baseline_s, work / "edge.log")

        async def backlog_stored() -> int:  # cheap; live batches hold at most 500 readings
            return int(await cloud.db.fetchval(
                "SELECT coalesce(sum(n), 0) FROM batches WHERE gateway = ? AND n > 500", GW))

        try:
            await asyncio.gather(*(p.start() for p in procs))
            assert await asyncio.to_thread(edge.line) == "ready", (work / "edge.log").read_text()[-2000:]
            live_ms = int((await asyncio.to_thread(edge.line)).split()[1])
            word, start_ms = (await asyncio.to_thread(edge.line)).split()
            assert word == "drain"
            t0 = time.monotonic()
            pids: dict[str, list[int | None]] = {
                "edge": [edge.p.pid], "ingest": [p.p.pid if p.p else None for p in procs],
                "broker": [broker.proc.pid if broker.proc else None], "bench": [os.getpid()]}
            cpu0 = {k: sum(cpu_s(pid) for pid in v) for k, v in pids.items()}
            busy0 = machine_busy()
            while (n := await backlog_stored()) < readings:
                if time.monotonic() - t0 > 1800:
                    raise TimeoutError(f"only {n} of {readings} stored after 30 minutes")
                await asyncio.sleep(0.25)
            seconds = time.monotonic() - t0
            cpu = {k: sum(cpu_s(pid) for pid in v) - cpu0[k] for k, v in pids.items()}
            busy1 = machine_busy()
            end_ms = int(start_ms) + int(seconds * 1000)
            await asyncio.sleep(1.0)
            lat = [(int(r["ts_ms"]), int(r["received_ms"])) for r in await cloud.db.fetch(
                "SELECT r.ts_ms, b.received_ms FROM readings r JOIN series s ON s.id = r.series"
                " JOIN batches b ON b.gateway = s.gateway AND b.seq = r.seq WHERE s.device = 'live-meter'")]
            stored_backlog = int(await cloud.db.fetchval(
                "SELECT count(*) FROM readings r JOIN series s ON s.id = r.series WHERE s.device = 'cems-stack-1'"))
        finally:
            edge.stop()
            for p in procs:
                if p.p is not None:
                    p.kill()
            broker.kill()
            if schema is not None:
                await cloud.db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await cloud.close()
        before = percentiles([rcv - ts for ts, rcv in lat if live_ms + 500 <= ts < int(start_ms)])
        during = percentiles([rcv - ts for ts, rcv in lat if int(start_ms) <= ts <= end_ms])
        rate = readings / seconds
        return {"readings": readings, "stored": stored_backlog, "seconds": round(seconds, 2),
                "readings_per_s": round(rate), "ratio_to_goal": round(rate / GOAL, 3),
                "edge_ceiling_per_s": round(ceiling), "share_of_edge_ceiling": round(rate / ceiling, 3),
                "live_per_s": live, "live_during_per_s": round(during["n"] / seconds),
                "live_before": before, "live_during": during,
                "live_p99_ratio": round(during["p99_ms"] / max(1, before["p99_ms"]), 2),
                "store": "postgresql" if store else "sqlite", "workers": workers, "batch_readings": batch,
                "inflight": inflight, "live_target_ms": live_target_ms, "fill_s": round(fill_s, 1),
                # CPU per reading drained (all threads), less sensitive to a loaded machine than the rate.
                "edge_cpu_us_per_reading": round(cpu["edge"] * 1e6 / readings, 2),
                "ingest_cpu_us_per_reading": round(cpu["ingest"] * 1e6 / readings, 2),
                "broker_cpu_us_per_reading": round(cpu["broker"] * 1e6 / readings, 2),
                # The bench's own process: the store's lookups for the clock (and, on SQLite, nothing else).
                "bench_cpu_us_per_reading": round(cpu["bench"] * 1e6 / readings, 2),
                # The drain's CPU budget: every core of the machine for the drain's seconds, per reading. The
                # processes above plus the database server (PostgreSQL) and anything else running share it.
                "budget_cpu_us_per_reading": round((os.cpu_count() or 1) * seconds * 1e6 / readings, 2),
                "machine_busy": round((busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 3)}


def main(
    readings: Annotated[int, typer.Option(help="readings buffered in the gateway")] = 1_000_000,
    workers: Annotated[int, typer.Option(help="ingest workers on one shared subscription, as compose runs")] = 2,
    batch: Annotated[int, typer.Option(help="readings per backlog batch")] = 5000,
    inflight: Annotated[int, typer.Option(help="backlog batches awaiting ack")] = 16,
    store: Annotated[str | None, typer.Option(help="cloud store URL (postgresql://…); default SQLite")] = None,
    live: Annotated[int, typer.Option(help="live readings/s fed during the drain")] = 200,
    baseline: Annotated[float, typer.Option(help="seconds of live-only traffic before the drain")] = 3.0,
    live_target: Annotated[float, typer.Option(help="the gateway's live ack target in ms (0: no AIMD)")] = 500.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    out = asyncio.run(drain(readings, workers, batch, inflight, store, live, baseline, live_target))
    if json_out:
        print(json.dumps(out))
        return
    b, d = out["live_before"], out["live_during"]
    print(f"{out['readings']:,} readings drained in {out['seconds']} s on {out['store']}: "
          f"{out['readings_per_s']:,} readings/s = {out['ratio_to_goal']} of the {GOAL:,}/s goal "
          f"({workers} ingest worker(s), {batch}-reading batches, up to {inflight} in flight, live target"
          f" {live_target:g} ms; {out['stored']:,} stored)")
    print(f"edge ceiling (cut + sign, no network, same run): {out['edge_ceiling_per_s']:,} readings/s; "
          f"the drain reached {out['share_of_edge_ceiling']} of it")
    print(f"live lane ({live}/s), ingest receipt - reading time: before p50 {b['p50_ms']} ms p99 {b['p99_ms']} ms; "
          f"during p50 {d['p50_ms']} ms p99 {d['p99_ms']} ms max {d['max_ms']} ms ({d['n']} readings); "
          f"p99 during/before = {out['live_p99_ratio']}; live readings made during the drain:"
          f" {out['live_during_per_s']}/s of {live}/s")
    print(f"CPU per reading drained: gateway {out['edge_cpu_us_per_reading']} µs, ingest workers together"
          f" {out['ingest_cpu_us_per_reading']} µs, broker {out['broker_cpu_us_per_reading']} µs, this bench"
          f" {out['bench_cpu_us_per_reading']} µs, of a budget of {out['budget_cpu_us_per_reading']} µs"
          f" ({os.cpu_count()} cores for the drain's time); the machine was {out['machine_busy']:.0%} busy")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--edge-child":
        asyncio.run(edge_child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        typer.run(main)
