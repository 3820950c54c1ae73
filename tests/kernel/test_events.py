"""Events: validated construction, canonical bytes, signatures, and refusal of what breaks the rules."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.kernel.events import MAX_EVENT_BYTES, Event, parse_event, sign_event, verify_event
from carbonlink.kernel.wire import WireError

T0 = 1_700_000_000_000


def _event(**kw: object) -> Event:
    args: dict[str, object] = {"severity": "warning", "device": "cems-1", "point": "SO2",
                               "body": {"rule": "so2-high", "value": 212.5, "limit": 200}}
    args.update(kw)
    return Event.make("gw-1", "alert.raised", T0, **args)  # type: ignore[arg-type]


def test_signed_event_round_trips_and_verifies() -> None:
    key = Ed25519PrivateKey.generate()
    signed = sign_event(_event(), key)
    raw = signed.to_bytes()
    parsed = parse_event(raw)
    assert parsed == signed
    verify_event(parsed, key.public_key(), raw)
    tampered = raw.replace(b"212.5", b"112.5")
    with pytest.raises(WireError, match="signature"):
        verify_event(parse_event(tampered), key.public_key(), tampered)


def test_hmac_signed_event_verifies_with_the_secret_only() -> None:
    secret = b"s" * 32
    signed = sign_event(_event(), secret)
    verify_event(parse_event(signed.to_bytes()), secret, signed.to_bytes())
    with pytest.raises(WireError):
        verify_event(signed, b"t" * 32, signed.to_bytes())
    with pytest.raises(WireError, match="registered with a key"):
        verify_event(signed, Ed25519PrivateKey.generate().public_key())


def test_canonical_bytes_are_sorted_compact_ascii() -> None:
    e = _event(body={"b": 1, "a": "µg"})
    text = e.signing_bytes().decode("ascii")
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert "\\u00b5g" in text


def test_ids_are_unique_without_coordination() -> None:
    assert len({_event().id for _ in range(1000)}) == 1000


@pytest.mark.parametrize("kw,match", [
    ({"severity": "panic"}, "severity"),
    ({"device": 'bad"name'}, "device"),
    ({"body": {"x": float("nan")}}, "plain JSON"),
    ({"body": {"x": "y" * MAX_EVENT_BYTES}}, "limit"),
    ({"id": "has space"}, "id"),
])
def test_make_refuses_what_the_cloud_would_refuse(kw: dict[str, object], match: str) -> None:
    with pytest.raises(WireError, match=match):
        _event(**kw)


@pytest.mark.parametrize("raw,match", [
    (b"[" * 10_000, "not JSON|deeper"),
    (b'{"alg":"\xff"}', "UTF-8"),
    (b"{}", "fields wrong"),
    (b"x" * (MAX_EVENT_BYTES + 1), "limit"),
])
def test_parse_refuses_hostile_bytes(raw: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        parse_event(raw)


def test_parse_refuses_a_kind_that_is_not_dotted_words() -> None:
    signed = sign_event(_event(), Ed25519PrivateKey.generate())
    obj = json.loads(signed.to_bytes())
    obj["kind"] = "Alert Raised"
    with pytest.raises(WireError, match="kind"):
        parse_event(json.dumps(obj).encode())
