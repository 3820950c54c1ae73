"""Grouped acks: a burst of acks forgets its batches in one outbox transaction, with one-by-one semantics."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.outbox import KeySigner, Outbox
from carbonlink.edge.uplink import DeliveryPolicy, Uplink
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import Reading, parse_batch, verify_batch

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SIGN = KeySigner(KEY)
T0 = 1_700_000_000_000
TOPICS = GatewayTopics("s1", "gw-a")


def outbox(path: Path, batches: int, per_batch: int = 2) -> Outbox:
    ob = Outbox(path, "gw-a")
    for i in range(batches):
        ob.append([Reading.make("d", "p", T0 + i * per_batch + k, float(k), "u") for k in range(per_batch)])
        assert ob.cut_batch(per_batch, SIGN) is not None
    return ob


def ack(seq: int, status: str = "committed", **extra: str) -> bytes:
    return json.dumps({"seq": seq, "status": status, **extra}).encode()


def test_ack_many_forgets_every_batch_of_a_burst_in_one_go(tmp_path: Path) -> None:
    ob = outbox(tmp_path / "o.sqlite", 6)
    # Repeats, seqs never issued and seqs no SQLite integer can hold are simply not found.
    assert ob.ack_many([2, 4, 2, 5, 99, 0, -3, 2**70]) == {2: 2, 4: 2, 5: 2}
    assert [b.seq for b in ob.unacked()] == [1, 3, 6]
    assert ob.ack_many([]) == {} and ob.ack(3) == 2 and ob.ack(3) == 0
    assert [b.seq for b in ob.unacked()] == [1, 6]
    ob.close()


def test_ack_many_is_all_or_nothing_across_its_chunks(tmp_path: Path) -> None:
    ob = outbox(tmp_path / "o.sqlite", 620, per_batch=1)
    # A failure deep in the burst (past the first chunk of 500): nothing is forgotten, so nothing is lost.
    ob.db.execute("CREATE TEMP TRIGGER fail BEFORE DELETE ON main.batches WHEN OLD.seq = 600"
                  " BEGIN SELECT RAISE(ABORT, 'power cut'); END")
    with pytest.raises(sqlite3.IntegrityError, match="power cut"):
        ob.ack_many(range(1, 621))
    assert ob.unacked_count() == (620, 620)
    ob.db.execute("DROP TRIGGER fail")
    assert len(ob.ack_many(range(1, 621))) == 620 and ob.unacked_count() == (0, 0)
    ob.close()


def test_a_crash_between_grouped_acks_only_sends_the_unforgotten_batches_again(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = outbox(path, 6)
    payloads = {b.seq: b.payload for b in ob.unacked()}
    up = Uplink(ob, TOPICS, "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy())
    up.handle_acks([ack(1), ack(2), ack(3)])
    ob.close()  # the gateway dies before the next burst (acks for 4 and 5) is applied

    ob = Outbox(path, "gw-a")
    up = Uplink(ob, TOPICS, "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy())
    # After the restart the unforgotten batches are due again, byte for byte: the cloud sees duplicates.
    assert [s for s, _, _ in up._due(0.0, 10)] == [4, 5, 6]
    for seq in (4, 5, 6):
        again = ob.payload(seq)
        assert again == payloads[seq]
        verify_batch(parse_batch(again), KEY.public_key(), again)
    up.handle_acks([ack(4, "duplicate"), ack(5, "duplicate"), ack(6)])
    assert ob.unacked_count() == (0, 0) and up.counters.batches_acked == 3
    ob.close()


def test_a_burst_applies_like_its_acks_one_by_one(tmp_path: Path) -> None:
    ob = outbox(tmp_path / "o.sqlite", 6)
    up = Uplink(ob, TOPICS, "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy(), quarantine_max=10)
    for seq in range(1, 7):
        up._inflight[seq] = (0.0, "backlog")
    up.handle_acks([ack(1), ack(2), b"not json", ack(1, "duplicate"), ack(3, "rejected", reason="bad unit"),
                    ack(4), ack(77)])
    assert [b.seq for b in ob.unacked()] == [5, 6]
    assert [(q.seq, q.reason) for q in ob.quarantined()] == [(3, "bad unit")]
    c = up.counters
    assert (c.batches_acked, c.readings_acked, c.batches_refused) == (3, 6, 1)
    assert (c.unknown_acks, c.bogus_acks) == (3, 2)  # the repeat of 1, the malformed one and 77 (never issued)
    # The window's accounting: only the batches still waiting for their ack are in flight.
    assert sorted(up._inflight) == [5, 6] and up._lane_load("backlog") == 2
    ob.close()


def test_hostile_acks_forget_nothing_and_stop_nothing(tmp_path: Path) -> None:
    """Each is counted as malformed and the burst goes on: before, Infinity and 1e400 raised OverflowError
    out of the receiver, deep nesting RecursionError, and true, 1.9 or an unknown status acked batch 1."""
    ob = outbox(tmp_path / "o.sqlite", 3)
    up = Uplink(ob, TOPICS, "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy(), quarantine_max=10)
    hostile = [b'{"seq":Infinity,"status":"committed"}', b'{"seq":1e400,"status":"committed"}',
               b'{"seq":NaN,"status":"committed"}', b'{"seq":true,"status":"committed"}',
               b'{"seq":1.9,"status":"committed"}', b'{"seq":"1","status":"committed"}',
               b"[" * 3000 + b"]" * 3000, b"[" * 200_000,
               b'{"seq":1,"status":"committed","pad":"' + b"x" * 5000 + b'"}',
               b'{"seq":1,"status":"error"}', b'{"seq":1}', b"[1,2]", b'"ack"', b"\xff\xfe", b""]
    up.handle_acks([*hostile, ack(2)])
    assert [b.seq for b in ob.unacked()] == [1, 3]  # only the well-formed ack took effect
    assert up.counters.bogus_acks == len(hostile) and up.counters.batches_acked == 1
    ob.close()


class _Message:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


class _Messages:
    """aiomqtt's message view as the receiver uses it: an async iterator whose len() is what is queued."""

    def __init__(self, queued: list[_Message]) -> None:
        self.queued = queued

    def __len__(self) -> int:
        return len(self.queued)

    def __aiter__(self) -> AsyncIterator[_Message]:
        return self

    async def __anext__(self) -> _Message:
        if not self.queued:
            raise StopAsyncIteration
        return self.queued.pop(0)


class _Client:
    def __init__(self, queued: list[_Message]) -> None:
        self.messages = _Messages(queued)


async def test_the_receiver_applies_queued_acks_in_one_transaction_and_keeps_other_messages_in_order(
        tmp_path: Path) -> None:
    ob = outbox(tmp_path / "o.sqlite", 5)
    seen: list[tuple[str, int]] = []

    async def on_message(topic: str, payload: bytes) -> None:
        seen.append((topic, ob.unacked_count()[0]))

    up = Uplink(ob, TOPICS, "mqtt://127.0.0.1:1", sign=SIGN, policy=DeliveryPolicy(), on_message=on_message)
    groups: list[list[int]] = []
    ack_many = ob.ack_many

    def spy(seqs: list[int]) -> dict[int, int]:
        groups.append(list(seqs))
        return ack_many(seqs)

    ob.ack_many = spy  # type: ignore[method-assign]
    msgs = [_Message(TOPICS.ack, ack(s)) for s in (1, 2, 3)] + [_Message("shadow/delta", b"{}")] + \
        [_Message(TOPICS.ack, ack(s)) for s in (4, 5)]
    await up._receive(_Client(msgs))  # type: ignore[arg-type]
    # Two bursts, split by the shadow message, which saw the acks that came before it applied.
    assert groups == [[1, 2, 3], [4, 5]]
    assert seen == [("shadow/delta", 2)]
    assert ob.unacked_count() == (0, 0) and up.counters.batches_acked == 5
    ob.close()


def _wal_frames(ob: Outbox) -> int:
    return int(ob.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


@pytest.mark.parametrize("connection", ["main", "cutter"])
def test_an_ack_does_not_write_the_freed_payload_again(tmp_path: Path, connection: str) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-a")
    ob.append([Reading.make("d", f"p{i % 7}", T0 + i, i / 3, "mg/m3") for i in range(3000)])
    db = ob if connection == "main" else ob.second_connection()
    b = db.cut_batch(3000, SIGN)
    assert b is not None and len(b.payload) > 200_000  # about 50 overflow pages of 4 KiB
    ob.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.ack(b.seq) == 3000
    # The row, its page and the freelist's trunk page: not the payload's pages, rewritten as zeros.
    assert _wal_frames(ob) < 10
    assert db.db.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
    if db is not ob:
        db.close()
    ob.close()
