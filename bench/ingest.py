"""Ingest benchmark: signed batches from many gateways through Mosquitto into PostgreSQL.

    .venv/bin/python bench/ingest.py [--readings 2000000] [--workers 2] [--json]

One run measures, on the same pre-generated signed messages:
  (b) raw broker delivery: the messages published to a do-nothing subscriber (QoS 1);
  (c) raw COPY: the same rows copied into a table shaped like ``readings`` (same primary key);
  (a) end to end: N ingest worker processes on one MQTT 5 shared subscription verify, COPY,
      commit, then acknowledge; the rate runs from the first publish to the last ack, and the rows
      are counted in the database afterwards (lost = published - stored, must be 0);
  (d) publish-to-ack latency at a steady rate (the ack goes out after the commit, so this bounds
      publish-to-commit from above);
  (d') meanwhile, the disk's own fsync latency (``bench/diskprobe.py``): every commit waits for one, so a
      tail in (d) that matches it is the disk's;
  (g) the ingest's parse-and-verify step alone on the same messages, in CPU seconds of one core;
  (e) the RSS of each worker: its largest during (d), and its peak over the whole run.
``--latency-only`` runs (d) and (e) alone (the issue's goals: p99 <= 200 ms at 20,000 readings/s, a worker
<= 150 MB), so the full-speed phases do not leave their high-water mark in the worker's memory.
It starts its own Mosquitto with unbounded queues (the default queues 1,000 messages per slow
client and drops the rest silently) and works in a throwaway PostgreSQL schema.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402
import asyncpg  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.diskprobe import FsyncProbe  # noqa: E402
from carbonlink.kernel.wire import canonical_number, format_ts, now_ms  # noqa: E402

MOSQUITTO_CONF = "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 100\n"
DEFAULT_DB = os.environ.get("CARBONLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Message:
    gateway: str
    seq: int
    topic: str
    payload: bytes
    rows: list[tuple[str, str, str, int, float, str, str, int]] = field(repr=False)


class Fleet:
    """Gateways with keys, each producing canonical signed batches (the bytes wire.sign_batch makes)."""

    def __init__(self, gateways: int, devices: int = 5, points: int = 10, site: str = "bench-site") -> None:
        self.site = site
        self.keys = {f"gw-{i:04d}": Ed25519PrivateKey.generate() for i in range(gateways)}
        self.seq = dict.fromkeys(self.keys, 0)
        self.ts = dict.fromkeys(self.keys, now_ms() // 1000 * 1000 - 6 * 3_600_000)
        self.points = [(f"dev-{d}", f"p{p}", "mg/m³") for d in range(devices) for p in range(points)]
        self.rng = random.Random(7)

    def batch(self, gw: str, size: int) -> Message:
        self.seq[gw] += 1
        seq = self.seq[gw]
        parts, rows = [], []
        while len(rows) < size:
            ts = self.ts[gw]
            self.ts[gw] += 1000
            ts_text = format_ts(ts)
            for dev, pt, unit in self.points:
                if len(rows) == size:
                    break
                v = round(self.rng.uniform(0, 500), 3)
                q = "M" if self.rng.random() < 0.01 else "N"
                text = canonical_number(v)
                parts.append(f'{{"device":"{dev}","point":"{pt}","quality":"{q}","ts":"{ts_text}",'
                             f'"unit":"{unit}","value":{text}}}')
                rows.append((gw, dev, pt, ts, float(text), unit, q, seq))
        body = (f'{{"alg":"ed25519","created":"{format_ts(now_ms())}","gateway":"{gw}",'
                f'"readings":[{",".join(parts)}],"seq":{seq},"v":1}}').encode()
        sig = self.keys[gw].sign(body).hex()
        payload = body[:-len(b',"v":1}')] + f',"sig":"{sig}","v":1}}'.encode()
        return Message(gw, seq, f"cl/{self.site}/{gw}/telemetry", payload, rows)

    def messages(self, readings: int, size: int) -> list[Message]:
        """Round-robin over gateways; each gateway's batches stay in seq order."""
        out: list[Message] = []
        gws = list(self.keys)
        i = 0
        while len(out) * size < readings:
            out.append(self.batch(gws[i % len(gws)], size))
            i += 1
        return out


# --- roles that run in their own process --------------------------------------------------------------


def peak_rss_mb() -> float:
    """VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def worker_main(db: str, mqtt: str, group: str, ident: str) -> None:
    from carbonlink.cloud.ingest import IngestService
    from carbonlink.cloud.store import open_store

    store = open_store(db)
    await store.open()
    svc = IngestService(store, mqtt, client_id=ident, shared_group=group)
    task = asyncio.create_task(svc.run())
    await asyncio.wait_for(svc.connected.wait(), 20)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await store.close()
    c = svc.counters
    print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                      "readings_stored": c.readings_stored, "batches": c.batches_committed,
                      "rejected": c.rejected_messages}), flush=True)


async def sink_main(mqtt: str, expect: int) -> None:
    """A do-nothing QoS 1 subscriber: counts messages, prints when the last one arrived."""
    from carbonlink.kernel.mqtturl import MqttUrl

    url = MqttUrl.parse(mqtt)
    async with aiomqtt.Client(url.host, url.port, identifier="bench-sink-" + uuid.uuid4().hex[:6]) as c:
        await c.subscribe("cl/+/+/telemetry", qos=1)
        print("ready", flush=True)
        n = 0
        async for _ in c.messages:
            n += 1
            if n == expect:
                break
    print(json.dumps({"last": time.time(), "received": n}), flush=True)


# --- the orchestrating process ------------------------------------------------------------------------


def spawn(*args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout is not None
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError(f"{args[1]} process did not start: {line!r}")
    return p


async def publish_all(mqtt_host: str, port: int, msgs: list[Message], conns: int = 4,
                      sent: dict[tuple[str, int], float] | None = None) -> None:
    """Publish at full speed over a few connections; one gateway always on the same connection, in order."""
    by_conn: list[list[Message]] = [[] for _ in range(conns)]
    for m in msgs:
        by_conn[hash(m.gateway) % conns].append(m)

    async def one(batch: list[Message]) -> None:
        async with aiomqtt.Client(mqtt_host, port, identifier="bench-pub-" + uuid.uuid4().hex[:6],
                                  max_inflight_messages=100) as c:
            window = asyncio.Semaphore(100)

            async def pub(m: Message) -> None:
                async with window:
                    if sent is not None:
                        sent[(m.gateway, m.seq)] = time.time()
                    await c.publish(m.topic, m.payload, qos=1)

            await asyncio.gather(*(pub(m) for m in batch))

    await asyncio.gather(*(one(b) for b in by_conn if b))


async def raw_copy_rate(db: str, msgs: list[Message], chunk: int = 10_000, *, index: bool = True) -> float:
    """COPY of the same rows, in the same chunks, into a table shaped like ``readings`` (with its key, or none)."""
    from carbonlink.cloud.store.postgres import split_url

    dsn, schema, _ = split_url(db)
    con = await asyncpg.connect(dsn, server_settings={"search_path": f"{schema},public"})
    try:
        await con.execute("CREATE TABLE copy_probe (LIKE readings INCLUDING ALL)" if index else
                          "CREATE TABLE copy_probe (LIKE readings INCLUDING DEFAULTS)")
        ids: dict[tuple[str, str, str], int] = {}
        rows = [(ids.setdefault((gw, d, p), len(ids) + 1), ts, v, q, seq) for m in msgs
                for gw, d, p, ts, v, _u, q, seq in m.rows]
        t0 = time.perf_counter()
        for i in range(0, len(rows), chunk):
            async with con.transaction():
                await con.copy_records_to_table("copy_probe", records=rows[i:i + chunk])
        rate = len(rows) / (time.perf_counter() - t0)
        await con.execute("DROP TABLE copy_probe")
        return rate
    finally:
        await con.close()


async def parse_verify_rate(store: Any, msgs: list[Message], group: int = 200) -> float:
    """Readings/s through the ingest's judge step alone (parse, checks, signature), on one core, no commit."""
    from carbonlink.cloud.ingest import IngestProcessor

    proc = IngestProcessor(store, key_cache_s=3600)
    work = [(m.topic, m.payload) for m in msgs]
    await proc.judge(work[:group])  # gateway keys into the cache
    t0 = time.process_time()
    for i in range(0, len(work), group):
        await proc.judge(work[i:i + group])
    return sum(len(m.rows) for m in msgs) / (time.process_time() - t0)


class AckListener:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.acks: dict[tuple[str, int], tuple[float, str]] = {}
        self.ready = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self) -> None:
        async with aiomqtt.Client(self.host, self.port, identifier="bench-acks-" + uuid.uuid4().hex[:6]) as c:
            await c.subscribe("cl/+/+/ack", qos=1)
            self.ready.set()
            async for m in c.messages:
                body = json.loads(m.payload)  # type: ignore[arg-type]
                gw = str(m.topic).split("/")[2]
                self.acks.setdefault((gw, body["seq"]), (time.time(), body["status"]))
                self.changed.set()

    async def wait_for(self, keys: set[tuple[str, int]], limit_s: float) -> bool:
        deadline = time.monotonic() + limit_s
        while not keys <= self.acks.keys():
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except TimeoutError:
                pass
        return True


async def nodered_rate(db: str, mqtt_port: int, msgs: list[Message], n: int, limit_s: float) -> tuple[float, int]:
    """Node-RED's rate on the same messages into the same table shape and key: first publish to last row."""
    from bench.nodered import running
    from carbonlink.cloud.store.postgres import split_url

    dsn, schema, _ = split_url(db)
    con = await asyncpg.connect(dsn)
    series, table = f'"{schema}".nodered_series', f'"{schema}".nodered_readings'
    try:
        # The same tables and keys as ours (its own copies): series ids, readings keyed by (series, ts_ms).
        await con.execute(f'CREATE TABLE {series} (LIKE "{schema}".series INCLUDING ALL)')
        await con.execute(f'CREATE TABLE {table} (LIKE "{schema}".readings INCLUDING ALL)')
        parts = urlsplit(dsn)
        pg = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 5432, "user": parts.username or "postgres",
              "database": parts.path.lstrip("/") or "postgres", "max": 8}
        with running(mqtt_port, pg, series, table):
            # Node-RED's MQTT node subscribes a moment after the deploy: probe until a row arrives.
            probe = json.dumps({"gateway": "probe", "seq": 1, "readings": [
                {"device": "d", "point": "p", "ts": "2026-01-01T00:00:00.000Z", "value": 1, "unit": "u",
                 "quality": "N"}]}).encode()
            async with aiomqtt.Client("127.0.0.1", mqtt_port, identifier="bench-nr-probe") as c:
                for _ in range(240):
                    await c.publish("cl/probe/probe/telemetry", probe, qos=1)
                    await asyncio.sleep(0.5)
                    if await con.fetchval(f"SELECT count(*) FROM {table}"):
                        break
            await con.execute(f"DELETE FROM {table}")
            t0 = time.time()
            await publish_all("127.0.0.1", mqtt_port, msgs)
            last, count, deadline = t0, 0, time.monotonic() + limit_s
            while count < n and time.monotonic() < deadline:
                now = await con.fetchval(f"SELECT count(*) FROM {table}")
                if now != count:
                    count, last = now, time.time()
                await asyncio.sleep(0.2)
        return (count / (last - t0) if count else 0.0), count
    finally:
        await con.close()


def rss_mb(pid: int) -> float:
    """A process's resident memory now (VmRSS, MB); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from carbonlink.cloud.store import open_store
    from carbonlink.commands.faults.lab import own_mosquitto

    schema = "bench_" + uuid.uuid4().hex[:10]
    db = f"{args.db}?schema={schema}"
    fleet = Fleet(args.gateways)
    t_gen = time.perf_counter()
    e2e_msgs = [] if args.latency_only else fleet.messages(args.readings, args.batch)
    steady_msgs = fleet.messages(args.steady_rate * args.steady_seconds, args.steady_batch)
    gen_s = time.perf_counter() - t_gen
    n_e2e = sum(len(m.rows) for m in e2e_msgs)
    result: dict[str, Any] = {"gateways": args.gateways, "batch": args.batch, "workers": args.workers,
                              "readings": n_e2e, "messages": len(e2e_msgs), "generate_s": round(gen_s, 2),
                              "latency_only": args.latency_only, "steady_batch": args.steady_batch}
    store = open_store(db)
    await store.open()
    from carbonlink.edge.identity import public_key_hex

    for gw, key in fleet.keys.items():
        await store.registry.register_gateway(gw, fleet.site, "ed25519", public_key_hex(key))
    workers: list[subprocess.Popen[str]] = []
    try:
        with own_mosquitto(MOSQUITTO_CONF) as (mqtt, port, _):
            if not args.latency_only:
                # (b) raw broker delivery to a do-nothing subscriber
                sink = await asyncio.to_thread(spawn, "--role", "sink", "--mqtt", mqtt, "--expect",
                                               str(len(e2e_msgs)))
                t0 = time.time()
                await publish_all("127.0.0.1", port, e2e_msgs)
                out, _ = await asyncio.to_thread(sink.communicate, timeout=300)
                sink_stats = json.loads(out.strip().splitlines()[-1])
                result["broker_rate"] = n_e2e / (sink_stats["last"] - t0)
                # (g) parse and verify alone, in this process (one core): the ingest's CPU stage
                result["parse_verify_rate"] = await parse_verify_rate(store, e2e_msgs)
                # (c) raw COPY of the same rows
                result["copy_rate"] = await raw_copy_rate(db, e2e_msgs)
                result["copy_noindex_rate"] = await raw_copy_rate(db, e2e_msgs, index=False)
            # (f) the peer: Node-RED taking the same messages into PostgreSQL
            if not args.skip_nodered and not args.latency_only:
                result["nodered_rate"], result["nodered_stored"] = await nodered_rate(db, port, e2e_msgs, n_e2e,
                                                                                      args.timeout)
            # (a) end to end through the ingest workers
            for i in range(args.workers):
                workers.append(await asyncio.to_thread(
                    spawn, "--role", "worker", "--db", db, "--mqtt", mqtt, "--group", "bench",
                    "--id", f"bench-ingest-{i}-{schema}"))
            acks = AckListener("127.0.0.1", port)
            ack_task = asyncio.create_task(acks.run())
            await asyncio.wait_for(acks.ready.wait(), 10)
            keys = {(m.gateway, m.seq) for m in e2e_msgs}
            result["e2e_complete"] = True
            if e2e_msgs:
                t0 = time.time()
                await publish_all("127.0.0.1", port, e2e_msgs)
                complete = await acks.wait_for(keys, args.timeout)
                last = max((acks.acks[k][0] for k in keys if k in acks.acks), default=time.time())
                result["e2e_rate"] = n_e2e / (last - t0)
                result["e2e_complete"] = complete
            # (d) latency at a steady rate, and (e) each worker's resident memory meanwhile
            sent: dict[tuple[str, int], float] = {}
            interval = args.steady_batch / args.steady_rate
            rss_steady = [0.0] * len(workers)

            async def sample_rss() -> None:
                while True:
                    for i, w in enumerate(workers):
                        rss_steady[i] = max(rss_steady[i], rss_mb(w.pid))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample_rss())
            disk = FsyncProbe().start()  # the disk's flush latency meanwhile (the commit's floor)
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-steady", max_inflight_messages=200) as c:
                start = time.monotonic()
                pubs = []
                for i, m in enumerate(steady_msgs):
                    delay = start + i * interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[(m.gateway, m.seq)] = time.time()
                    pubs.append(asyncio.create_task(c.publish(m.topic, m.payload, qos=1)))
                await asyncio.gather(*pubs)
            steady_keys = {(m.gateway, m.seq) for m in steady_msgs}
            complete_steady = await acks.wait_for(steady_keys, 60)
            sampler.cancel()
            await asyncio.to_thread(disk.stop)
            result["disk_fsync"] = disk.summary()
            lat = [(acks.acks[k][0] - sent[k]) * 1000 for k in steady_keys if k in acks.acks]
            result.update(steady_rate=args.steady_rate, steady_complete=complete_steady,
                          latency_p50_ms=pct(lat, 50), latency_p95_ms=pct(lat, 95), latency_p99_ms=pct(lat, 99),
                          latency_max_ms=max(lat, default=float("nan")),
                          worker_rss_steady_mb=[round(x, 1) for x in rss_steady])
            ack_task.cancel()
            statuses: dict[str, int] = {}
            for k in keys | steady_keys:
                st = acks.acks.get(k, (0.0, "missing"))[1]
                statuses[st] = statuses.get(st, 0) + 1
            result["ack_statuses"] = statuses
            # (e) peak RSS per worker, then the count in the database
            for w in workers:
                w.send_signal(signal.SIGTERM)
            stats = []
            for w in workers:
                out, _ = await asyncio.to_thread(w.communicate, timeout=30)
                stats.append(json.loads(out.strip().splitlines()[-1]))
            workers.clear()
            result["worker_peak_rss_mb"] = [round(s["peak_rss_mb"], 1) for s in stats]
            result["worker_readings"] = [s["readings_stored"] for s in stats]
        published = n_e2e + sum(len(m.rows) for m in steady_msgs)
        stored = (await store.data.counts())["readings"]
        result.update(published=published, stored=stored, lost=published - stored)
        if not args.latency_only:
            result["e2e_vs_copy"] = result["e2e_rate"] / result["copy_rate"]
            result["e2e_vs_copy_noindex"] = result["e2e_rate"] / result["copy_noindex_rate"]
            if result.get("nodered_rate"):
                result["e2e_vs_nodered"] = result["e2e_rate"] / result["nodered_rate"]
            result["e2e_vs_broker"] = result["e2e_rate"] / result["broker_rate"]
    finally:
        for w in workers:
            w.kill()
        await store.close()
        if not args.keep:
            from carbonlink.cloud.store.postgres import drop_schema, split_url

            await drop_schema(split_url(db)[0], schema)
    return result


def print_table(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    title = (f"ingest latency bench: {r['steady_rate']:,} readings/s in batches of {r['steady_batch']},"
             f" {r['workers']} worker(s)") if r.get("latency_only") else (
        f"ingest bench: {r['readings']:,} readings in {r['messages']:,} signed batches of {r['batch']}"
        f" from {r['gateways']} gateways, {r['workers']} workers")
    t = Table(title=title)
    t.add_column("measure")
    t.add_column("value", justify="right")
    if not r.get("latency_only"):
        t.add_row("(a) committed end to end", f"{r['e2e_rate']:,.0f} readings/s")
        t.add_row("(b) raw broker delivery", f"{r['broker_rate']:,.0f} readings/s")
        t.add_row("(g) parse + verify alone, CPU time of one core", f"{r['parse_verify_rate']:,.0f} readings/s")
        t.add_row("(c) raw COPY into PostgreSQL, readings' key", f"{r['copy_rate']:,.0f} readings/s")
        t.add_row("(c') raw COPY into a table with no index", f"{r['copy_noindex_rate']:,.0f} readings/s")
        if r.get("nodered_rate"):
            t.add_row("(f) Node-RED 4.1 MQTT → PostgreSQL, same table and key (acks on receipt)",
                      f"{r['nodered_rate']:,.0f} readings/s ({r['nodered_stored']:,} of {r['readings']:,} stored)")
    t.add_row(f"(d) publish→ack p50 / p95 / p99 / max at {r['steady_rate']:,}/s (ack after commit)",
              f"{r['latency_p50_ms']:.1f} / {r['latency_p95_ms']:.1f} / {r['latency_p99_ms']:.1f}"
              f" / {r['latency_max_ms']:.1f} ms")
    if r.get("disk_fsync"):
        f = r["disk_fsync"]
        t.add_row("(d') the disk meanwhile: fsync of 8 KB every 10 ms, p50 / p99 / max (stalls ≥ 100 ms)",
                  f"{f['p50_ms']:.1f} / {f['p99_ms']:.1f} / {f['max_ms']:.1f} ms ({f['stalls_100ms']})")
    t.add_row("(e) RSS per worker: largest during the steady phase",
              " / ".join(f"{x} MB" for x in r["worker_rss_steady_mb"]))
    t.add_row("(e) peak RSS per worker over the whole run", " / ".join(f"{x} MB" for x in r["worker_peak_rss_mb"]))
    if not r.get("latency_only"):
        t.add_row("end to end / raw COPY (readings' key)", f"{r['e2e_vs_copy']:.2f}")
        t.add_row("end to end / raw COPY (no index)", f"{r['e2e_vs_copy_noindex']:.2f}")
        if r.get("e2e_vs_nodered"):
            t.add_row("end to end / Node-RED", f"{r['e2e_vs_nodered']:.1f}x")
        t.add_row("end to end / raw broker", f"{r['e2e_vs_broker']:.2f}")
    t.add_row("published / stored / lost", f"{r['published']:,} / {r['stored']:,} / {r['lost']:,}")
    t.add_row("acks", ", ".join(f"{k} {v:,}" for k, v in sorted(r["ack_statuses"].items())))
    Console().print(t)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["main", "worker", "sink"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--db", default=DEFAULT_DB, help="PostgreSQL URL (a throwaway schema is made in it)")
    ap.add_argument("--mqtt", help=argparse.SUPPRESS)
    ap.add_argument("--group", default="bench", help=argparse.SUPPRESS)
    ap.add_argument("--id", default="bench-ingest", help=argparse.SUPPRESS)
    ap.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--gateways", type=int, default=50)
    ap.add_argument("--readings", type=int, default=2_000_000, help="readings in the full-speed phases")
    ap.add_argument("--batch", type=int, default=500, help="readings per batch at full speed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steady-rate", type=int, default=20_000, help="readings/s in the latency phase")
    ap.add_argument("--steady-seconds", type=int, default=8)
    ap.add_argument("--steady-batch", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for the last ack")
    ap.add_argument("--keep", action="store_true", help="keep the bench schema")
    ap.add_argument("--skip-nodered", action="store_true", help="leave out the Node-RED baseline (needs npm once)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the steady phase: publish→ack latency at --steady-rate and each worker's RSS")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "worker":
        asyncio.run(worker_main(args.db, args.mqtt, args.group, args.id))
        return 0
    if args.role == "sink":
        asyncio.run(sink_main(args.mqtt, args.expect))
        return 0
    r = asyncio.run(run(args))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_table(r)
    return 0 if r["lost"] == 0 and r["e2e_complete"] and r["steady_complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
