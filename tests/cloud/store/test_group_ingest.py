"""The ingest's fast path accepts exactly what the wire accepts; group commit keeps the ack/dead-letter rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonlink.cloud import batchparse
from carbonlink.cloud.batchparse import FastParser
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import MAX_BATCH_BYTES, Batch, Reading, WireError, parse_batch, sign_batch

KEY = Ed25519PrivateKey.generate()
T0 = 1_709_251_200_000
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-9.9e14, max_value=9.9e14),
                   st.integers(min_value=-10**14, max_value=10**14))
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters='"\\'), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(texts, texts, st.integers(0, 10**12), values, st.sampled_from("NFMSDCTB")),
                min_size=1, max_size=8))
def test_fast_parse_matches_parse_batch(items: list[tuple[str, str, int, float, str]]) -> None:
    try:
        rs = tuple(Reading.make(d, p, T0 + ts, v, "mg/m³", q) for d, p, ts, v, q in items)
    except WireError:
        return  # e.g. a control character: not a batch anyone can sign
    raw = sign_batch(Batch("gw-1", 7, T0, rs), KEY).to_bytes()
    fast = FastParser().parse(raw)
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
    fast = FastParser().parse(raw)
    expected = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in parse_batch(raw).readings]
    if fast is not None:
        assert fast.rows == expected


def assert_both_refuse(fp: FastParser, raw: bytes, label: object, *, twice: bool = False) -> None:
    """The fast parse sends ``raw`` down the slow path and ``parse_batch`` refuses it, naming a rule."""
    for _ in range(2 if twice else 1):
        assert fp.parse(raw) is None, label
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
        fast = fp.parse(raw)
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
        fast = fp.parse(raw)
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
