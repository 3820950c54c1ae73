"""The CarbonLink wire format: readings, batches, canonical bytes and signatures.

Defined once here and used by the edge and the cloud; the MicroPython firmware
mirrors it and both are held to the JSON vectors in ``tests/vectors/``. The
rules are written down in ``docs/wire-format.md``; keep the two in step.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

WIRE_VERSION = 1
MAX_BATCH_BYTES = 1024 * 1024  # a message larger than this is refused before parsing
MAX_READINGS_PER_BATCH = 10_000
MAX_ABS_VALUE = 1e15  # beyond this a double no longer holds every integer exactly
MAX_SEQ = 2**53 - 1  # JSON numbers above this lose precision in many parsers
MAX_STRING = 128
MAX_BATCH_DEPTH = 3  # batch object > readings list > reading object: nothing deeper is ever valid

# Identifiers and units: no quote, backslash or control character, so canonical
# JSON never needs an escape and every implementation writes the same bytes. Public: the
# ingest's fast parser (cloud/batchparse.py) applies exactly these rules.
TEXT_CHAR = r'[^"\\\x00-\x1f\x7f]'  # one character of an identifier or unit (a regex class)
TS_PATTERN = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z"  # a timestamp's text
TEXT_RE = re.compile(f"^{TEXT_CHAR}{{1,128}}$")
UNIT_RE = re.compile(f"^{TEXT_CHAR}{{0,32}}$")
_TS_RE = re.compile(f"^{TS_PATTERN}$")
HEX_RE = re.compile(r"^[0-9a-f]*$")


class WireError(ValueError):
    """A message that does not follow the wire format; the text says which rule it breaks."""


class Quality(enum.StrEnum):
    """Quality flags, one letter each, aligned with HJ 212-2017 data flags."""

    NORMAL = "N"
    STOPPED = "F"  # instrument stopped
    MAINTENANCE = "M"
    MANUAL = "S"  # manually set value
    FAULT = "D"
    CALIBRATION = "C"
    OVER_RANGE = "T"
    COMM_FAILURE = "B"


QUALITY_CODES = frozenset(q.value for q in Quality)


class SigAlg(enum.StrEnum):
    ED25519 = "ed25519"  # gateways: the private key never leaves the device
    HMAC_SHA256 = "hmac-sha256"  # constrained nodes with a shared secret


# --- numbers and timestamps -------------------------------------------------------------


def canonical_number(x: float | int) -> str:
    """Render a value by the canonical number rule.

    Rounded to 15 significant digits (every decimal of up to 15 digits survives a
    round trip through an IEEE double), written in plain decimal notation with no
    exponent, no trailing fractional zeros, no trailing point and no negative zero.
    """
    if type(x) is float and -_FAST_LIMIT < x < _FAST_LIMIT:
        # Hot path (every reading of every batch): no exponent, far from the range limit.
        s = format(x, ".15g")
        if "e" not in s:
            if "." in s:
                s = s.rstrip("0").rstrip(".")
            return "0" if s == "-0" else s
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise WireError(f"value must be a number, got {type(x).__name__}")
    if isinstance(x, float) and not math.isfinite(x):
        raise WireError(f"value must be finite, got {x!r}")
    if isinstance(x, int):
        if abs(x) >= MAX_ABS_VALUE:
            raise WireError(f"value {x!r} is out of range (|value| < 1e15)")
        return str(x)
    s = format(x, ".15g")
    if "e" in s:
        s = format(Decimal(s), "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    if s in ("-0", ""):
        s = "0"
    # Checked on the rounded text: 999999999999999.5 rounds to 1e15, which a receiver would refuse.
    if abs(Decimal(s)) >= MAX_ABS_VALUE:
        raise WireError(f"value {x!r} is out of range (|value| < 1e15 after rounding to 15 digits)")
    return s


_FAST_LIMIT = 999_999_999_999_999.0  # below this, rounding to 15 digits cannot reach 1e15


def normalize_value(x: float | int) -> float:
    """The value a reading holds: exactly what its canonical text parses back to."""
    return float(canonical_number(x))


@functools.lru_cache(maxsize=4096)
def _ts_seconds(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def format_ts(ms: int) -> str:
    """Milliseconds since the Unix epoch to ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    secs, milli = divmod(ms, 1000)
    # Readings of one batch share few seconds; formatting each second once halves a batch's cost.
    return f"{_ts_seconds(secs)}.{milli:03d}Z"


def parse_ts(text: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` to milliseconds since the Unix epoch."""
    if not isinstance(text, str) or not _TS_RE.fullmatch(text):
        raise WireError(f"timestamp {text!r} is not YYYY-MM-DDTHH:MM:SS.mmmZ (UTC, milliseconds)")
    try:
        dt = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise WireError(f"timestamp {text!r} is not a valid date: {exc}") from None
    return int(dt.timestamp()) * 1000 + int(text[20:23])


_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_EMPTY_PAIR_RE = re.compile(rb"\[\]|\{\}")


def check_depth(raw: bytes, limit: int) -> None:
    """Refuse JSON nested deeper than ``limit`` before any parser sees it.

    Strings are blanked (their brackets do not count), everything but brackets is dropped, then
    innermost pairs are removed a level at a time: ``limit`` passes at C speed, whatever the input.
    A parser's own recursion guard is not enough: a library may raise the interpreter's limit.
    """
    shape = _STRING_RE.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        if not shape:
            return
        shape, n = _EMPTY_PAIR_RE.subn(b"", shape)
        if n == 0:
            raise WireError("message is not JSON: its brackets do not match")
    if shape:
        raise WireError(f"message nests deeper than {limit} levels")


def json_object(payload: bytes, max_bytes: int) -> dict[str, Any] | None:
    """A small control message (an ack, a command) as a JSON object, or None for anything else: longer than
    ``max_bytes``, not JSON, nested past the parser's depth (RecursionError), or not an object."""
    if len(payload) > max_bytes:
        return None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not TEXT_RE.fullmatch(value):
        raise WireError(
            f"{name} must be 1-{MAX_STRING} characters without quotes, backslashes or control characters,"
            f" got {value!r}"
        )
    return value


# --- readings and batches -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one point of one device at one instant."""

    device: str
    point: str
    ts_ms: int
    value: float
    unit: str
    quality: Quality = Quality.NORMAL

    @classmethod
    def make(
        cls, device: str, point: str, ts_ms: int, value: float, unit: str, quality: str = "N"
    ) -> Reading:
        """Validated constructor; the value is normalised to its canonical form."""
        _check_text("device", device)
        _check_text("point", point)
        if not isinstance(unit, str) or not UNIT_RE.fullmatch(unit):
            raise WireError(
                f"unit must be 0-32 characters without quotes, backslashes or control characters, got {unit!r}")
        if quality not in QUALITY_CODES:
            raise WireError(f"quality {quality!r} is not one of {''.join(sorted(QUALITY_CODES))}")
        if isinstance(ts_ms, bool) or not isinstance(ts_ms, int) or not 0 <= ts_ms < 253402300800000:
            raise WireError(f"timestamp {ts_ms!r} must be integer milliseconds between 1970 and 9999")
        return cls(device, point, ts_ms, normalize_value(value), unit, Quality(quality))

    @property
    def key(self) -> tuple[str, str, int]:
        """The reading's identity: a device reports one value per point and instant."""
        return (self.device, self.point, self.ts_ms)

    def to_wire(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "point": self.point,
            "quality": self.quality.value,
            "ts": format_ts(self.ts_ms),
            "unit": self.unit,
            "value": self.value,
        }

    def canonical(self) -> str:
        return reading_text(self.device, self.point, self.ts_ms, self.value, self.unit, self.quality.value)

    @classmethod
    def from_wire(cls, obj: Any) -> Reading:
        if not isinstance(obj, dict):
            raise WireError("a reading must be a JSON object")
        expected = {"device", "point", "quality", "ts", "unit", "value"}
        if set(obj) != expected:
            extra, missing = set(obj) - expected, expected - set(obj)
            raise WireError(f"reading fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
        return cls.make(
            obj["device"], obj["point"], parse_ts(obj["ts"]), obj["value"], obj["unit"], obj["quality"]
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """What a gateway or node sends: numbered, timestamped, signed readings."""

    gateway: str
    seq: int
    created_ms: int
    readings: tuple[Reading, ...]
    alg: SigAlg = SigAlg.ED25519
    sig: str = ""
    v: int = WIRE_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def signing_bytes(self) -> bytes:
        """Canonical bytes of the batch without its signature: what is signed and hashed."""
        return batch_body(self.alg.value, self.created_ms, self.gateway, [r.canonical() for r in self.readings],
                          self.seq, self.v)

    def to_bytes(self) -> bytes:
        """The message as published: the canonical bytes with ``sig`` in its sorted place."""
        if not self.sig:
            raise WireError("batch is not signed")
        return with_sig(self.signing_bytes(), self.sig, self.v)

    def digest(self) -> str:
        return hashlib.sha256(self.signing_bytes()).hexdigest()


def check_batch_fields(obj: Any) -> None:
    if not isinstance(obj, dict):
        raise WireError("a batch must be a JSON object")
    expected = {"alg", "created", "gateway", "readings", "seq", "sig", "v"}
    if set(obj) != expected:
        extra, missing = set(obj) - expected, expected - set(obj)
        raise WireError(f"batch fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if obj["v"] != WIRE_VERSION:
        raise WireError(f"wire version {obj['v']!r} is not supported (expected {WIRE_VERSION})")


def parse_alg_sig(obj: dict[str, Any]) -> tuple[SigAlg, str]:
    """The ``alg`` and ``sig`` fields of a batch or an event, checked; WireError says which is wrong."""
    try:
        alg = SigAlg(obj["alg"])
    except ValueError:
        raise WireError(f"alg {obj['alg']!r} is not one of {[a.value for a in SigAlg]}") from None
    sig = obj["sig"]
    if not isinstance(sig, str) or not HEX_RE.fullmatch(sig) or len(sig) not in (64, 128):
        raise WireError("sig must be lowercase hex: 128 digits (ed25519) or 64 (hmac-sha256)")
    return alg, sig


def parse_batch(raw: bytes) -> Batch:
    """Parse and validate a message; raises WireError naming the first broken rule."""
    if len(raw) > MAX_BATCH_BYTES:
        raise WireError(f"message is {len(raw)} bytes, over the {MAX_BATCH_BYTES}-byte limit")
    check_depth(raw, MAX_BATCH_DEPTH)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"message is not UTF-8 JSON: {exc}") from None
    check_batch_fields(obj)
    seq = obj["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise WireError(f"seq must be an integer from 1 to 2^53-1, got {seq!r}")
    alg, sig = parse_alg_sig(obj)
    readings = obj["readings"]
    if not isinstance(readings, list) or not readings:
        raise WireError("readings must be a non-empty list")
    if len(readings) > MAX_READINGS_PER_BATCH:
        raise WireError(f"{len(readings)} readings, over the limit of {MAX_READINGS_PER_BATCH}")
    parsed = tuple(Reading.from_wire(r) for r in readings)
    return Batch(
        gateway=_check_text("gateway", obj["gateway"]),
        seq=seq,
        created_ms=parse_ts(obj["created"]),
        readings=parsed,
        alg=alg,
        sig=sig,
    )


# --- signatures ----------------------------------------------------------------------------


def reading_text(device: str, point: str, ts_ms: int, value: float, unit: str, quality: str) -> str:
    """A reading's canonical text (``Reading.canonical``) from its fields, as a store row holds them: keys in
    sorted order, every string escape-free by construction."""
    return (f'{{"device":"{device}","point":"{point}","quality":"{quality}","ts":"{format_ts(ts_ms)}",'
            f'"unit":"{unit}","value":{canonical_number(value)}}}')


def batch_body(alg: str, created_ms: int, gateway: str, readings: Sequence[str], seq: int, v: int) -> bytes:
    """A batch's canonical bytes without its signature, from its readings' canonical texts in order."""
    return (f'{{"alg":"{alg}","created":"{format_ts(created_ms)}","gateway":"{gateway}",'
            f'"readings":[{",".join(readings)}],"seq":{seq},"v":{v}}}').encode()


def with_sig(body: bytes, sig: str, v: int) -> bytes:
    """The published message: ``sig`` put into the canonical body in its sorted place, before ``v``."""
    tail = f',"v":{v}}}'.encode()
    return body[: -len(tail)] + f',"sig":"{sig}"'.encode() + tail


def sig_alg(key: Ed25519PrivateKey | bytes) -> SigAlg:
    """Ed25519 for a private key, HMAC-SHA256 for a shared secret (bytes)."""
    return SigAlg.ED25519 if isinstance(key, Ed25519PrivateKey) else SigAlg.HMAC_SHA256


def signature(body: bytes, key: Ed25519PrivateKey | bytes) -> str:
    """The hex signature of canonical bytes with the key's algorithm (``sig_alg``)."""
    if isinstance(key, Ed25519PrivateKey):
        return key.sign(body).hex()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def sign_batch(batch: Batch, key: Ed25519PrivateKey | bytes) -> Batch:
    """Return the batch signed: Ed25519 with a private key, HMAC-SHA256 with a secret (bytes)."""
    from dataclasses import replace

    unsigned = replace(batch, alg=sig_alg(key), sig="")
    return replace(unsigned, sig=signature(unsigned.signing_bytes(), key))


def verify_batch(batch: Batch, key: Ed25519PublicKey | bytes, raw: bytes | None = None) -> None:
    """Raise WireError unless the signature matches.

    With ``raw`` (the message as received) the fast path removes the ``sig`` member
    from the bytes themselves; if the sender's bytes were not canonical the batch
    is re-serialised, so any faithful JSON rendering of a signed batch verifies.
    """
    if not check_signature("batch", batch.alg, batch.sig, batch.signing_bytes, key, raw):
        raise WireError(f"signature does not match the key registered for gateway {batch.gateway!r}")


def check_signature(what: str, alg: SigAlg, sig: str, signing_bytes: Callable[[], bytes],
                    key: Ed25519PublicKey | bytes, raw: bytes | None) -> bool:
    """Whether ``sig`` signs the message: over the received bytes without their ``sig`` member first,
    then over the canonical bytes. A key of the other kind than ``alg`` raises WireError."""
    if (alg is SigAlg.ED25519) != isinstance(key, Ed25519PublicKey):
        mine, theirs = ("ed25519", "secret") if alg is SigAlg.ED25519 else ("hmac-sha256", "key")
        raise WireError(f"{what} is signed with {mine} but the device is registered with a {theirs}")
    candidates: list[bytes] = []
    if raw is not None:
        member = f',"sig":"{sig}"'.encode()
        if raw.count(member) == 1:
            candidates.append(raw.replace(member, b""))
    candidates.append(signing_bytes())
    for data in candidates:
        if isinstance(key, Ed25519PublicKey):
            try:
                key.verify(bytes.fromhex(sig), data)
                return True
            except (InvalidSignature, ValueError):
                continue
        elif hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), sig):
            return True
    return False
