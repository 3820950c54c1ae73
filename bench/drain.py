"""Drain benchmark: a gateway with N buffered readings drains into the cloud through Mosquitto.

``python bench/drain.py [--readings 1000000] [--workers 2] [--json]``

A private Mosquitto, ingest worker process(es) on one shared subscription and a
SQLite store; the gateway is the real edge agent in its own process, its outbox
pre-filled with readings buffered an hour ago (the backlog lane), no rate limit.
The clock starts when the agent is up and stops when the cloud has every reading.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from carbonlink.cloud.store import open_store  # noqa: E402
from carbonlink.commands.faults.lab import Broker, Proc  # noqa: E402
from carbonlink.edge.identity import load_or_create_key, public_key_hex  # noqa: E402
from carbonlink.edge.outbox import Outbox  # noqa: E402
from carbonlink.kernel.wire import Reading  # noqa: E402


def stored(db_path: Path) -> int:
    db = sqlite3.connect(db_path, timeout=30)
    try:
        return int(db.execute("SELECT count(*) FROM readings").fetchone()[0])
    finally:
        db.close()


async def drain(readings: int, workers: int, batch: int, inflight: int) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory(prefix="carbonlink-drain-") as d:
        work = Path(d)
        broker = Broker(work)
        broker.start()
        store_url = f"sqlite:///{work / 'cloud.sqlite'}"
        store = open_store(store_url)
        await store.open()
        gw_dir = work / "gw"
        gw_dir.mkdir()
        key = load_or_create_key(gw_dir / "gw.key")
        await store.registry.register_gateway("gw-drain", "bench", "ed25519", public_key_hex(key))
        await store.close()
        cfg = {"gateway": {"id": "gw-drain", "site": "bench", "key_file": "gw.key", "data_dir": "edge"},
               "mqtt": {"url": broker.url, "ack_timeout_s": 30},
               "delivery": {"backlog_rate": 0, "backlog_max_readings": batch, "backlog_inflight": inflight},
               "devices": []}
        (gw_dir / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        t = time.monotonic()
        ob = Outbox(gw_dir / "edge" / "outbox.sqlite", "gw-drain")
        added = time.time_ns() // 1_000_000 - 3_600_000
        for start in range(0, readings, 100_000):
            n = min(100_000, readings - start)
            ob.append([Reading("cems-stack-1", f"p{i % 10}", 1_600_000_000_000 + start + i, 12.5 + i % 97,
                               "mg/m3") for i in range(n)], added_ms=added)
        ob.close()
        fill_s = time.monotonic() - t
        procs = [Proc("ingest", store_url, broker.url, f"ingest-{i}", "drain", log=work / f"ingest-{i}.log")
                 for i in range(workers)]
        edge = Proc("edge", str(gw_dir / "gateway.yaml"), log=work / "edge.log")
        try:
            await asyncio.gather(*(p.start() for p in procs))
            await edge.start()
            t0 = time.monotonic()
            db_path = work / "cloud.sqlite"
            while (n := await asyncio.to_thread(stored, db_path)) < readings:
                if time.monotonic() - t0 > 1800:
                    raise TimeoutError(f"only {n} of {readings} stored after 30 minutes")
                await asyncio.sleep(0.25)
            seconds = time.monotonic() - t0
        finally:
            for p in (edge, *procs):
                if p.p is not None:
                    p.kill()
            broker.kill()
        return {"readings": readings, "seconds": round(seconds, 2), "readings_per_s": round(readings / seconds),
                "workers": workers, "batch_readings": batch, "inflight": inflight, "fill_s": round(fill_s, 1)}


def main(
    readings: Annotated[int, typer.Option(help="readings buffered in the gateway")] = 1_000_000,
    workers: Annotated[int, typer.Option(help="ingest workers on one shared subscription, as compose runs")] = 2,
    batch: Annotated[int, typer.Option(help="readings per backlog batch")] = 5000,
    inflight: Annotated[int, typer.Option(help="backlog batches awaiting ack")] = 16,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    out = asyncio.run(drain(readings, workers, batch, inflight))
    if json_out:
        print(json.dumps(out))
    else:
        print(f"{out['readings']:,} readings drained in {out['seconds']} s: {out['readings_per_s']:,} readings/s "
              f"({workers} ingest worker(s), {batch}-reading batches, {inflight} in flight)")


if __name__ == "__main__":
    typer.run(main)
