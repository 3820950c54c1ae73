"""Ingest worker CPU per reading on drain-shaped batches, in one process, no broker.

``python bench/worker_cpu.py [--store postgresql://…] [--readings 300000] [--group 4] [--rounds 3] [--json]``

The batches are what ``bench/drain.py``'s gateway sends: the real outbox cuts and signs (``KeySigner``)
5000-reading backlog batches of device "cems-stack-1", points p0..p9, one millisecond apart. A fresh
store (SQLite in a temp folder, or a throwaway PostgreSQL schema) takes them through the real
``IngestProcessor`` (judge: parse, checks, Ed25519; finish: ``Data.commit_many``), ``--group`` messages
per group commit as a worker takes them off its queue. Printed: CPU µs per reading of this process (all
threads: the aiosqlite thread included, the PostgreSQL server not), judge and commit apart, best of
``--rounds`` fresh stores. The batches are made once and cached under the temp folder (``--cache``), so
two checkouts can be compared on the same bytes: run it from each, interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GW, SITE = "gw-drain", "bench"


def make_batches(readings: int, batch: int) -> tuple[str, list[bytes]]:
    from carbonlink.edge.identity import load_or_create_key, public_key_hex
    from carbonlink.edge.outbox import KeySigner, Outbox
    from carbonlink.kernel.wire import Reading

    with tempfile.TemporaryDirectory() as tmp:
        key = load_or_create_key(Path(tmp) / "gw.key")
        ob = Outbox(Path(tmp) / "outbox.sqlite", GW)
        try:
            for start in range(0, readings, 100_000):
                n = min(100_000, readings - start)
                ob.append([Reading("cems-stack-1", f"p{i % 10}", 1_600_000_000_000 + start + i, 12.5 + i % 97,
                                   "mg/m3") for i in range(n)], added_ms=1_000)
            signer = KeySigner(key)
            out = []
            while (b := ob.cut_batch(batch, signer, lane="backlog", live_after_ms=2**62)) is not None:
                out.append(b.payload)
        finally:
            ob.close()
        return public_key_hex(key), out


async def one_round(store_url: str | None, pub: str, payloads: list[bytes], group: int) -> dict[str, float]:
    from carbonlink.cloud.ingest import IngestProcessor
    from carbonlink.cloud.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        from carbonlink.commands.faults.lab import store_url as throwaway_store_url

        url, schema = throwaway_store_url(store_url, Path(tmp), "wcpu_")
        store = open_store(url)
        await store.open()
        try:
            await store.registry.register_gateway(GW, SITE, "ed25519", pub)
            proc = IngestProcessor(store, key_cache_s=3600)
            topic = f"cl/{SITE}/{GW}/telemetry"
            work = [(topic, p) for p in payloads]
            judge_s = commit_s = 0.0
            for i in range(0, len(work), group):
                t0 = time.process_time()
                judged = await proc.judge(work[i:i + group])
                t1 = time.process_time()
                outcomes = await proc.finish(judged)
                commit_s += time.process_time() - t1
                judge_s += t1 - t0
                assert all(o.value == "committed" for o in outcomes), outcomes
            n = int(await store.db.fetchval("SELECT count(*) FROM readings"))
        finally:
            if schema is not None:
                await store.db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await store.close()
    return {"readings": n, "judge_us": judge_s * 1e6 / n, "commit_us": commit_s * 1e6 / n,
            "total_us": (judge_s + commit_s) * 1e6 / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default=None, help="postgresql://… (default: SQLite in a temp folder)")
    ap.add_argument("--readings", type=int, default=300_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--group", type=int, default=4, help="messages per group commit")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "carbonlink-worker-cpu.pkl"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cache = Path(args.cache)
    data: Any = pickle.loads(cache.read_bytes()) if cache.exists() else None
    if data is None or data[0] != (args.readings, args.batch):
        data = ((args.readings, args.batch), *make_batches(args.readings, args.batch))
        cache.write_bytes(pickle.dumps(data))
    _, pub, payloads = data
    runs = [asyncio.run(one_round(args.store, pub, payloads, args.group)) for _ in range(args.rounds)]
    best = min(runs, key=lambda r: r["total_us"])
    out = {"store": "postgresql" if args.store else "sqlite", "root": str(ROOT),
           **{k: round(v, 3) for k, v in best.items()}, "all_total_us": [round(r["total_us"], 3) for r in runs]}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{ROOT} on {out['store']}: {out['total_us']} µs CPU per reading (judge {out['judge_us']},"
              f" commit {out['commit_us']}); best of {out['all_total_us']}")


if __name__ == "__main__":
    main()
