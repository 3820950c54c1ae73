"""One bad message never stops ingest for everyone (issue 10 §1, §7): each message is judged alone.

Every case here failed before: a deep message segfaulted the process once web3 was imported, invalid
UTF-8 inside a string made the group commit retry forever, a validly signed but refused batch got no
ack, and a reading stamped 9999-12-31 pinned its point's latest value.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.api import create_app
from carbonlink.cloud.ingest import IngestProcessor, IngestService, Outcome
from carbonlink.cloud.store import Store, open_store
from carbonlink.commands.faults.fuzz import hostile_messages
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.services import ROOT

KEY = Ed25519PrivateKey.generate()
T0 = 1_767_225_600_000  # 2026-01-01
NOW = T0 + 3_600_000
TOPIC = "cl/site-1/gw-1/telemetry"


@pytest.fixture
def store(any_store: Store) -> Store:
    """Both back ends (the cloud conftest's ``any_store``)."""
    return any_store


def batch(seq: int, readings: list[Reading]) -> bytes:
    return sign_batch(Batch("gw-1", seq, T0, tuple(readings)), KEY).to_bytes()


def ok(seq: int, n: int = 3) -> bytes:
    return batch(seq, [Reading.make("cems-1", f"p{i}", T0 + seq * 1000, 1.0 + i, "mg/m3") for i in range(n)])


async def setup(store: Store) -> tuple[IngestProcessor, list[dict[str, object]]]:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY))
    acks: list[dict[str, object]] = []

    async def publish(topic: str, payload: bytes) -> None:
        acks.append(json.loads(payload))

    return IngestProcessor(store, publish, clock=lambda: NOW), acks


def test_deep_nesting_is_a_dead_letter_even_after_web3_raised_the_recursion_limit(tmp_path: Path) -> None:
    """In its own process: before the fix this segfaulted (the C JSON parser recursing 100,000 deep)."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        import carbonlink.cloud.anchor.proof  # imports web3 and py_ecc, which raise the recursion limit
        from carbonlink.cloud.ingest import IngestProcessor
        from carbonlink.cloud.store import open_store

        async def main():
            async with open_store("sqlite:///{tmp_path / 'c.sqlite'}") as store:
                out = await IngestProcessor(store).handle_many([("{TOPIC}", b"[" * 100_000),
                                                                ("{TOPIC}", b'{{"a":' * 60_000)])
                print(sys.getrecursionlimit(), [o.value for o in out], len(await store.audit.dead_letters()))

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1000", "['rejected',", "'rejected']", "2"]


async def test_invalid_utf8_in_a_string_is_judged_alone(store: Store) -> None:
    p, acks = await setup(store)
    out = await p.handle_many([(TOPIC, ok(1)), (TOPIC, b'{"alg":"\xff","seq":2}'), (TOPIC, ok(3))])
    assert out == [Outcome.COMMITTED, Outcome.REJECTED, Outcome.COMMITTED]
    assert (await store.data.counts())["readings"] == 6
    assert {(a["seq"], a["status"]) for a in acks} == {(1, "committed"), (2, "rejected"), (3, "committed")}
    [letter] = await store.audit.dead_letters()
    assert "UTF-8" in letter["reason"] and letter["size"] == len(b'{"alg":"\xff","seq":2}')


async def test_a_signed_batch_that_breaks_a_rule_gets_a_rejected_ack(store: Store) -> None:
    """The gateway is told why, so it quarantines the batch instead of resending it forever."""
    p, acks = await setup(store)
    obj = json.loads(ok(5))
    obj.pop("sig")
    obj["extra"] = 1
    body = json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()
    signed = json.dumps({**obj, "sig": KEY.sign(body).hex()}, separators=(",", ":"), sort_keys=True).encode()
    nan = ok(6).replace(b'"value":1', b'"value":NaN', 1)
    assert await p.handle_many([(TOPIC, signed), (TOPIC, nan)]) == [Outcome.REJECTED, Outcome.REJECTED]
    by_seq = {a["seq"]: a for a in acks}
    assert by_seq[5]["status"] == "rejected" and "unexpected ['extra']" in str(by_seq[5]["reason"])
    assert by_seq[6]["status"] == "rejected" and "finite" in str(by_seq[6]["reason"])


async def test_readings_outside_the_time_window_are_refused_and_cannot_pin_latest(store: Store) -> None:
    p, acks = await setup(store)
    rs = [Reading.make("cems-1", "so2", T0, 5.0, "mg/m3"),
          Reading.make("cems-1", "so2", 253_402_300_799_000, 9.0, "mg/m3"),  # 9999-12-31
          Reading.make("cems-1", "so2", NOW + 11 * 60_000, 9.5, "mg/m3"),  # 11 minutes ahead: over the skew
          Reading.make("cems-1", "so2", NOW + 5 * 60_000, 6.0, "mg/m3"),  # within the 10-minute skew
          Reading.make("cems-1", "so2", 86_400_000, 1.0, "mg/m3")]  # 1970: before the floor
    assert await p.handle(TOPIC, batch(1, rs)) == Outcome.COMMITTED
    assert acks == [{"seq": 1, "status": "committed", "refused": 3}]
    [latest] = await store.data.latest("cems-1")
    assert latest["value"] == 6.0 and latest["ts_ms"] == NOW + 5 * 60_000
    [letter] = await store.audit.dead_letters()
    assert "3 reading(s)" in letter["reason"] and "9999-12-31" in letter["reason"]
    assert (await store.data.counts())["readings"] == 2


async def test_a_locked_store_holds_the_group_reports_degraded_and_recovers(tmp_path: Path) -> None:
    """The store itself failing: nothing acked meanwhile, /health says 503, everything commits after."""
    path = tmp_path / "cloud.sqlite"
    async with open_store(f"sqlite:///{path}?busy_timeout_ms=100") as store:
        svc = IngestService(store, "mqtt://127.0.0.1:1", clock=lambda: NOW)
        p, acks = await setup(store)
        svc.processor = p
        app = create_app(store, lambda: {"ingest": {"state": svc.state}})
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            task = asyncio.create_task(svc._until_stored(p.handle_many, [(TOPIC, ok(1)), (TOPIC, b"junk")]))
            for _ in range(200):
                if svc.state == "store-retry":
                    break
                await asyncio.sleep(0.02)
            assert svc.state == "store-retry" and acks == [] and not task.done()
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                r = await c.get("/health")
                assert r.status_code == 503 and r.json()["status"] == "degraded"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        await asyncio.wait_for(task, 30)
        assert svc.state == "connected" and svc.counters.store_retries >= 1
        assert {(a["seq"], a["status"]) for a in acks if "seq" in a} == {(1, "committed")}
        assert (await store.data.counts())["readings"] == 3
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            assert (await c.get("/health")).status_code == 200


async def test_every_hostile_kind_becomes_a_dead_letter_and_the_next_batch_commits(store: Store) -> None:
    """The fuzz corpus through the processor (the broker round trip is in test_ingest_fuzz.py)."""
    p, _ = await setup(store)
    hostile = list(hostile_messages(random.Random(11), site="site-1", gateway="gw-1", key=KEY, t0=T0, count=60))
    out = await p.handle_many([(h.topic, h.payload) for h in hostile])
    stored = (await store.data.counts())["readings"]
    assert stored == 0, [h.kind for h, o in zip(hostile, out, strict=True) if o is not Outcome.REJECTED]
    assert await p.handle(TOPIC, ok(7)) == Outcome.COMMITTED
    assert (await store.data.counts())["readings"] == 3


async def test_the_cycle_collector_is_paused_while_a_group_is_judged_and_always_resumed(store: Store) -> None:
    """judge() pauses gc (its garbage is freed by reference counting; collections only rescanned the parser's
    caches) and resumes it however the group ends: judged, a message refused, or the store failing."""
    import gc

    from carbonlink.cloud.store import StoreUnavailable

    proc, _ = await setup(store)
    seen: list[bool] = []
    prepare = proc._prepare

    async def watched(item):  # type: ignore[no-untyped-def]
        seen.append(gc.isenabled())
        return await prepare(item)

    proc._prepare = watched  # type: ignore[method-assign]
    assert gc.isenabled()
    await proc.judge([(TOPIC, ok(1)), (TOPIC, b"not json"), (TOPIC, ok(2))])
    assert seen == [False, False, False] and gc.isenabled()

    async def failing(item):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("the database went away")

    proc._prepare = failing  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await proc.judge([(TOPIC, ok(3))])
    assert gc.isenabled()
    gc.disable()  # a caller that runs without the collector keeps it off
    try:
        proc._prepare = watched  # type: ignore[method-assign]
        await proc.judge([(TOPIC, ok(4))])
        assert not gc.isenabled()
    finally:
        gc.enable()
