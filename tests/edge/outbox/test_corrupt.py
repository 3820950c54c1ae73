"""A broken outbox loses nothing it can still read: set aside (kept), salvaged, numbering never reused."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.ingest import IngestService
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.identity import load_or_create_key, public_key_hex
from carbonlink.edge.outbox import KeySigner, Outbox, OutboxCorrupt, SeqLease, _salvage
from carbonlink.kernel.wire import Reading, parse_batch
from tests.cloud.store.conftest import throwaway_store
from tests.services import ROOT, own_mosquitto

SIGN = KeySigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
T0 = 1_700_000_000_000
CLOCK = 1_790_000_000_000  # 2026-09-21T…: the injected wall clock


def fill(path: Path, n: int = 20_000, batches: int = 5) -> set[tuple[str, str, int, float]]:
    ob = Outbox(path, "gw-1")
    rs = [Reading.make("d", f"p{i % 7}", T0 + i, float(i % 997), "u") for i in range(n)]
    ob.append(rs)
    for _ in range(batches):
        assert ob.cut_batch(500, SIGN) is not None
    ob.checkpoint()
    ob.close()
    return {(r.device, r.point, r.ts_ms, r.value) for r in rs}


def smash(path: Path, seed: int, pages: int = 3, *, header: bool = False) -> None:
    """Seeded random bytes over a few pages (never the header unless asked), as a failing SD card writes."""
    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if header:
            f.seek(0)
            f.write(rng.randbytes(100))
            return
        for _ in range(pages):
            f.seek(rng.randrange(2, size // 4096) * 4096 + rng.randrange(0, 2000))
            f.write(rng.randbytes(1500))


def contents(ob: Outbox) -> list[tuple[str, str, int, float]]:
    rows = [tuple(r) for r in ob.db.execute("SELECT device, point, ts_ms, value FROM pending")]
    for b in ob.unacked(limit=10_000):
        rows.extend((r.device, r.point, r.ts_ms, r.value) for r in parse_batch(b.payload).readings)
    return rows  # type: ignore[return-value]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_bytes_over_pages_set_aside_and_salvage(tmp_path: Path, seed: int,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "outbox.sqlite"
    made = fill(path)
    smash(path, seed)
    damaged = path.read_bytes()
    with pytest.raises(OutboxCorrupt, match=r"outbox .* is corrupt"):
        Outbox(path, "gw-1", recover=False)  # tools that only look never move anything
    assert path.read_bytes() == damaged
    with caplog.at_level(logging.WARNING, logger="carbonlink.edge.outbox"):
        ob = Outbox(path, "gw-1", clock=lambda: CLOCK)
    reset = ob.reset
    assert reset is not None and reset.moved_to.name == "outbox.corrupt-20260921T141320Z.sqlite"
    assert reset.moved_to.read_bytes() == damaged  # kept as it was, never deleted
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage() and str(reset.moved_to) in errors[0].getMessage()
    # Numbering continues above the lease: the 5 batches the old file cut (1..5) are never reused.
    assert reset.next_seq == SeqLease.BLOCK + 1 == ob.next_seq() and reset.seq_source == "lease"
    salvaged = contents(ob)
    assert len(salvaged) == reset.salvaged_readings > len(made) // 2
    assert set(salvaged) <= made  # nothing invented
    [event] = ob.events()
    assert event.kind == "outbox.reset" and event.severity == "critical"
    assert event.body["salvaged_readings"] == reset.salvaged_readings
    ob.close()
    again = Outbox(path, "gw-1")  # the fresh outbox is healthy: no second reset
    assert again.reset is None and again.next_seq() == reset.next_seq
    again.close()


def test_a_corrupt_header_without_a_lease_continues_above_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    fill(path)
    (tmp_path / "outbox.sqlite.seq").unlink()  # an outbox from before leases
    smash(path, 7, header=True)
    ob = Outbox(path, "gw-1", clock=lambda: CLOCK)
    assert ob.reset is not None and "not a database" in ob.reset.reason
    assert ob.reset.seq_source == "clock" and ob.next_seq() == CLOCK and ob.reset.salvaged_readings == 0
    assert SeqLease(tmp_path / "outbox.sqlite.seq").read() == CLOCK - 1 + SeqLease.BLOCK
    ob.close()


def test_the_lease_is_extended_ahead_of_use_and_a_lost_outbox_continues_above_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SeqLease, "BLOCK", 4)
    path = tmp_path / "outbox.sqlite"
    ob = Outbox(path, "gw-1")
    lease = SeqLease(tmp_path / "outbox.sqlite.seq")
    assert lease.read() == 4
    for i in range(6):
        ob.append([Reading.make("d", "p", T0 + i, 1.0, "u")])
        b = ob.cut_batch(10, SIGN)
        assert b is not None and (lease.read() or 0) >= b.seq
    assert lease.read() == 8  # seq 5 took a new block: 5..8
    ob.close()
    for f in tmp_path.glob("outbox.sqlite*"):
        if not f.name.endswith(".seq"):
            f.unlink()  # the outbox is gone (deleted by hand, a new card), the lease is not
    ob = Outbox(path, "gw-1")
    assert ob.next_seq() == 9
    ob.close()
    (tmp_path / "outbox.sqlite.seq").write_text("garbage")  # a damaged lease is ignored, loudly
    assert lease.read() is None


def test_a_failing_store_spills_readings_and_takes_them_back(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(
        {"gateway": {"id": "gw-1", "site": "s", "key_file": "gw.key", "data_dir": "edge"},
         "anomaly": {"enabled": False}}))  # a ramp of test values is not what these tests are about
    agent = EdgeAgent(load_gateway_config(tmp_path / "gateway.yaml"))
    rs = [Reading.make("d", "p", T0 + i, float(i), "u") for i in range(3000)]

    async def feed(part: list[Reading]) -> None:
        for i in range(0, len(part), 100):
            await agent._accept(part[i:i + 100])

    # A full disk, for real: SQLite refuses to grow the file past max_page_count (SQLITE_FULL).
    pages = agent.outbox.db.execute("PRAGMA page_count").fetchone()[0]
    agent.outbox.db.execute(f"PRAGMA max_page_count = {pages}")
    with caplog.at_level(logging.INFO):
        asyncio.run(feed(rs[:2000]))
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "not a device" in errors[0].getMessage()
        assert "full" in errors[0].getMessage() and errors[0].name == "carbonlink.edge.agent"
        assert agent.store_health.spilled > 0 and agent.store_health.refused == 0
        assert agent.spill.path.exists()
        agent.outbox.db.execute("PRAGMA max_page_count = 1073741823")  # space again
        agent.store_health.next_try = 0
        asyncio.run(feed(rs[2000:]))
    assert any("stores readings again" in r.getMessage() for r in caplog.records)
    assert not agent.spill.path.exists() and agent.store_health.failing is None
    stored = [tuple(r) for r in agent.outbox.db.execute("SELECT ts_ms FROM pending ORDER BY ts_ms")]
    assert stored == [(r.ts_ms,) for r in rs]  # every reading, once, none lost
    assert [e.kind for e in agent.outbox.events()] == ["outbox.store_failed"]
    agent.outbox.close()


class Child:
    def __init__(self, config: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.log = open(config.parent / "edge.log", "ab")  # closed when the child is done
        self.p = subprocess.Popen([sys.executable, "-m", "tests.edge.outbox.agent_child", str(config)], cwd=ROOT,
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log)
        assert self.line() == "ready"

    def line(self) -> str:
        assert self.p.stdout is not None
        return self.p.stdout.readline().decode().strip()

    def feed(self, ts: int, n: int) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(f"feed {ts} {n}\n".encode())
        self.p.stdin.flush()
        assert self.line() == "fed"


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_kill_corrupt_restart_loses_and_doubles_nothing_in_the_cloud(tmp_path: Path, kind: str) -> None:
    with own_mosquitto() as (_, port, _):
        await kill_corrupt_restart(tmp_path, kind, f"mqtt://127.0.0.1:{port}")


async def kill_corrupt_restart(tmp_path: Path, kind: str, mqtt: str) -> list[int]:
    gw = tmp_path / "gw"
    gw.mkdir()
    config = gw / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-c", "site": "s1", "key_file": "gw.key", "data_dir": "edge"},
        "mqtt": {"url": mqtt, "ack_timeout_s": 2, "keepalive_s": 5},
        "batch": {"max_readings": 200, "max_age_s": 0.1}, "outbox": {"synchronous": "NORMAL"}}))
    key = load_or_create_key(gw / "gw.key")
    async with throwaway_store(kind, tmp_path) as store:
        await store.registry.register_gateway("gw-c", "s1", "ed25519", public_key_hex(key))

        async def stored() -> list[int]:
            return [int(r["ts_ms"]) for r in await store.db.fetch("SELECT ts_ms FROM readings ORDER BY ts_ms")]

        async def until_stored(n: int) -> None:
            async with asyncio.timeout(60):
                while len(await stored()) < n:
                    await asyncio.sleep(0.1)

        def start_ingest() -> asyncio.Task[None]:
            return asyncio.create_task(IngestService(store, mqtt, client_id="ingest-c", shared_group="c").run())

        task = start_ingest()
        child = await asyncio.to_thread(Child, config)
        try:
            await asyncio.to_thread(child.feed, T0, 3000)  # phase 1: delivered
            await until_stored(3000)
            task.cancel()  # the cloud is away: phase 2 stays in the outbox, unacked
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.to_thread(child.feed, T0 + 10_000, 6000)
            child.p.send_signal(signal.SIGKILL)
            child.p.wait()
            child.log.close()
            outbox = gw / "edge" / "outbox.sqlite"
            db = sqlite3.connect(outbox)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the damage hits the pages the data is on
            db.close()
            smash(outbox, 11)
            task = start_ingest()
            child = await asyncio.to_thread(Child, config)  # sets the file aside, salvages, carries on
            await asyncio.to_thread(child.feed, T0 + 20_000, 3000)  # phase 3: after the damage
            child.p.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(child.line) == "drained"
            child.p.wait()
            await asyncio.sleep(0.5)
        finally:
            if child.p.poll() is None:
                child.p.kill()
            child.log.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        ts = await stored()
        assert len(ts) == len(set(ts)), "a reading is stored twice"
        assert await store.db.fetchval("SELECT count(*) FROM dead_letters") == 0  # no seq was reused
        phase1 = [t for t in ts if t < T0 + 10_000]
        phase2 = [t for t in ts if T0 + 10_000 <= t < T0 + 20_000]
        phase3 = [t for t in ts if t >= T0 + 20_000]
        assert phase1 == list(range(T0, T0 + 3000)) and phase3 == list(range(T0 + 20_000, T0 + 23_000))
        resets = [r["body"] if isinstance(r["body"], dict) else json.loads(r["body"])
                  for r in await store.db.fetch("SELECT body FROM events WHERE kind = 'outbox.reset'")]
        # What was unacked in the damaged file arrives as far as it could be read, nothing invented.
        assert set(phase2) <= set(range(T0 + 10_000, T0 + 16_000))
        # Every reading the damaged file still held readably was salvaged, once, and is stored (with those
        # the broker held for the cloud from before the kill).
        [aside] = [p for p in (gw / "edge").iterdir() if ".corrupt-" in p.name and p.suffix == ".sqlite"]
        salvaged = [r[2] for r in _salvage(aside).readings]
        assert len(salvaged) == len(set(salvaged)) > 0 and set(salvaged) <= set(phase2)
        assert [b["salvaged_readings"] for b in resets] == [len(salvaged)]
    return ts



def test_an_outbox_found_damaged_at_run_time_is_replaced_and_the_spill_taken_back(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(
        {"gateway": {"id": "gw-1", "site": "s", "key_file": "gw.key", "data_dir": "edge"},
         "anomaly": {"enabled": False}}))  # a ramp of test values is not what these tests are about
    agent = EdgeAgent(load_gateway_config(tmp_path / "gateway.yaml"))
    rs = [Reading.make("d", "p", T0 + i, float(i), "u") for i in range(6000)]
    asyncio.run(agent._accept(rs[:4000]))
    path = agent.outbox.path
    agent.outbox.checkpoint()
    smash(path, 5)  # the card fails under the running agent
    agent._store_failed(sqlite3.DatabaseError("database disk image is malformed"))
    agent.store_health.corrupt = True
    asyncio.run(agent._accept(rs[4000:5000]))  # within the second: spilled
    assert agent.store_health.spilled == 1000
    agent.store_health.next_try = 0
    asyncio.run(agent._accept(rs[5000:]))  # the retry replaces the outbox, takes the spill back, stores these
    assert agent.store_health.failing is None and agent.uplink.outbox is agent.outbox
    reset = agent.outbox.reset
    assert reset is not None and reset.moved_to.exists()
    kept = {r[0] for r in agent.outbox.db.execute("SELECT ts_ms FROM pending")}
    assert {r.ts_ms for r in rs[4000:]} <= kept  # everything after the damage, nothing lost
    assert len(kept) - 2000 == reset.salvaged_readings  # plus what the damaged file still held readably
    assert [e.kind for e in agent.outbox.events()] == ["outbox.reset", "outbox.store_failed"]
    agent.outbox.close()


def test_damage_found_while_sending_is_repaired_like_damage_found_while_storing(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(
        {"gateway": {"id": "gw-1", "site": "s", "key_file": "gw.key", "data_dir": "edge"},
         "anomaly": {"enabled": False}}))  # a ramp of test values is not what these tests are about
    agent = EdgeAgent(load_gateway_config(tmp_path / "gateway.yaml"))
    assert agent.uplink.on_store_error is not None
    agent.uplink.on_store_error(sqlite3.OperationalError("database is locked"))  # busy: only retried
    assert agent.store_health.failing is None
    asyncio.run(agent._accept([Reading.make("d", "p", T0 + i, 1.0, "u") for i in range(100)]))
    agent.outbox.checkpoint()
    smash(agent.outbox.path, 9, header=True)
    exc = sqlite3.DatabaseError("file is not a database")
    exc.sqlite_errorcode = sqlite3.SQLITE_NOTADB  # type: ignore[attr-defined]
    agent.uplink.on_store_error(exc)
    assert agent.store_health.corrupt
    agent.store_health.next_try = 0
    asyncio.run(agent._accept([Reading.make("d", "p", T0 + 1000, 1.0, "u")]))
    assert agent.outbox.reset is not None and agent.store_health.failing is None
    assert agent.outbox.pending_count() >= 1
    agent.outbox.close()
