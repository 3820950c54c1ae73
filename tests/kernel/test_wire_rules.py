"""The wire format's rules: what is refused, and why, and that canonical numbers round-trip."""

from __future__ import annotations

import json
import math

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from carbonlink.kernel.wire import (
    MAX_BATCH_BYTES,
    Batch,
    Reading,
    WireError,
    canonical_number,
    format_ts,
    parse_batch,
    parse_ts,
    sign_batch,
    verify_batch,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def make_batch(n: int = 3, seq: int = 7) -> Batch:
    readings = tuple(Reading.make("cems-1", f"p{i}", 1_700_000_000_000 + i, 1.5 * i, "mg/m³") for i in range(n))
    return sign_batch(Batch("gw-1", seq, 1_700_000_000_123, readings), KEY)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-9.99e14, max_value=9.99e14))
def test_canonical_number_round_trips(x: float) -> None:
    text = canonical_number(x)
    assert "e" not in text and "E" not in text
    assert text == canonical_number(float(text)), "rendering the parsed text again changes it"
    if x != 0:
        assert math.isclose(float(text), x, rel_tol=1e-14)


@given(st.integers(min_value=0, max_value=253402300799999))
def test_timestamps_round_trip(ms: int) -> None:
    assert parse_ts(format_ts(ms)) == ms


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 1e15, 10**15, 999999999999999.5, -999999999999999.9,
                                 "12", True, None])
def test_bad_values_refused(bad: object) -> None:
    with pytest.raises(WireError):
        canonical_number(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("field, value", [
    ("device", 'a"b'), ("point", "back\\slash"), ("device", ""), ("unit", "x\n"), ("quality", "Z"),
    ("device", "x" * 129),
])
def test_bad_reading_fields_refused(field: str, value: str) -> None:
    args = {"device": "d", "point": "p", "ts_ms": 0, "value": 1.0, "unit": "u", "quality": "N", field: value}
    with pytest.raises(WireError):
        Reading.make(**args)  # type: ignore[arg-type]


def test_signature_verifies_and_tamper_fails() -> None:
    b = make_batch()
    raw = b.to_bytes()
    verify_batch(parse_batch(raw), KEY.public_key(), raw)
    tampered = raw.replace(b'"value":1.5', b'"value":1.6')
    with pytest.raises(WireError, match="signature does not match"):
        verify_batch(parse_batch(tampered), KEY.public_key(), tampered)
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(WireError):
        verify_batch(parse_batch(raw), other, raw)


def test_non_canonical_rendering_of_a_signed_batch_still_verifies() -> None:
    b = make_batch()
    pretty = json.dumps(json.loads(b.to_bytes()), indent=2).encode()
    verify_batch(parse_batch(pretty), KEY.public_key(), pretty)


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o.pop("sig"), "missing"),
    (lambda o: o.update(extra=1), "unexpected"),
    (lambda o: o.update(seq=0), "seq"),
    (lambda o: o.update(seq=True), "seq"),
    (lambda o: o.update(v=2), "version"),
    (lambda o: o.update(readings=[]), "non-empty"),
    (lambda o: o.update(created="2026-01-01 00:00:00"), "timestamp"),
    (lambda o: o.update(alg="rsa"), "alg"),
    (lambda o: o["readings"][0].update(value="NaN"), "number"),
    (lambda o: o["readings"][0].update(ts="2026-02-30T00:00:00.000Z"), "valid date"),
])
def test_schema_violations_name_the_rule(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(make_batch().to_bytes())
    mutate(obj)
    with pytest.raises(WireError, match=message):
        parse_batch(json.dumps(obj).encode())


def test_oversized_and_garbage_messages_refused() -> None:
    with pytest.raises(WireError, match="over the"):
        parse_batch(b" " * (MAX_BATCH_BYTES + 1))
    with pytest.raises(WireError, match="not UTF-8 JSON"):
        parse_batch(b"\xff\xfe garbage")
    with pytest.raises(WireError, match="JSON object"):
        parse_batch(b"[1,2,3]")
    with pytest.raises(WireError):
        parse_batch(b'{"readings": 1e999}')


@pytest.mark.parametrize("raw,ok", [
    (b'{"a":[1,{"b":[2]}]}', False),
    (b'{"a":[1,{"b":2}]}', True),
    (b'{"s":"[[[[[[[[[[[["}', True),
    (b'{"s":"\\"[[[[[[["}', True),
    (b"[" * 100_000, False),
    (b"[" * 50_000 + b"]" * 50_000, False),
    (b"]]", False),
])
def test_depth_is_bounded_before_parsing(raw: bytes, ok: bool) -> None:
    from carbonlink.kernel.wire import check_depth

    if ok:
        check_depth(raw, 3)
    else:
        with pytest.raises(WireError):
            check_depth(raw, 3)


def test_a_deep_batch_is_refused_even_with_a_raised_recursion_limit() -> None:
    """py_ecc (through web3) raises the recursion limit; the C JSON parser would then overflow the stack."""
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        with pytest.raises(WireError, match=r"not JSON|deeper"):
            parse_batch(b"[" * 100_000)
    finally:
        sys.setrecursionlimit(old)
