"""Batches the cloud refuses are quarantined, never deleted: listed, re-sent under a new seq, or dropped on purpose."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from carbonlink.cloud.ingest import IngestService
from carbonlink.cloud.store import Store
from carbonlink.commands.edge import edge_app
from carbonlink.edge.identity import load_or_create_key, public_key_hex
from carbonlink.edge.outbox import KeySigner, Outbox
from carbonlink.edge.uplink import DeliveryPolicy, Uplink
from carbonlink.kernel.events import parse_event, verify_event
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import Reading, parse_batch, verify_batch
from tests.cloud.store.conftest import throwaway_store
from tests.services import own_mosquitto

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SIGN = KeySigner(KEY)
T0 = 1_700_000_000_000


def readings(n: int, start: int = 0, point: str = "p") -> list[Reading]:
    return [Reading.make("d", point, T0 + start + i, float(i), "u") for i in range(n)]


def uplink(ob: Outbox, **kw: int) -> Uplink:
    return Uplink(ob, GatewayTopics("s", ob.gateway_id), "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy(),
                  **kw)


def test_a_refused_batch_moves_to_the_quarantine_with_reason_and_event(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append(readings(3))
    b = ob.cut_batch(10, SIGN)
    assert b is not None
    up = uplink(ob)
    up.handle_ack(json.dumps({"seq": b.seq, "status": "rejected", "reason": "gateway 'gw-1' is revoked"}).encode())
    assert ob.unacked_count() == (0, 0) and up.counters.batches_refused == 1
    [q] = ob.quarantined()
    assert (q.seq, q.n, q.reason, q.payload) == (b.seq, 3, "gateway 'gw-1' is revoked", b.payload)  # as it was sent
    [event] = ob.events()
    assert event.kind == "outbox.quarantined" and event.severity == "warning"
    assert event.body["seq"] == b.seq and event.body["readings"] == 3 and "revoked" in event.body["reason"]
    # The event leaves signed; the cloud's parser and verifier accept it.
    raw = SIGN.event(event).to_bytes()
    verify_event(parse_event(raw), KEY.public_key(), raw)
    # A repeated refusal finds nothing to move and changes nothing.
    up.handle_ack(json.dumps({"seq": b.seq, "status": "rejected", "reason": "again"}).encode())
    assert len(ob.quarantined()) == 1 and up.counters.batches_refused == 1
    # The cloud's ack for the event removes it; a repeat ack is harmless.
    up.handle_ack(json.dumps({"event": event.id, "status": "committed"}).encode())
    up.handle_ack(json.dumps({"event": event.id, "status": "duplicate"}).encode())
    assert ob.events() == [] and up.counters.events_acked == 1


def test_the_quarantine_is_bounded_keeps_the_oldest_and_overflows_loudly(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    up = uplink(ob, quarantine_max=2)
    for i in range(4):
        ob.append(readings(2, 10 * i))
        b = ob.cut_batch(10, SIGN)
        assert b is not None
        up.handle_ack(json.dumps({"seq": b.seq, "status": "rejected", "reason": f"no {i}"}).encode())
    assert [q.reason for q in ob.quarantined()] == ["no 0", "no 1"]
    assert ob.metrics()["quarantine_overflow"] == 2 and up.counters.quarantine_overflow == 2
    kinds = [e.kind for e in ob.events()]
    assert kinds == ["outbox.quarantined"] * 2 + ["outbox.quarantine_full"] * 2
    assert ob.events()[-1].severity == "critical" and ob.events()[-1].body["dropped_total"] == 2
    assert sum("quarantine is FULL" in r.getMessage() for r in caplog.records) == 2


def test_resend_re_signs_under_a_new_sequence(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append(readings(5))
    b = ob.cut_batch(10, SIGN)
    assert b is not None
    ob.quarantine(b.seq, "seq 1 was already committed with different content", max_entries=10)
    ob.append(readings(1, 100))
    assert ob.cut_batch(10, SIGN) is not None  # seq 2 meanwhile
    [q] = ob.quarantined()
    again = ob.resend_quarantined(q.id, SIGN)
    assert again.seq == 3 and ob.next_seq() == 4 and ob.quarantined() == []
    parsed = parse_batch(again.payload)
    verify_batch(parsed, KEY.public_key(), again.payload)
    assert parsed.seq == 3 and parsed.readings == parse_batch(b.payload).readings
    assert [u.seq for u in ob.unacked()] == [2, 3]
    with pytest.raises(KeyError):
        ob.resend_quarantined(q.id, SIGN)


def gateway_files(tmp_path: Path, mqtt: str = "mqtt://127.0.0.1:1883") -> Path:
    cfg = {"gateway": {"id": "gw-q", "site": "s1", "key_file": "gw.key", "data_dir": "edge"},
           "mqtt": {"url": mqtt}, "devices": []}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_lists_resends_and_drops(tmp_path: Path) -> None:
    config = gateway_files(tmp_path)
    key = load_or_create_key(tmp_path / "gw.key")
    runner = CliRunner()
    missing = runner.invoke(edge_app, ["quarantine", "list", "--config", str(config)])
    assert missing.exit_code == 2 and "has no outbox yet" in missing.output
    ob = Outbox(tmp_path / "edge" / "outbox.sqlite", "gw-q")
    for i in range(3):
        ob.append(readings(4, 10 * i))
        b = ob.cut_batch(10, KeySigner(key))
        assert b is not None
        ob.quarantine(b.seq, f"refused {i}", max_entries=10)
    ob.close()
    listed = runner.invoke(edge_app, ["quarantine", "list", "--config", str(config), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["seq"], r["readings"], r["reason"]) for r in rows] == [
        (1, 1, 4, "refused 0"), (2, 2, 4, "refused 1"), (3, 3, 4, "refused 2")]
    table = runner.invoke(edge_app, ["quarantine", "list", "--config", str(config)])
    assert table.exit_code == 0 and "refused 1" in table.output and "3 batch(es) in quarantine" in table.output
    assert runner.invoke(edge_app, ["quarantine", "resend", "--config", str(config)]).exit_code == 2
    one = runner.invoke(edge_app, ["quarantine", "resend", "2", "--config", str(config)])
    assert one.exit_code == 0 and "queued again as seq 4" in one.output, one.output
    declined = runner.invoke(edge_app, ["quarantine", "drop", "1", "--config", str(config)], input="n\n")
    assert declined.exit_code == 1
    dropped = runner.invoke(edge_app, ["quarantine", "drop", "1", "--config", str(config)], input="y\n")
    assert dropped.exit_code == 0 and "dropped quarantined batch 1" in dropped.output
    rest = runner.invoke(edge_app, ["quarantine", "resend", "--all", "--config", str(config)])
    assert rest.exit_code == 0 and "queued again as seq 5" in rest.output
    assert runner.invoke(edge_app, ["quarantine", "resend", "9", "--config", str(config)]).exit_code == 1
    ob = Outbox(tmp_path / "edge" / "outbox.sqlite", "gw-q")
    try:
        assert ob.quarantined() == [] and [b.seq for b in ob.unacked()] == [4, 5]
        for b in ob.unacked():
            verify_batch(parse_batch(b.payload), key.public_key(), b.payload)
        assert [e.kind for e in ob.events()] == ["outbox.quarantine_dropped"]
    finally:
        ob.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_conflicting_seq_is_quarantined_then_resent_and_committed(tmp_path: Path, kind: str) -> None:
    """The cloud holds seq 1 from an outbox this gateway lost; the fresh outbox's seq 1 is refused and
    quarantined (with an event the cloud stores), and the operator's resend commits it under a new seq."""
    with own_mosquitto() as (_, port, _):
        await conflict_then_resend(tmp_path, kind, f"mqtt://127.0.0.1:{port}")


async def conflict_then_resend(tmp_path: Path, kind: str, mqtt: str) -> None:
    async with throwaway_store(kind, tmp_path) as store:
        await store.registry.register_gateway("gw-q", "s1", "ed25519", public_key_hex(KEY))
        old = Outbox(tmp_path / "old.sqlite", "gw-q")
        old.append(readings(2, 0, "old"))
        first = old.cut_batch(10, SIGN)
        assert first is not None
        ingest = IngestService(store, mqtt, client_id="ingest-q-" + kind)
        ingest_task = asyncio.create_task(ingest.run())
        ob = Outbox(tmp_path / "new.sqlite", "gw-q")
        up = Uplink(ob, GatewayTopics("s1", "gw-q"), mqtt, sign=SIGN, policy=DeliveryPolicy(), ack_timeout=5)
        try:
            await asyncio.wait_for(ingest.connected.wait(), 10)
            await ingest.processor.handle("cl/s1/gw-q/telemetry", first.payload)
            ob.append(readings(3, 0, "new"))
            assert ob.cut_batch(10, SIGN) is not None  # seq 1 again, other content
            up_task = asyncio.create_task(up.run())
            await until(lambda: ob.quarantined() != [] and ob.events() == [])
            [q] = ob.quarantined()
            assert q.seq == 1 and "different content" in q.reason
            assert await count(store, "SELECT count(*) FROM events WHERE kind = 'outbox.quarantined'") == 1
            again = ob.resend_quarantined(q.id, SIGN)
            await until(lambda: ob.unacked_count() == (0, 0))
            assert again.seq == 2
            assert await count(store, "SELECT count(*) FROM readings") == 5  # 2 old + 3 new, none twice
            up_task.cancel()
            await asyncio.gather(up_task, return_exceptions=True)
        finally:
            ingest_task.cancel()
            await asyncio.gather(ingest_task, return_exceptions=True)
            ob.close()
            old.close()


async def until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(15):
        while not cond():
            await asyncio.sleep(0.05)


async def count(store: Store, sql: str) -> int:
    return int(await store.db.fetchval(sql))
