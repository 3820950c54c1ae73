"""The pipelined backlog cutter: the next cut read while this one commits, on two connections.

Each test drains an outbox through it and holds the result to what a cut must be: every backlog reading in
exactly one batch, each batch signed over its own seq, seqs never reused, live rows left alone; also when a
live cut takes a seq in between, a rollup changes the rows under a cut, a batch is trimmed to its byte limit,
or a commit fails.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.backlog_cutter import BacklogCutter
from carbonlink.edge.outbox import KeySigner, Outbox, PreparedCut, StoredBatch
from carbonlink.kernel.wire import Batch, Reading, parse_batch, sign_batch
from tests.edge.outbox.checks import verified_stamps

KEY = Ed25519PrivateKey.generate()
SIGNER = KeySigner(KEY)
T0 = 1_699_999_980_000  # a minute boundary
LIVE = T0 + 10**7  # readings added at or after this are live


def sign(b: Batch) -> Batch:
    return sign_batch(b, KEY)


def filled(tmp_path: Path, n: int = 2000, unit: str = "mg/m3") -> Outbox:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    for start in range(0, n, 250):  # backlog appends with live ones between them
        ob.append([Reading.make("d", f"p{i % 7}", T0 + i, float(i), unit) for i in range(start, min(n, start + 250))],
                  added_ms=T0)
        ob.append([Reading.make("live", "l", LIVE + start, 1.0, "kW")], added_ms=LIVE)
    return ob


def stamps_of(batches: list[StoredBatch]) -> list[int]:
    return verified_stamps(batches, KEY.public_key())


def drain(cutter: BacklogCutter, count: int, size: int, signer: Any = SIGNER, **kw: Any) -> list[StoredBatch]:
    out: list[StoredBatch] = []
    while batch := cutter.cut(count, size, signer, live_after_ms=LIVE, **kw):
        assert len(batch) <= count
        out.extend(batch)
    return out


@pytest.mark.parametrize(("count", "size"), [(1, 300), (3, 300), (4, 777), (10, 2000)])
def test_the_backlog_drains_once_in_seq_order_and_live_rows_stay(tmp_path: Path, count: int, size: int) -> None:
    ob = filled(tmp_path)
    cutter = BacklogCutter(ob)
    batches = drain(cutter, count, size)
    assert sorted(stamps_of(batches)) == list(range(T0, T0 + 2000))  # each reading once, none lost
    assert [b.seq for b in batches] == list(range(1, len(batches) + 1))
    assert all(b.lane == "backlog" and b.n <= size for b in batches)
    assert ob.pending_count("backlog", LIVE) == 0 and ob.pending_count("live", LIVE) == 8
    assert [b.seq for b in ob.unacked(limit=1000)] == [b.seq for b in batches]  # committed, as returned
    cutter.close()
    ob.close()


def test_a_live_cut_taking_the_guessed_seq_makes_the_commit_sign_again(tmp_path: Path) -> None:
    ob = filled(tmp_path)
    cutter = BacklogCutter(ob)
    commit = cutter._writer.commit_cut
    live: list[StoredBatch] = []

    def live_cut_first(cut: PreparedCut, signer: Any) -> StoredBatch | None:
        if (b := ob.cut_batch(1, SIGNER, lane="live", live_after_ms=LIVE)) is not None:
            live.append(b)  # takes the seq the backlog cut was signed under
        return commit(cut, signer)

    cutter._writer.commit_cut = live_cut_first  # type: ignore[method-assign]
    batches = drain(cutter, 4, 300)
    assert len(live) == len(batches) == 7  # a live cut before every commit
    seqs = sorted(b.seq for b in batches + live)
    assert seqs == list(range(1, len(seqs) + 1))  # one sequence, no seq twice
    assert sorted(stamps_of(batches)) == list(range(T0, T0 + 2000))  # signatures hold over the seqs taken
    cutter.close()
    ob.close()


def test_a_rollup_between_read_and_commit_restarts_the_pipeline(tmp_path: Path) -> None:
    ob = filled(tmp_path)
    cutter = BacklogCutter(ob)
    prepare = cutter._reader.prepare_cut
    calls = [0]

    def rollup_after_third(*a: Any, **kw: Any) -> PreparedCut | None:
        cut = prepare(*a, **kw)
        calls[0] += 1
        if calls[0] == 3:
            ob.enforce_quota(1, keep_after_ms=T0 + 1500)  # the raw backlog before it becomes aggregates
        return cut

    cutter._reader.prepare_cut = rollup_after_third  # type: ignore[method-assign]
    batches = drain(cutter, 4, 300)
    readings = [r for b in batches for r in parse_batch(b.payload).readings]
    raw = sorted(r.ts_ms for r in readings if "@" not in r.point)
    counted = sum(int(r.value) for r in readings if r.point.endswith("@1m.n"))
    assert len(raw) == len(set(raw))  # none twice
    assert len(raw) + counted == 2000  # every raw reading either sent or counted in an aggregate
    assert ob.pending_count("backlog", LIVE) == 0
    cutter.close()
    ob.close()


def test_a_trimmed_batch_leaves_its_rest_for_a_later_cut(tmp_path: Path) -> None:
    # Non-ASCII units take the row-by-row path, whose byte estimate is in characters: batches get trimmed
    # after they were read, while the next cut already reads past the rows trimmed off.
    ob = filled(tmp_path, unit="µg/m³ ≈ ppm·k")
    cutter = BacklogCutter(ob)
    batches = drain(cutter, 4, 500, max_bytes=20_000)
    assert all(len(b.payload) <= 20_000 for b in batches)
    stamps = stamps_of(batches)
    assert stamps != sorted(stamps)  # rows trimmed off were cut after the ones read past them
    assert sorted(stamps) == list(range(T0, T0 + 2000))
    cutter.close()
    ob.close()


def test_a_failed_commit_raises_and_keeps_the_batches_before_it(tmp_path: Path) -> None:
    ob = filled(tmp_path)
    cutter = BacklogCutter(ob)
    commit = cutter._writer.commit_cut
    calls = [0]

    def disk_full_on_second(cut: PreparedCut, signer: Any) -> StoredBatch | None:
        calls[0] += 1
        if calls[0] == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return commit(cut, signer)

    cutter._writer.commit_cut = disk_full_on_second  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        cutter.cut(4, 300, SIGNER, live_after_ms=LIVE)
    kept = ob.unacked(limit=10)
    assert [b.seq for b in kept] == [1] and kept[0].n == 300
    rest = drain(cutter, 4, 300)  # the next call goes on from the rows still pending
    assert sorted(stamps_of([*kept, *rest])) == list(range(T0, T0 + 2000))
    cutter.close()
    ob.close()


def test_another_signer_takes_the_row_path(tmp_path: Path) -> None:
    ob = filled(tmp_path, n=900)
    cutter = BacklogCutter(ob)
    batches = drain(cutter, 3, 200, signer=sign)
    assert sorted(stamps_of(batches)) == list(range(T0, T0 + 900))
    cutter.close()
    ob.close()


def test_one_batch_a_call_is_a_plain_cut_with_no_second_connection_or_thread(tmp_path: Path) -> None:
    ob = filled(tmp_path)
    cutter = BacklogCutter(ob)

    def not_used(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a one-batch call has nothing to overlap")

    cutter._reader.prepare_cut = not_used  # type: ignore[method-assign]
    cutter._commits.submit = not_used  # type: ignore[method-assign]
    batches = drain(cutter, 1, 300)
    assert sorted(stamps_of(batches)) == list(range(T0, T0 + 2000))
    cutter.close()
    ob.close()
