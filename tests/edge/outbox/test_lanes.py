"""The live lane found through arrivals (outbox migration 6), with no per-reading index on pending.

The lanes are defined by each row's added_ms: live at or after the cutoff, backlog before it. These tests
hold the outbox's answers to that definition, computed by brute force over the table, while the clock steps
back, spilled and salvaged rows come in with old times and rollups insert aggregates at new ids.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.outbox import _MIGRATIONS, KeySigner, Outbox
from carbonlink.kernel.wire import Batch, Reading, parse_batch, sign_batch
from tests.edge.outbox.old_files import outbox_at_version

KEY = Ed25519PrivateKey.generate()
T0 = 1_699_999_980_000  # a minute boundary


def sign(b: Batch) -> Batch:
    return sign_batch(b, KEY)


def by_definition(ob: Outbox, cutoff: int) -> tuple[int, int | None, int]:
    """(live count, oldest live added_ms, backlog count) straight from each row's added_ms."""
    live, oldest = ob.db.execute("SELECT count(*), min(added_ms) FROM pending WHERE added_ms >= ?",
                                 (cutoff,)).fetchone()
    backlog = ob.db.execute("SELECT count(*) FROM pending WHERE added_ms < ?", (cutoff,)).fetchone()[0]
    return int(live), oldest, int(backlog)


def live_rows(ob: Outbox, cutoff: int, limit: int) -> list[tuple[str, int]]:
    return [(r[0], r[1]) for r in ob.db.execute(
        "SELECT point, ts_ms FROM pending WHERE added_ms >= ? ORDER BY id LIMIT ?", (cutoff, limit))]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_lanes_match_their_definition_through_random_writes_cuts_and_rollups(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    clock, ts, acked = T0, T0, 0
    for step in range(300):
        op = rng.random()
        if op < 0.45:  # a poll: the clock mostly moves on, sometimes steps back (NTP)
            clock += rng.choice([1000, 1000, 5000, -3000, 0])
            n = rng.randint(1, 30)
            ob.append([Reading.make("d", f"p{i % 3}", ts + i * 10, float(i), "u") for i in range(n)], added_ms=clock)
            ts += n * 10
        elif op < 0.55:  # the spill imported: readings first accepted a while ago
            n = rng.randint(1, 10)
            ob.append_spilled([(Reading.make("d", "s", ts + i * 10, 1.0, "u"), clock - rng.randint(0, 60_000))
                               for i in range(n)])
            ts += n * 10
        elif op < 0.62:  # over quota: raw backlog rolled up, aggregates inserted at new ids with old times
            ob.enforce_quota(1, keep_after_ms=clock - rng.randint(0, 40_000), chunk=rng.randint(5, 40))
        elif op < 0.9:
            lane = rng.choice(["live", "backlog", "any"])
            cutoff = clock - rng.randint(0, 30_000)
            expected = live_rows(ob, cutoff, 25) if lane == "live" else None
            b = ob.cut_batch(25, KeySigner(KEY) if rng.random() < 0.5 else sign, lane=lane,  # type: ignore[arg-type]
                             live_after_ms=cutoff)
            if expected is not None:
                got = [] if b is None else [(r.point, r.ts_ms) for r in parse_batch(b.payload).readings]
                assert got == expected, f"step {step}: the live cut took other rows than the live lane's first"
        else:
            for stored in ob.unacked(limit=3):
                acked += ob.ack(stored.seq)
        for cutoff in (clock - 40_000, clock - 5000, clock, clock + 1):
            live, oldest, backlog = by_definition(ob, cutoff)
            assert ob.pending_count("live", cutoff) == live, f"step {step}, cutoff {cutoff - clock:+}"
            assert ob.pending_summary("live", cutoff) == (live, oldest)
            assert ob.pending_count("backlog", cutoff) == backlog
    while (b := ob.cut_batch(500, sign)) is not None:
        acked += ob.ack(b.seq)
    for stored in ob.unacked(limit=1000):
        acked += ob.ack(stored.seq)
    assert ob.pending_count() == 0 and ob.unacked_count() == (0, 0) and acked > 0
    # Arrivals are only kept while a pending row needs them: none once everything is cut.
    assert ob.db.execute("SELECT count(*) FROM arrivals").fetchone()[0] == 0
    ob.close()


def test_arrivals_stay_few_while_a_backlog_drains(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    for k in range(200):  # 200 polls of 10 readings, an hour ago
        ob.append([Reading.make("d", f"p{i}", T0 + k * 1000 + i, 1.0, "u") for i in range(10)], added_ms=T0 + k * 1000)
    assert ob.db.execute("SELECT count(*) FROM arrivals").fetchone()[0] == 200
    for _ in range(10):
        b = ob.cut_batch(100, sign, lane="backlog", live_after_ms=T0 + 10**7)
        assert b is not None
    left = ob.db.execute("SELECT count(*) FROM arrivals").fetchone()[0]
    assert left == 100  # the polls whose readings were cut are forgotten with them
    ob.close()


def test_live_lane_queries_read_a_rowid_range_never_the_backlog(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d", "old", T0 + i, 1.0, "u") for i in range(2000)], added_ms=T0)
    ob.append([Reading.make("d", "new", T0 + 10**6 + i, 1.0, "u") for i in range(5)], added_ms=T0 + 10**6)
    statements: list[str] = []
    ob.db.set_trace_callback(statements.append)
    assert ob.pending_count("live", T0 + 1) == 5 and ob.pending_summary("live", T0 + 1) == (5, T0 + 10**6)
    b = ob.cut_batch(100, KeySigner(KEY), lane="live", live_after_ms=T0 + 1)
    ob.db.set_trace_callback(None)
    assert b is not None and b.n == 5
    plans = []
    for sql in statements:
        if "FROM pending" in sql and "added_ms >=" in sql:  # the live lane's own queries
            plans.append(" ".join(r[3] for r in ob.db.execute("EXPLAIN QUERY PLAN " + sql)))
    assert plans and all("INTEGER PRIMARY KEY (rowid>?" in p or "rowid>? AND rowid<?" in p for p in plans), plans
    # And there is no per-reading index to keep up to date on pending.
    assert [r[0] for r in ob.db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'pending' AND sql IS NOT NULL")] == []
    ob.close()


def test_a_version_5_outbox_gains_arrivals_that_find_its_live_rows(tmp_path: Path) -> None:
    """A file from before migration 6 (per-reading indexes, no arrivals), where the clock stepped back: a
    live row sits below a backlog one. After the migration the lanes are exactly what they were."""
    path = tmp_path / "o.sqlite"
    old = outbox_at_version(path, 5)
    rows = [("d", "a", T0, 1.0, "u", "N", T0 + 50_000),  # live
            ("d", "b", T0 + 1, 2.0, "u", "N", T0),  # backlog, stored after it (the clock stepped back)
            ("d", "c", T0 + 2, 3.0, "u", "N", T0 + 60_000),  # live
            ("d", "e", T0 + 3, 4.0, "u", "N", T0 + 10)]  # backlog
    old.executemany("INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
                    rows)
    old.close()
    ob = Outbox(path, "gw-1")
    assert ob.db.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
    names = {r[0] for r in ob.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "pending_added" not in names and "pending_ts" not in names and "arrivals_added" in names
    cutoff = T0 + 40_000
    assert ob.pending_count("live", cutoff) == 2 and ob.pending_count("backlog", cutoff) == 2
    live = ob.cut_batch(10, KeySigner(KEY), lane="live", live_after_ms=cutoff)
    assert live is not None and [r.point for r in parse_batch(live.payload).readings] == ["a", "c"]
    backlog = ob.cut_batch(10, KeySigner(KEY), lane="backlog", live_after_ms=cutoff)
    assert backlog is not None and [r.point for r in parse_batch(backlog.payload).readings] == ["b", "e"]
    ob.close()


def test_the_rollup_goes_on_past_late_readings_whose_aggregate_already_left(tmp_path: Path) -> None:
    """Late raw readings for a minute whose aggregate was already sent stay raw (their identity differs, so
    nothing is lost or counted twice) and the rollup carries on with the readings stored after them."""
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d", "p", T0 + s * 1000, float(s), "u") for s in range(60)], added_ms=T0)
    ob.enforce_quota(1, keep_after_ms=T0 + 1)
    sent = ob.cut_batch(10, sign)
    assert sent is not None and {r.point for r in parse_batch(sent.payload).readings} == {"p@1m", "p@1m.n"}
    ob.ack(sent.seq)
    late = [Reading.make("d", "p", T0 + 500 + s, 7.0, "u") for s in range(30)]  # the first minute again
    later = [Reading.make("d", "p", T0 + 60_000 + s * 1000, 1.0, "u") for s in range(120)]
    ob.append(late + later, added_ms=T0)
    report = ob.enforce_quota(1, keep_after_ms=T0 + 1, chunk=10)
    assert report is not None and report.raw == 120 and report.aggregates == 4
    left = sorted((r[0], r[1]) for r in ob.db.execute("SELECT point, ts_ms FROM pending"))
    assert [t for p, t in left if p == "p"] == [r.ts_ms for r in late]
    assert [(p, t) for p, t in left if p != "p"] == [("p@1m", T0 + 60_000), ("p@1m", T0 + 120_000),
                                                     ("p@1m.n", T0 + 60_000), ("p@1m.n", T0 + 120_000)]
    counts = {t: v for p, t, v in ob.db.execute("SELECT point, ts_ms, value FROM pending WHERE point = 'p@1m.n'")}
    assert counts == {T0 + 60_000: 60.0, T0 + 120_000: 60.0}
    ob.close()


def test_a_backlog_cut_of_stored_ascii_texts_is_joined_by_sqlite_in_one_statement(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    readings = [Reading.make("stack", f"p{i % 4}", T0 + i, i / 7, "mg/m3") for i in range(300)]
    ob.append(readings, added_ms=T0)
    statements: list[str] = []
    ob.db.set_trace_callback(statements.append)
    b = ob.cut_batch(200, KeySigner(KEY), lane="backlog", live_after_ms=T0 + 1)
    ob.db.set_trace_callback(None)
    assert b is not None and b.n == 200
    assert b.payload == sign_batch(Batch("gw-1", b.seq, parse_batch(b.payload).created_ms, tuple(readings[:200])),
                                   KEY).to_bytes()
    reads = [s for s in statements if "FROM pending" in s and s.lstrip().startswith("SELECT")
             and "wire" in s]
    assert len(reads) == 1 and "group_concat" in reads[0]  # not the row-by-row path
    ob.close()
