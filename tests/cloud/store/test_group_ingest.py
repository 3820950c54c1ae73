"""The ingest's fast path accepts exactly what the wire accepts; group commit keeps the ack/dead-letter rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonlink.cloud import batchparse
from carbonlink.cloud.batchparse import FastBatch, FastParser
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.store import Store, group_rows
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import (
    MAX_BATCH_BYTES,
    Batch,
    Reading,
    WireError,
    format_ts,
    parse_batch,
    sign_batch,
)

KEY = Ed25519PrivateKey.generate()
T0 = 1_709_251_200_000
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-9.9e14, max_value=9.9e14),
                   st.integers(min_value=-10**14, max_value=10**14))
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'), min_size=1, max_size=12)


def parse_both(fp: FastParser, raw: bytes) -> FastBatch | None:
    """``fp.parse(raw)``, after checking that ``parse_groups`` (what the ingest calls) gives the same batch
    grouped: the same envelope and the rows grouped by (device, point, quality, unit), or None too."""
    grouped = fp.parse_groups(raw)  # first, so it also meets cold caches
    fast = fp.parse(raw)
    assert (grouped is None) == (fast is None)
    if fast is not None and grouped is not None:
        assert grouped.groups == group_rows(fast.rows) and grouped.rows == [] and grouped.n == len(fast.rows)
        assert (grouped.gateway, grouped.seq, grouped.created_ms, grouped.alg, grouped.sig) == \
            (fast.gateway, fast.seq, fast.created_ms, fast.alg, fast.sig)
    return fast


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(texts, texts, st.integers(0, 10**12), values, st.sampled_from("NFMSDCTB")),
                min_size=1, max_size=8))
def test_fast_parse_matches_parse_batch(items: list[tuple[str, str, int, float, str]]) -> None:
    try:
        rs = tuple(Reading.make(d, p, T0 + ts, v, "mg/m³", q) for d, p, ts, v, q in items)
    except WireError:
        return  # e.g. a control character: not a batch anyone can sign
    raw = sign_batch(Batch("gw-1", 7, T0, rs), KEY).to_bytes()
    fast = parse_both(FastParser(), raw)
    slow = parse_batch(raw)
    expected = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in slow.readings]
    if fast is not None:  # None only sends it down the slow path
        assert fast.rows == expected and (fast.gateway, fast.seq, fast.created_ms) == ("gw-1", 7, T0)
        assert fast.sig == slow.sig and fast.signed_bytes(raw) == slow.signing_bytes()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
                          st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=6), values),
                min_size=1, max_size=6), st.booleans())
def test_canonical_and_json_paths_agree_with_parse_batch(items: list[tuple[str, str, float]], reformat: bool
                                                         ) -> None:
    """Texts with commas, braces, '},{' and any Unicode; the bytes as signed or re-spaced (the JSON path)."""
    try:
        rs = tuple(Reading.make(f"d{d}", f"p{d}", T0 + i, v, u) for i, (d, u, v) in enumerate(items))
    except WireError:
        return
    raw = sign_batch(Batch("gw-1", 9, T0, rs), KEY).to_bytes()
    if reformat:
        raw = json.dumps(json.loads(raw), indent=1).encode()
    fast = parse_both(FastParser(), raw)
    expected = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in parse_batch(raw).readings]
    if fast is not None:
        assert fast.rows == expected


def assert_both_refuse(fp: FastParser, raw: bytes, label: object, *, twice: bool = False) -> None:
    """The fast parse sends ``raw`` down the slow path and ``parse_batch`` refuses it, naming a rule."""
    for _ in range(2 if twice else 1):
        assert fp.parse(raw) is None, label
        assert fp.parse_groups(raw) is None, label
    try:
        parse_batch(raw)
    except WireError:
        return
    raise AssertionError(f"parse_batch accepted {label!r}")


def test_the_canonical_path_takes_canonical_bytes_and_nothing_else() -> None:
    rs = tuple(Reading.make("cems-1", p, T0 + i, 12.5 * i, "mg/m³") for i, p in enumerate(("so2", "a},{b", "x")))
    raw = sign_batch(Batch("gw-1", 3, T0, rs), KEY).to_bytes()
    fp = FastParser()
    assert fp._parse_canonical(raw) is not None
    # Readings side by side, a doubled comma, a comma moved to the end (the lengths add up, the order not).
    for bad in (raw.replace(b"},{", b"}{", 1), raw.replace(b"},{", b"},,{", 1),
                raw.replace(b"},{", b"}{", 1).replace(b"}],", b"},],", 1), raw.replace(b"[{", b"[,{", 1),
                raw.replace(b"},{", b"} ,{", 1), raw.replace(b'"value":12.5', b'"value":12.50'),
                raw.replace(b'"value":0', b'"value":-0'), raw.replace(b"mg/m", b"mg\\/m"),
                raw[:-1], raw + b" ",
                # Something that is not a reading between, before or after readings.
                raw.replace(b"},{", b'},{"x":1},{', 1), raw.replace(b"[{", b'[{"x":1},{', 1),
                raw.replace(b"}],", b'},{"x":1}],', 1), raw.replace(b"}],", b'},{"device":"d"}],', 1),
                raw.replace(b"},{", b'},{"device":"d"},{', 1), raw.replace(b"[{", b'[{"device":1},{', 1)):
        assert fp._parse_canonical(bad) is None
        parse_both(fp, bad)


def test_the_canonical_grammar_leaves_text_checks_to_the_cached_rules() -> None:
    """The canonical pattern takes any quote-free bytes as a device, point or unit, and any digits as a
    second; each distinct one is then checked by the wire's rule. Whatever that lets through the pattern
    but the wire refuses must be refused, and the cached check must not make a later batch pass."""
    good = sign_batch(Batch("gw-1", 5, T0, (Reading.make("dev", "so2", T0 + 7, 1.5, "mg/m³"),
                                            Reading.make("dev", "nox", T0 + 8, 2.5, "mg/m³"))), KEY).to_bytes()
    fp = FastParser()
    for bad in (good.replace(b'"device":"dev"', b'"device":""'),  # empty identifier
                good.replace(b'"point":"so2"', b'"point":"' + b"p" * 129 + b'"'),  # too long
                good.replace(b'"unit":"mg/m\xc2\xb3"', b'"unit":"' + b"u" * 33 + b'"', 1),  # unit too long
                good.replace(b'"device":"dev"', b'"device":"d\\\\"', 1),  # an escaped backslash
                good.replace(b'"point":"nox"', b'"point":"n\x01x"'),  # a raw control character
                good.replace(b'"point":"nox"', b'"point":"n\x7fx"'),
                good.replace(b'"device":"dev"', b'"device":"d\xffv"', 1),  # not UTF-8
                good.replace(b'"unit":"mg/m\xc2\xb3"', b'"unit":"mg/m\xc2"', 1),  # a cut UTF-8 sequence
                good.replace(b'"ts":"2024-03-01T00:00:00.007Z"', b'"ts":"2024-02-30T00:00:00.007Z"'),  # no such day
                good.replace(b'"ts":"2024-03-01T00:00:00.007Z"', b'"ts":"2024-03-01T24:00:00.007Z"'),
                good.replace(b'"ts":"2024-03-01T00:00:00.007Z"', b'"ts":"2024-03-01T00:00:00.07Z"'),
                good.replace(b'"ts":"2024-03-01T00:00:00.007Z"', b'"ts":"2024-03-01T00:00:00.0_7Z"'),
                good.replace(b'"ts":"2024-03-01T00:00:00.007Z"', b'"ts":"2024-03-01 00:00:00.007Z"'),
                good.replace(b'"quality":"N"', b'"quality":"X"', 1),
                good.replace(b'"value":1.5', b'"value":1_5'), good.replace(b'"value":1.5', b'"value":nan'),
                good.replace(b'"value":1.5', b'"value":1e300')):
        assert bad != good
        assert_both_refuse(fp, bad, bad, twice=True)  # the second time from the caches
    # Valid JSON, not canonical: the JSON path takes them.
    escaped = good.replace(b'"device":"dev"', b'"device":"d\\u0041"', 1)
    for raw in (good.replace(b'"value":1.5', b'"value": 1.5'), good.replace(b'"value":1.5', b'"value":1.50'),
                good.replace(b'"value":1.5', b'"value":-0'), escaped):
        assert fp._parse_canonical(raw) is None
    for raw in (good, escaped):
        fast = parse_both(fp, raw)
        assert fast is not None
        assert fast.rows == [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value)
                             for r in parse_batch(raw).readings]
    assert fp._parse_canonical(good) is not None
    assert fast.rows[0][:2] == ("dA", "so2") and fast.rows[0][4] == "mg/m³" and fast.rows[1][2] == T0 + 8


quote_free = st.binary(max_size=40).map(lambda b: b.replace(b'"', b""))


@settings(max_examples=300, deadline=None)
@given(quote_free, quote_free, quote_free, st.sampled_from([b"2024-03-01T00:00:00", b"2024-02-29T23:59:59",
                                                            b"2023-02-29T00:00:00", b"2024-13-01T00:00:00"]))
def test_any_bytes_in_canonical_text_fields_parse_as_the_wire_parses_them(device: bytes, point: bytes, unit: bytes,
                                                                          second: bytes) -> None:
    """Arbitrary quote-free bytes (escapes, controls, invalid UTF-8, empty, too long) where the canonical
    pattern no longer checks characters: the fast parse is the wire's answer or None, never another."""
    good = sign_batch(Batch("gw-1", 5, T0, (Reading.make("dev", "so2", T0 + 7, 1.5, "mg/m3"),
                                            Reading.make("dev", "nox", T0 + 8, 2.5, "mg/m3"))), KEY).to_bytes()
    raw = good.replace(b'"device":"dev","point":"so2"', b'"device":"' + device + b'","point":"' + point + b'"', 1) \
        .replace(b'"unit":"mg/m3"', b'"unit":"' + unit + b'"', 1).replace(b"2024-03-01T00:00:00.007", second + b".007")
    fp = FastParser()
    fp.parse(good)  # caches warm, as in a worker
    for _ in range(2):
        fast = parse_both(fp, raw)
        try:
            slow = parse_batch(raw)
        except WireError:
            assert fast is None
            continue
        if fast is not None:
            assert fast.rows == [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in slow.readings]


def test_fast_parse_refuses_what_the_wire_refuses() -> None:
    good = json.loads(sign_batch(Batch("gw-1", 1, T0, (Reading.make("d", "p", T0, 1.5, "u"),)), KEY).to_bytes())
    fp = FastParser()
    assert fp.parse(json.dumps(good).encode()) is not None
    for path, bad in ((("readings", 0, "value"), float("nan")), (("readings", 0, "value"), True),
                      (("readings", 0, "quality"), "X"), (("readings", 0, "ts"), "2024-02-30T00:00:00.000Z"),
                      (("readings", 0, "device"), 'a"b'), (("seq",), 0), (("v",), 2), (("sig",), "XY"),
                      (("readings", 0, "value"), 1e300), (("readings", 0, "unit"), "u" * 40)):
        obj = json.loads(json.dumps(good))
        target = obj
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = bad
        assert_both_refuse(fp, json.dumps(obj).encode(), (path, bad))


def test_a_drain_of_distinct_timestamps_keeps_the_parser_caches_bounded() -> None:
    """A backlog drain brings a new millisecond per reading: the timestamp cache is cleared at its bound,
    and every reading still parses to its own time."""
    parser = FastParser()
    for b in range(60):
        rs = tuple(Reading.make("dev", f"p{i % 10}", T0 + b * 500 + i, float(i), "u") for i in range(500))
        fb = parser.parse(sign_batch(Batch("gw", b + 1, rs[0].ts_ms, rs), KEY).to_bytes())
        assert fb is not None and [r[2] for r in fb.rows] == [r.ts_ms for r in rs]
        assert len(parser._stamps) <= batchparse._STAMPS_MAX + 1
    # The canonical path caches seconds and (milliseconds, unit) tails, not whole timestamps: 30,000
    # distinct milliseconds leave 31 seconds and 1,000 tails; the 10 (device, point, quality) keys stay.
    assert len(parser._bseconds) <= 32 and len(parser._btails) == 1000 and len(parser._bkeys) == 10
    assert len(parser._texts) <= 12  # device and point names repeat and stay cached


KEYS = [("dev", "p0", "N", "mg/m3"), ("dev", "p1", "N", "mg/m3"), ("dev", "p0", "M", "mg/m3"),
        ("dev", "p0", "N", "ppm"), ("dev2", "p0", "N", "mg/m3")]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5), st.integers(1, 60), st.integers(0, 4), st.booleans(),
       st.lists(st.tuples(st.integers(0, 59), st.integers(0, 4)), max_size=3),
       st.lists(st.sampled_from(["1.5", "-2", "0", "123456.25", "-0.001", "1234567890.12345"]), min_size=1))
def test_grouped_parse_of_any_order_of_keys_is_the_rows_grouped(k: int, n: int, phase: int, second_step: bool,
                                                              swaps: list[tuple[int, int]], numbers: list[str]) -> None:
    """Batches that repeat k keys in one order (the column path) and the same with some readings given
    another key (a point missed, a quality or unit changed: the loop), times crossing seconds or not,
    numbers short and long: the groups are always the rows grouped."""
    keys = [KEYS[(phase + i) % len(KEYS)] for i in range(k)]
    order = [keys[i % k] for i in range(n)]
    for at, other in swaps:
        if at < n:
            order[at] = KEYS[other]
    step = 997 if second_step else 1
    rs = tuple(Reading.make(d, p, T0 + i * step, float(numbers[i % len(numbers)]), u, q)
               for i, (d, p, q, u) in enumerate(order))
    raw = sign_batch(Batch("gw-1", 3, T0, rs), KEY).to_bytes()
    fast = parse_both(FastParser(), raw)
    assert fast is not None and fast.rows == [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value)
                                              for r in rs]


def test_grouped_parse_survives_caches_cleared_within_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches bounded at 3 entries are cleared while one batch fills them: the column path notices a
    checked second, tail or key gone again and leaves the batch to the loop, which gives the same groups."""
    monkeypatch.setattr(batchparse, "_CACHE_MAX", 3)
    fp = FastParser()
    for b in range(3):
        rs = tuple(Reading.make("dev", f"p{i % 4}", T0 + b * 10_000 + i * 7, float(i), "u") for i in range(400))
        raw = sign_batch(Batch("gw-1", b + 1, T0, rs), KEY).to_bytes()
        fast = parse_both(fp, raw)
        assert fast is not None and len(fast.rows) == 400
        assert len(fp._btails) <= 4 and len(fp._bseconds) <= 4


async def test_grouped_commit_stores_what_reading_by_reading_rules_say(store: Store) -> None:
    """Signed batches through the ingest (parsed into groups, committed per group, SQLite's many-row
    inserts across their 200-row boundary): stored rows, duplicates, unit refusals with their text and
    latest values are what the rules say reading by reading, here computed by a plain model."""
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY))
    acks: list[dict[str, object]] = []

    async def publish(topic: str, payload: bytes) -> None:
        acks.append(json.loads(payload))

    proc = IngestProcessor(store, publish)
    # Batch 1: three series repeating in one order (the column path), 450 readings.
    b1 = [("dev", f"p{i % 3}", T0 + i, float(i), "mg/m3", "N") for i in range(450)]
    # Batch 2: some of batch 1 again (already stored: skipped and counted), new ones, a unit other than
    # dev/p1's registered one (refused, dead letter), a new series whose first reading sets its unit.
    b2 = ([("dev", "p0", T0 + i, 99.0, "mg/m3", "N") for i in range(0, 60, 3)]
          + [("dev", "p1", T0 + 1000 + i, 5.0 + i, "ppm", "N") for i in range(7)]
          + [("dev", "p2", T0 + 2000 + i, 7.0 + i, "mg/m3", "N") for i in range(250)]
          + [("dev3", "x", T0 + 500 + i, 1.0, "kg", "F") for i in range(5)])
    # Batch 3: readings out of any period (the loop path): one series in two units, one in two qualities.
    b3 = [("dev3", "x", T0 + 600 + i, 2.0, "kg" if i % 2 else "g", "N") for i in range(9)] \
        + [("dev", "p2", T0 + 3000 + i, -1.5 * i, "mg/m3", "D" if i % 4 else "N") for i in range(12)]

    def raw(seq: int, rows: list[tuple[str, str, int, float, str, str]]) -> bytes:
        rs = tuple(Reading.make(d, p, ts, v, u, q) for d, p, ts, v, u, q in rows)
        return sign_batch(Batch("gw-1", seq, T0, rs), KEY).to_bytes()

    t = "cl/site-1/gw-1/telemetry"
    batches = [(1, b1), (2, b2), (3, b3)]
    fp = FastParser()
    for seq, rows in batches:
        canonical = fp._canonical(raw(seq, rows))
        assert canonical is not None and (fp._columns(canonical[1]) is False) == (seq != 1)
    out = await proc.handle_many([(t, raw(1, b1)), (t, raw(2, b2))])
    out += await proc.handle_many([(t, raw(3, b3)), (t, raw(1, b1))])  # and batch 1 redelivered
    assert out == [Outcome.COMMITTED] * 3 + [Outcome.DUPLICATE]

    units: dict[tuple[str, str], str] = {}
    stored: dict[tuple[str, str, int], tuple[float, str, int]] = {}
    latest: dict[tuple[str, str], tuple[int, float, str]] = {}
    expected_acks, refused_texts = [], []
    for seq, rows in batches:
        inserted = duplicates = refused = 0
        for d, p, ts, v, u, q in rows:
            if units.setdefault((d, p), u) != u:
                refused += 1
                refused_texts.append(f"{d}/{p}@{format_ts(ts)} in {u!r}, registered {units[(d, p)]!r}")
                continue
            if (d, p, ts) in stored:
                duplicates += 1
            else:
                stored[(d, p, ts)] = (v, q, seq)
                inserted += 1
            if (d, p) not in latest or ts > latest[(d, p)][0]:
                latest[(d, p)] = (ts, v, q)
        expected_acks.append((seq, inserted, duplicates, refused))
    assert [(a, c.inserted, c.duplicates, c.unit_mismatches) for a, c in zip(
        (1, 2, 3), [await store.data.commit_batch(parse_batch(raw(s, r)), raw(s, r), T0) for s, r in batches],
        strict=True)] == [(s, 0, len(r), 0) for s, r in batches]  # and a commit of each again stores nothing
    assert proc.counters.readings_stored == sum(e[1] for e in expected_acks) == len(stored)
    assert proc.counters.readings_refused == sum(e[3] for e in expected_acks) == 7 + 5
    got = {(r["device"], r["point"], int(r["ts_ms"])): (float(r["value"]), r["quality"], int(r["seq"]))
           for r in await store.db.fetch("SELECT s.device, s.point, r.ts_ms, r.value, r.quality, r.seq"
                                         " FROM readings r JOIN series s ON s.id = r.series")}
    assert got == stored
    assert {(r["device"], r["point"]): (int(r["ts_ms"]), float(r["value"]), r["quality"])
            for r in await store.data.latest()} == latest
    reasons = " | ".join(d["reason"] for d in await store.audit.dead_letters())
    for text in refused_texts:  # each batch spells out its first ten
        assert text in reasons
    assert "batch 2: 7 reading(s) with a unit other" in reasons and "batch 3: 5 reading(s)" in reasons
    assert sorted((a["seq"], a["status"]) for a in acks) == [(1, "committed"), (1, "duplicate"),
                                                              (2, "committed"), (3, "committed")]


async def test_handle_many_matches_handle(store: Store) -> None:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY))
    other = Ed25519PrivateKey.generate()
    t = "cl/site-1/gw-1/telemetry"

    def b(seq: int, key: Ed25519PrivateKey = KEY, n: int = 3, gw: str = "gw-1") -> bytes:
        rs = tuple(Reading.make("cems-1", "so2", T0 + seq * 1000 + i, 1.0 + i, "mg/m³") for i in range(n))
        return sign_batch(Batch(gw, seq, T0, rs), key).to_bytes()

    msgs = [(t, b(1)), (t, b"\x00junk"), (t, b(2, other)), (t, b(1)), ("cl/site-1/gw-1/other", b(3)),
            (t, b"x" * (MAX_BATCH_BYTES + 1)), (t, b(4)), (t, b(5, gw="gw-2")), (t, b(4, n=2))]
    acks: list[tuple[str, dict[str, object]]] = []

    async def publish(topic: str, payload: bytes) -> None:
        acks.append((topic, json.loads(payload)))

    p = IngestProcessor(store, publish)
    out = await p.handle_many(msgs)
    assert out == [Outcome.COMMITTED, Outcome.REJECTED, Outcome.REJECTED, Outcome.DUPLICATE, Outcome.REJECTED,
                   Outcome.REJECTED, Outcome.COMMITTED, Outcome.REJECTED, Outcome.REJECTED]
    reasons = [d["reason"] for d in await store.audit.dead_letters()][::-1]
    for expected in ("not UTF-8 JSON", "signature does not match", "not a telemetry topic", "over the",
                     "arrived on", "already committed with different content"):
        assert any(expected in r for r in reasons), (expected, reasons)
    assert sorted((a["seq"], a["status"]) for _, a in acks) == [
        (1, "committed"), (1, "duplicate"), (2, "rejected"), (4, "committed"), (4, "rejected"), (5, "rejected")]
    assert (await store.data.counts())["readings"] == 6 and p.counters.readings_stored == 6


def test_bench_smoke() -> None:
    """bench/ingest.py end to end with small counts: nothing lost, every batch acked as committed."""
    from tests.services import require_postgres

    db = require_postgres()
    spec = importlib.util.spec_from_file_location("bench_ingest", Path(__file__).parents[3] / "bench" / "ingest.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_ingest"] = mod
    spec.loader.exec_module(mod)
    import asyncio

    args = mod.parse_args(["--db", db, "--gateways", "4", "--readings", "4000", "--batch", "100",
                           "--steady-rate", "2000", "--steady-seconds", "1", "--steady-batch", "50", "--timeout", "30",
                           "--skip-nodered"])
    r = asyncio.run(mod.run(args))
    assert r["lost"] == 0 and r["stored"] == r["published"] == 6000
    assert r["e2e_complete"] and r["steady_complete"] and r["ack_statuses"] == {"committed": 80}
    assert all(x > 0 for x in r["worker_peak_rss_mb"])
