"""Fault-injection suite: real Mosquitto, real store, real processes killed with SIGKILL.

``carbonlink faults run --profile ci|full [--json]``. One lab (a private Mosquitto,
a CEMS Modbus simulator, two ingest worker processes on one shared subscription,
a SQLite store file) and one fresh gateway process per fault, so each row counts
its own readings:

- produced: readings the gateway committed to its outbox (the outbox's own
  AUTOINCREMENT counter, which survives kill -9 and counts nothing twice);
- stored: readings the cloud holds for that gateway;
- lost = produced - stored; duplicated = stored rows beyond distinct reading
  identities plus batches stored twice (both must be 0);
- redelivered: messages the cloud received again and dropped as duplicates;
- drain_s: from the end of the fault until every reading buffered before it
  was acknowledged.

The gateway reaches the broker through a TCP proxy owned by the runner, so
"cut off" is a real dead link. For the cut-off row the readings the gateway
would have buffered during hours offline are added to its outbox in one go
(synthetic device ``buffered``), exactly as the agent would have stored them.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from carbonlink.kernel.ports import free_port

from .lab import Broker, Gateway, Lab, Proc, Profile, Row

PROFILES = {
    "ci": Profile("ci", stream_s=2.0, ingest_down_s=5.0, db_locked_s=6.0, buffered=50_000, broker_down_s=2.0),
    "full": Profile("full", stream_s=5.0, ingest_down_s=300.0, db_locked_s=60.0, buffered=1_000_000,
                    broker_down_s=5.0),
}


# --- the faults ---------------------------------------------------------------------------------


async def _stream(lab: Lab) -> None:
    await asyncio.sleep(lab.profile.stream_s)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def fault_edge_kill(lab: Lab, gw: Gateway, row: Row) -> int:
    for _ in range(3):
        await asyncio.sleep(random.uniform(0.3, 1.0))  # mid-stream: a batch is always being cut or in flight
        gw.proc.kill()
        await asyncio.sleep(0.5)
        await gw.proc.start()
    row.note = "3 x kill -9 of the edge agent, restarted after 0.5 s"
    return _now_ms()


async def fault_broker_restart(lab: Lab, gw: Gateway, row: Row) -> int:
    lab.broker.kill()
    await asyncio.sleep(lab.profile.broker_down_s)
    end = _now_ms()
    lab.broker.start()
    row.note = f"mosquitto killed, down {lab.profile.broker_down_s:g} s (drain includes the gateway's backoff)"
    return end


async def fault_ingest_stopped(lab: Lab, gw: Gateway, row: Row) -> int:
    await asyncio.gather(*(w.stop() for w in lab.workers))
    await asyncio.sleep(lab.profile.ingest_down_s)
    end = _now_ms()
    await asyncio.gather(*(w.start() for w in lab.workers))
    row.note = f"both ingest workers stopped {lab.profile.ingest_down_s:g} s (drain includes their start-up)"
    return end


async def fault_db_refusing(lab: Lab, gw: Gateway, row: Row) -> int:
    if lab.store_url.startswith("sqlite:///"):
        lock = sqlite3.connect(lab.db_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # every writer now gets 'database is locked'
        await asyncio.sleep(lab.profile.db_locked_s)
        lock.execute("ROLLBACK")
        lock.close()
        row.note = f"store file exclusively locked {lab.profile.db_locked_s:g} s"
        return _now_ms()
    import asyncpg

    from carbonlink.cloud.store.postgres import split_url

    dsn, schema, _ = split_url(lab.store_url)
    con = await asyncpg.connect(dsn, server_settings={"search_path": f"{schema},public"} if schema else {})
    try:
        async with con.transaction():
            # Writers wait for the lock up to the store's lock_timeout, then count the store as unavailable.
            await con.execute("LOCK TABLE batches IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(lab.profile.db_locked_s)
    finally:
        await con.close()
    row.note = f"batches table locked ACCESS EXCLUSIVE {lab.profile.db_locked_s:g} s"
    return _now_ms()


async def fault_cut_off(lab: Lab, gw: Gateway, row: Row) -> int:
    from carbonlink.edge.outbox import Outbox
    from carbonlink.kernel.wire import Reading

    await gw.proxy.cut()
    await asyncio.sleep(0.5)
    ob = Outbox(gw.outbox, gw.id, synchronous="NORMAL")
    t0 = 1_600_000_000_000
    step = 100_000
    added = _now_ms() - 3_600_000  # buffered an hour ago: the backlog lane
    for start in range(0, lab.profile.buffered, step):
        n = min(step, lab.profile.buffered - start)
        ob.append([Reading("buffered", f"p{i % 10}", t0 + start + i, float(i % 1000), "u")
                   for i in range(n)], added_ms=added)
    ob.close()
    await asyncio.sleep(1.0)
    await gw.proxy.start()
    row.note = f"link cut; {lab.profile.buffered:,} readings buffered, then reconnected"
    return _now_ms()


async def fault_dup_reorder(lab: Lab, gw: Gateway, row: Row) -> int:
    import aiomqtt

    captured: list[bytes] = []
    async with aiomqtt.Client("127.0.0.1", lab.broker.port, identifier=f"spy-{gw.id}") as spy:
        await spy.subscribe(f"cl/faults/{gw.id}/telemetry", qos=1)

        async def capture() -> None:
            async for m in spy.messages:
                captured.append(bytes(m.payload))  # type: ignore[arg-type]

        task = asyncio.create_task(capture())
        await asyncio.sleep(2.0)
        task.cancel()
        replay = captured * 2
        random.shuffle(replay)
        for payload in replay:
            await spy.publish(f"cl/faults/{gw.id}/telemetry", payload, qos=1)
    row.redelivered = len(replay)
    row.note = f"{len(captured)} batches each replayed twice, shuffled"
    return _now_ms()


async def fault_worker_killed(lab: Lab, gw: Gateway, row: Row) -> int:
    await asyncio.sleep(0.5)
    lab.workers[0].kill()
    await asyncio.sleep(3.0)
    end = _now_ms()
    await lab.workers[0].start()
    row.note = "kill -9 of one of two ingest workers (shared subscription), restarted after 3 s"
    return end


FAULTS: dict[str, Callable[[Lab, Gateway, Row], Awaitable[int]]] = {
    "edge kill -9 mid-batch": fault_edge_kill,
    "broker restart": fault_broker_restart,
    "ingest stopped": fault_ingest_stopped,
    "database refusing writes": fault_db_refusing,
    "gateway cut off, buffering": fault_cut_off,
    "duplicated + reordered batches": fault_dup_reorder,
    "one of two ingest workers killed": fault_worker_killed,
}


async def run_profile(profile: Profile, only: list[str] | None = None, progress: bool = False,
                      db: str | None = None) -> list[Row]:
    """Every fault of ``profile`` against a fresh lab; ``db`` a PostgreSQL URL (else a SQLite file in the lab)."""
    from carbonlink.simulators.cems import CemsStack
    from carbonlink.simulators.modbus_host import ModbusDeviceHost

    rows: list[Row] = []
    keep = os.environ.get("CARBONLINK_FAULTS_DIR")  # keep the lab (logs, databases) for a post-mortem
    with tempfile.TemporaryDirectory(prefix="carbonlink-faults-", dir=keep) as d:
        work = Path(d)
        broker = Broker(work)
        broker.start()
        lab = Lab(work, profile, broker, db or f"sqlite:///{work / 'cloud.sqlite'}")
        from carbonlink.cloud.store import open_store

        store = open_store(lab.store_url)
        await store.open()  # migrate once before the workers race to
        await store.close()
        lab.workers = [Proc("ingest", lab.store_url, broker.url, f"ingest-{i}", "faults", log=work / f"ingest-{i}.log")
                       for i in (1, 2)]
        try:
            await asyncio.gather(*(w.start() for w in lab.workers))
            async with ModbusDeviceHost(CemsStack().fill, port=free_port()) as sim:
                lab.modbus_port = sim.port
                for i, (name, fault) in enumerate(FAULTS.items()):
                    if only and not any(o in name for o in only):
                        continue
                    gw = Gateway(lab, f"row{i}")
                    await gw.setup()
                    await gw.proc.start()
                    await _stream(lab)
                    row = Row(name)
                    t0 = time.monotonic()
                    fault_end = await fault(lab, gw, row)
                    row.drain_s = await gw.wait_drained(fault_end)
                    await asyncio.sleep(0.5)
                    rows.append(await gw.finish(row))
                    if progress:
                        print(f"{name}: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        finally:
            for w in lab.workers:
                if w.p is not None:
                    await w.stop()
            broker.kill()
    return rows
