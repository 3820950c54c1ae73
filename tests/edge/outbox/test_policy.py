"""Lanes, quota overflow and bad acks, on the outbox and uplink directly."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.outbox import _MIGRATIONS, KeySigner, Outbox
from carbonlink.edge.uplink import DeliveryPolicy, Uplink
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import Batch, Reading, parse_batch, sign_batch
from tests.edge.outbox.old_files import outbox_at_version

KEY = Ed25519PrivateKey.generate()
T0 = 1_699_999_980_000  # a minute boundary


def sign(b: Batch) -> Batch:
    return sign_batch(b, KEY)


def test_lanes_share_one_increasing_sequence(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d", "p", T0 + i, i, "u") for i in range(100)], added_ms=T0)  # backlog
    ob.append([Reading.make("d", "live", T0 + 10**6 + i, i, "u") for i in range(5)], added_ms=T0 + 10**6)
    live_after = T0 + 10**6 - 1
    assert ob.pending_count("live", live_after) == 5 and ob.pending_count("backlog", live_after) == 100
    live = ob.cut_batch(50, sign, lane="live", live_after_ms=live_after)
    back = ob.cut_batch(60, sign, lane="backlog", live_after_ms=live_after)
    back2 = ob.cut_batch(60, sign, lane="backlog", live_after_ms=live_after)
    assert live and back and back2
    assert (live.seq, back.seq, back2.seq) == (1, 2, 3) and (live.n, back.n, back2.n) == (5, 60, 40)
    assert {r.point for r in parse_batch(live.payload).readings} == {"live"}
    # The backlog replays in order: oldest first, contiguous.
    stamps = [r.ts_ms for b in (back, back2) for r in parse_batch(b.payload).readings]
    assert stamps == [T0 + i for i in range(100)]
    assert ob.pending_count() == 0 and [b.lane for b in ob.unacked()] == ["live", "backlog", "backlog"]


def test_batches_respect_the_byte_limit(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d" * 100, "p" * 100, T0 + i, i, "u") for i in range(3000)])
    sizes = []
    while (b := ob.cut_batch(3000, sign, max_bytes=200_000)) is not None:
        sizes.append(len(b.payload))
    assert len(sizes) > 1 and max(sizes) <= 200_000 and ob.pending_count() == 0


def test_a_batch_is_fitted_to_the_byte_limit_before_it_is_signed(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d" * 100, "p" * 100, T0 + i, i, "u") for i in range(3000)])
    ob.append([Reading.make("d" * 100, "p" * 100, T0 + 10**6 + i, i, "µ" * 32) for i in range(1000)])
    signer, signed = KeySigner(KEY), []
    payload_from = signer.payload_from

    def counted(*args: object) -> bytes:
        signed.append(1)
        return payload_from(*args)  # type: ignore[arg-type]

    signer.payload_from = counted  # type: ignore[method-assign]
    sizes, cuts = [], 0
    while (b := ob.cut_batch(3000, signer, max_bytes=200_000)) is not None:
        sizes.append(len(b.payload))
        cuts += 1
    assert max(sizes) <= 200_000 and min(sizes[:-1]) > 180_000 and ob.pending_count() == 0
    assert cuts < len(signed) <= cuts + 4  # signed once per batch; only the non-ASCII units needed a trim


def test_quota_rolls_oldest_raw_backlog_up_to_minute_means(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    # Three minutes of 1 Hz data on two points, long buffered; plus fresh live data that must stay raw.
    raw = [Reading.make("stack", pt, T0 + s * 1000, float(s % 60) + (10 if pt == "nox" else 0), "mg/m3",
                        "D" if (pt, s) == ("so2", 61) else "N")
           for s in range(180) for pt in ("so2", "nox")]
    ob.append(raw, added_ms=T0)
    ob.append([Reading.make("stack", "so2", T0 + 10**7, 1.0, "mg/m3")], added_ms=T0 + 10**7)
    before = ob.used_bytes()
    assert ob.enforce_quota(before * 10, keep_after_ms=T0 + 1) is None  # under quota: nothing happens
    report = ob.enforce_quota(1, keep_after_ms=T0 + 1, chunk=100)
    assert report is not None and report.raw == 360 and report.aggregates == 12 and report.still_over
    rows = {(r[0], r[1]): (r[2], r[3]) for r in ob.db.execute("SELECT point, ts_ms, value, quality FROM pending")}
    assert rows[("so2@1m", T0)] == (29.5, "N") and rows[("so2@1m.n", T0)] == (60.0, "N")
    assert rows[("nox@1m", T0 + 60_000)] == (39.5, "N")
    assert rows[("so2@1m", T0 + 60_000)][1] == "D"  # the worst flag of the minute is kept
    assert rows[("so2", T0 + 10**7)] == (1.0, "N")  # live data is never rolled up
    assert ob.metrics() == {"rolled_up_raw": 360, "rolled_up_agg": 12, "quota_exceeded": 1,
                            "quarantine_overflow": 0, "quarantined": 0}
    events = ob.events()
    assert events[-1].kind == "outbox.overflow" and events[-1].body["raw"] == 360
    # A late raw reading for a minute already rolled up is merged while its aggregate is still here.
    ob.append([Reading.make("stack", "so2", T0 + 500, 89.5, "mg/m3")], added_ms=T0)
    ob.enforce_quota(1, keep_after_ms=T0 + 1)
    rows = {(r[0], r[1]): r[2] for r in ob.db.execute("SELECT point, ts_ms, value FROM pending")}
    assert rows[("so2@1m.n", T0)] == 61.0 and abs(rows[("so2@1m", T0)] - (29.5 * 60 + 89.5) / 61) < 1e-9
    # Sum of counts = raw readings replaced: nothing dropped.
    total = sum(v for (p, _), v in rows.items() if p.endswith("@1m.n"))
    assert total == 361


def test_over_quota_the_stored_wire_texts_go_before_any_raw_reading_is_rolled_up(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    raw = [Reading.make("stack", "so2", T0 + s * 1000, s / 7, "mg/m3") for s in range(5000)]
    ob.append(raw, added_ms=T0)
    texts = int(ob.db.execute("SELECT count(*) FROM wire").fetchone()[0])
    assert texts == 5000
    assert ob.enforce_quota(int(ob.used_bytes() * 0.8), keep_after_ms=T0 + 1, chunk=500) is None
    left = int(ob.db.execute("SELECT count(*) FROM wire").fetchone()[0])
    assert 0 < left < texts and ob.metrics()["rolled_up_raw"] == 0 and ob.pending_count() == 5000
    assert ob.db.execute("SELECT min(id) FROM wire").fetchone()[0] > ob.db.execute(
        "SELECT min(id) FROM pending").fetchone()[0]  # the oldest readings' texts went first
    b = ob.cut_batch(5000, KeySigner(KEY))  # rendered and stored texts side by side: the same bytes
    assert b is not None and b.n == 5000
    assert b.payload == sign_batch(Batch("gw-1", b.seq, parse_batch(b.payload).created_ms, tuple(raw)), KEY).to_bytes()
    assert ob.db.execute("SELECT count(*) FROM wire").fetchone()[0] == 0


def test_bad_acks_change_nothing(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d", "p", T0, 1.0, "u")])
    b = ob.cut_batch(10, sign)
    assert b is not None
    up = Uplink(ob, GatewayTopics("s", "gw-1"), "mqtt://127.0.0.1:1", sign=sign, policy=DeliveryPolicy())
    up.handle_ack(b'{"seq": 99, "status": "committed"}')  # never issued
    up.handle_ack(b"not json")
    up.handle_ack(b'{"seq": "x"}')
    assert ob.unacked_count() == (1, 1) and up.counters.bogus_acks == 3 and up.counters.readings_acked == 0
    assert (ob.events()[-1].kind, ob.events()[-1].body) == ("uplink.unknown_ack", {"next_seq": 2, "seq": 99})
    up.handle_ack(json.dumps({"seq": b.seq, "status": "committed"}).encode())
    up.handle_ack(json.dumps({"seq": b.seq, "status": "duplicate"}).encode())  # a repeat: harmless
    assert ob.unacked_count() == (0, 0) and up.counters.readings_acked == 1
    assert up.counters.unknown_acks == 4 and up.counters.bogus_acks == 3


def test_key_signer_writes_the_same_bytes_as_the_wire_module(tmp_path: Path) -> None:
    readings = tuple(Reading.make("d", "p", T0 + i, i / 3, "u") for i in range(20))
    for key in (KEY, b"secret-for-hmac-nodes"):
        b = Batch("gw-1", 7, T0, readings)
        assert KeySigner(key).payload(b) == sign_batch(b, key).to_bytes()
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append(readings)
    cut = ob.cut_batch(100, KeySigner(KEY))
    assert cut is not None and parse_batch(cut.payload).readings == readings


def test_backlog_batches_render_rows_to_the_canonical_bytes(tmp_path: Path) -> None:
    """Cutting renders rows straight to wire text (no Reading objects); the bytes are sign_batch's,
    for awkward values and for rolled-up rows too."""
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    values = [s / 7 for s in range(100)] + [-0.0, 1e14 + 0.5, 123456789.123456789, 0.0000602, -1234.5, 100.0]
    raw = [Reading.make("stack", "so2", T0 + s * 1000, v, "mg/m³", "NDC"[s % 3]) for s, v in enumerate(values)]
    ob.append(raw, added_ms=T0)
    signer = KeySigner(KEY)
    b = ob.cut_batch(len(raw), signer)
    assert b is not None
    parsed = parse_batch(b.payload)
    assert parsed.readings == tuple(raw)
    assert b.payload == sign_batch(Batch("gw-1", b.seq, parsed.created_ms, tuple(raw)), KEY).to_bytes()
    ob.append(raw, added_ms=T0)
    ob.enforce_quota(1, keep_after_ms=T0 + 1)
    rest = ob.cut_batch(1000, signer)
    assert rest is not None
    again = parse_batch(rest.payload)
    assert {r.point for r in again.readings} == {"so2@1m", "so2@1m.n"}
    assert rest.payload == sign_batch(Batch("gw-1", rest.seq, again.created_ms, again.readings), KEY).to_bytes()


def test_the_backlog_window_yields_to_late_live_acks_and_grows_back(tmp_path: Path) -> None:
    now = [100.0]
    up = Uplink(Outbox(tmp_path / "o.sqlite", "gw-1"), GatewayTopics("s", "gw-1"), "mqtt://127.0.0.1:1",
                sign=sign, policy=DeliveryPolicy(backlog_inflight=8, live_target_ms=500), clock=lambda: now[0])
    assert up.backlog_window == 8
    up._adapt("live", 1.2)  # a live batch waited 1.2 s behind the backlog: halve
    assert up.backlog_window == 4
    now[0] += 0.5
    up._adapt("live", 1.2)  # the same congestion (within one round trip): no second cut
    assert up.backlog_window == 4
    now[0] += 1.0
    up._adapt("live", 1.2)
    up._adapt("backlog", 0.1)  # backlog acks do not widen the window while live data flows
    assert up.backlog_window == 2
    up._adapt("live", 0.4)  # near the target: hold
    assert up.backlog_window == 2
    for _ in range(3):
        up._adapt("live", 0.1)  # well under it: one more batch each time
    assert up.backlog_window == 5
    now[0] += 5
    for _ in range(10):
        up._adapt("backlog", 3.0)  # no live data for a while: the backlog has the link, up to its limit
    assert up.backlog_window == 8
    up.policy.live_target_ms = 0  # off: the configured window
    up._adapt("live", 9.0)
    assert up.backlog_window == 8


def test_the_backlog_window_doubles_per_round_trip_while_live_acks_are_quick(tmp_path: Path) -> None:
    """Slow start: with live acks under a quarter of the target, every ack widens the window, not only live
    ones; from a quarter up, backlog acks stop widening it; past the target it halves as before."""
    now = [100.0]
    up = Uplink(Outbox(tmp_path / "o.sqlite", "gw-1"), GatewayTopics("s", "gw-1"), "mqtt://127.0.0.1:1",
                sign=sign, policy=DeliveryPolicy(backlog_inflight=32, live_target_ms=400), clock=lambda: now[0])
    up.backlog_window = 1.0
    up._adapt("live", 0.05)  # 50 ms: no queue in front of live data
    assert up.backlog_window == 2
    for window in (2, 4, 8):  # one round trip: each batch in flight is acked and widens the window by one
        for _ in range(window):
            up._adapt("backlog", 0.3)
        assert up.backlog_window == 2 * window
    up._adapt("live", 0.15)  # 150 ms, over a quarter of 400: backlog acks no longer widen it
    assert up.backlog_window == 17
    for _ in range(10):
        up._adapt("backlog", 0.3)
    assert up.backlog_window == 17
    now[0] += 1.0
    up._adapt("live", 0.5)  # past the target: halve
    assert up.backlog_window == 8.5


def test_a_cut_whose_rows_change_between_its_phases_reads_them_again(tmp_path: Path) -> None:
    """Rows are read and rendered outside the write lock; another connection cutting or a rollup in
    between makes the cut read again: no reading in two batches, none lost."""
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    ob.append([Reading.make("d", "p", T0 + i * 1000, float(i), "u") for i in range(300)], added_ms=T0)
    other = ob.second_connection()
    meddle = ["cut", "rollup"]

    def between() -> None:
        if meddle:
            what = meddle.pop(0)
            if what == "cut":
                assert other.cut_batch(50, sign, lane="backlog", live_after_ms=T0 + 1) is not None
            else:
                other.enforce_quota(1, keep_after_ms=T0 + 1, chunk=60)  # rolls whole minutes up

    ob._between_phases = between  # type: ignore[method-assign]
    b = ob.cut_batch(100, KeySigner(KEY), lane="backlog", live_after_ms=T0 + 1)
    assert b is not None and meddle == []
    rows: list[tuple[str, int, float]] = []
    for batch in ob.unacked():
        rows.extend((r.point, r.ts_ms, r.value) for r in parse_batch(batch.payload).readings)
    rows.extend((r[0], r[1], r[2]) for r in ob.db.execute("SELECT point, ts_ms, value FROM pending"))
    keys = [(p, t) for p, t, _ in rows]
    assert len(keys) == len(set(keys))  # nothing twice
    raw = sum(1 for p, _, _ in rows if p == "p")
    counted = sum(v for p, _, v in rows if p == "p@1m.n")
    assert raw + counted == 300  # every raw reading is still there, or counted in a rollup
    other.close()
    ob.close()


def test_an_outbox_from_before_stored_wire_texts_is_migrated_and_cuts_the_same_bytes(tmp_path: Path) -> None:
    """A version-3 file (readings as columns only) gains the wire table; its old rows are rendered when cut,
    new rows carry their text, and a batch mixing both is byte for byte sign_batch's."""
    path = tmp_path / "o.sqlite"
    old = outbox_at_version(path, 3)
    before = [Reading.make("stack", "so2", T0 + i * 1000, v, "mg/m³", "NDC"[i % 3])
              for i, v in enumerate([1 / 3, -0.0, 1e14 + 0.5, 0.0000602, 100.0, 7])]
    old.executemany("INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
                    [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, T0) for r in before])
    old.close()
    ob = Outbox(path, "gw-1")
    assert ob.db.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
    after = [Reading.make("stack", "nox", T0 + i * 1000, i / 7, "mg/m³") for i in range(4)]
    ob.append(after, added_ms=T0)
    stored = [r[0] for r in ob.db.execute("SELECT w.text FROM pending p LEFT JOIN wire w ON w.id = p.id ORDER BY p.id")]
    assert stored == [None] * len(before) + [r.canonical() for r in after]
    for lane in ("backlog", "any"):  # the backlog's path and the lane-free one
        b = ob.cut_batch(7, KeySigner(KEY), lane=lane, live_after_ms=T0 + 1)  # type: ignore[arg-type]
        assert b is not None
        parsed = parse_batch(b.payload)
        assert b.payload == sign_batch(Batch("gw-1", b.seq, parsed.created_ms, parsed.readings), KEY).to_bytes()
        assert parsed.readings == tuple((before + after)[: 7] if lane == "backlog" else (before + after)[7:])
    assert ob.pending_count() == 0
    ob.close()


def test_a_backlog_cut_signed_before_the_lock_is_signed_again_when_a_live_cut_took_its_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", "gw-1")
    backlog = [Reading.make("d", "p", T0 + i, i / 3, "u") for i in range(50)]
    ob.append(backlog, added_ms=T0)
    ob.append([Reading.make("d", "live", T0 + 10**6, 1.0, "u")], added_ms=T0 + 10**6)
    other = ob.second_connection()
    live: list[int] = []

    def between() -> None:
        if not live:
            b = other.cut_batch(10, KeySigner(KEY), lane="live", live_after_ms=T0 + 1)
            assert b is not None
            live.append(b.seq)

    ob._between_phases = between  # type: ignore[method-assign]
    b = ob.cut_batch(100, KeySigner(KEY), lane="backlog", live_after_ms=T0 + 1)
    assert b is not None and live == [1] and b.seq == 2 and b.n == 50
    parsed = parse_batch(b.payload)
    assert parsed.seq == 2 and parsed.readings == tuple(backlog)
    assert b.payload == sign_batch(Batch("gw-1", 2, parsed.created_ms, tuple(backlog)), KEY).to_bytes()
    other.close()
    ob.close()


def test_the_send_loops_poll_of_unacked_batches_never_reads_their_payloads(tmp_path: Path) -> None:
    """A version-4 file with batches waiting gains a covering index: the poll of (seq, n, lane), made on every
    turn of the send loop, no longer walks each batch's payload (lane is stored after it)."""
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, "gw-1")
    ob.append([Reading.make("d", "p", T0 + i, 1.0, "u") for i in range(30)], added_ms=T0)
    cut = [ob.cut_batch(10, sign, lane=lane, live_after_ms=T0 + 1) for lane in ("backlog", "any", "backlog")]
    ob.db.execute("DROP INDEX batches_heads")
    ob.db.execute("PRAGMA user_version=4")
    ob.close()
    ob = Outbox(path, "gw-1")
    assert ob.db.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS)
    polls: list[str] = []
    ob.db.set_trace_callback(polls.append)
    assert ob.unacked_heads(limit=5) == [(b.seq, 10, b.lane) for b in cut if b is not None]
    ob.db.set_trace_callback(None)
    assert len(polls) == 1
    plan = " ".join(r[3] for r in ob.db.execute("EXPLAIN QUERY PLAN " + polls[0]))
    assert "COVERING INDEX batches_heads" in plan, plan
    ob.close()
