"""Events: what a gateway reports besides readings, signed like batches.

Alerts raised by rules, anomalies found by the model, batches the cloud refused, an outbox that
overflowed or was found corrupt, an HJ 212 station that gave a wrong password: each is one event,
kept in the gateway's outbox until the cloud acknowledges that it stored it, so alerts raised
while offline reach the cloud later with their original times.

One event per MQTT message on ``cl/{site}/{gateway}/events``. Identity is (gateway, id); the id is
made on the gateway (random, so it survives a lost outbox), and a redelivered event is stored
once. The body is a small JSON object for the kind's own fields. The rules are in
``docs/wire-format.md`` ("Events").
"""

from __future__ import annotations

import enum
import json
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .ids import DEVICE_ID_RE, DEVICE_ID_RULE
from .wire import (
    TEXT_RE,
    WIRE_VERSION,
    SigAlg,
    WireError,
    check_depth,
    check_signature,
    format_ts,
    parse_alg_sig,
    parse_ts,
    sig_alg,
    signature,
)

MAX_EVENT_BYTES = 16 * 1024
MAX_BODY_DEPTH = 8
_KIND_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,3}")  # e.g. alert.raised, outbox.corrupt
FIELDS = {"alg", "body", "device", "gateway", "id", "kind", "point", "severity", "sig", "ts", "v"}


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


def new_event_id() -> str:
    """A random id: unique without coordination, also after a gateway lost its outbox."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class Event:
    gateway: str
    id: str
    kind: str
    ts_ms: int
    severity: Severity = Severity.INFO
    device: str | None = None
    point: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    alg: SigAlg = SigAlg.ED25519
    sig: str = ""
    v: int = WIRE_VERSION

    @classmethod
    def make(cls, gateway: str, kind: str, ts_ms: int, *, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None, id: str | None = None) -> Event:
        """Validated constructor: the same rules the cloud applies when it parses one."""
        event = cls(gateway, id or new_event_id(), kind, ts_ms, _severity(severity), device, point, body or {})
        check_event(event)
        return event

    def _obj(self, with_sig: bool) -> dict[str, Any]:
        obj: dict[str, Any] = {"alg": self.alg.value, "body": self.body, "device": self.device,
                               "gateway": self.gateway, "id": self.id, "kind": self.kind, "point": self.point,
                               "severity": self.severity.value, "ts": format_ts(self.ts_ms), "v": self.v}
        if with_sig:
            obj["sig"] = self.sig
        return obj

    def signing_bytes(self) -> bytes:
        """Canonical bytes without the signature: sorted keys, no spaces, ASCII only."""
        return _dumps(self._obj(with_sig=False))

    def to_bytes(self) -> bytes:
        if not self.sig:
            raise WireError("event is not signed")
        return _dumps(self._obj(with_sig=True))


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _severity(value: Any) -> Severity:
    try:
        return Severity(value)
    except ValueError:
        raise WireError(f"severity {value!r} is not one of {[s.value for s in Severity]}") from None


def check_event(event: Event) -> None:
    if not isinstance(event.gateway, str) or not TEXT_RE.fullmatch(event.gateway):
        raise WireError(f"event gateway {event.gateway!r} is not a valid identifier")
    if not isinstance(event.id, str) or not DEVICE_ID_RE.fullmatch(event.id):
        raise WireError(f"event id {event.id!r} must be {DEVICE_ID_RULE}")
    if not isinstance(event.kind, str) or not _KIND_RE.fullmatch(event.kind):
        raise WireError(f"event kind {event.kind!r} must be dotted lowercase words, e.g. alert.raised")
    if isinstance(event.ts_ms, bool) or not isinstance(event.ts_ms, int) or not 0 <= event.ts_ms < 253402300800000:
        raise WireError(f"event time {event.ts_ms!r} must be integer milliseconds between 1970 and 9999")
    for name in ("device", "point"):
        value = getattr(event, name)
        if value is not None and (not isinstance(value, str) or not TEXT_RE.fullmatch(value)):
            raise WireError(f"event {name} {value!r} is not a valid identifier")
    if not isinstance(event.body, dict):
        raise WireError("event body must be a JSON object")
    try:
        size = len(_dumps(event.body))
    except (TypeError, ValueError) as exc:
        raise WireError(f"event body is not plain JSON (finite numbers, strings, lists, objects): {exc}") from None
    if size > MAX_EVENT_BYTES // 2:
        raise WireError(f"event body is {size} bytes, over the {MAX_EVENT_BYTES // 2}-byte limit")


def parse_event(raw: bytes) -> Event:
    """Parse and validate one event message; raises WireError naming the first broken rule."""
    if len(raw) > MAX_EVENT_BYTES:
        raise WireError(f"event is {len(raw)} bytes, over the {MAX_EVENT_BYTES}-byte limit")
    check_depth(raw, MAX_BODY_DEPTH + 1)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WireError(f"event is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise WireError("an event must be a JSON object")
    if set(obj) != FIELDS:
        extra, missing = set(obj) - FIELDS, FIELDS - set(obj)
        raise WireError(f"event fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)}")
    if obj["v"] != WIRE_VERSION:
        raise WireError(f"wire version {obj['v']!r} is not supported (expected {WIRE_VERSION})")
    alg, sig = parse_alg_sig(obj)
    event = Event(obj["gateway"], obj["id"], obj["kind"], parse_ts(obj["ts"]), _severity(obj["severity"]),
                  obj["device"], obj["point"], obj["body"], alg, sig)
    check_event(event)
    return event


def sign_event(event: Event, key: Ed25519PrivateKey | bytes) -> Event:
    unsigned = replace(event, alg=sig_alg(key), sig="")
    return replace(unsigned, sig=signature(unsigned.signing_bytes(), key))


def verify_event(event: Event, key: Ed25519PublicKey | bytes, raw: bytes | None = None) -> None:
    """Raise WireError unless the signature matches (over the received bytes, or the canonical ones)."""
    if not check_signature("event", event.alg, event.sig, event.signing_bytes, key, raw):
        raise WireError(f"event signature does not match the key registered for gateway {event.gateway!r}")


class EventSink(Protocol):
    """Where edge components (rules, the anomaly model, the outbox, drivers) report events.

    The agent's implementation signs the event and keeps it in the outbox until the cloud acks it;
    a component never talks to MQTT itself.
    """

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None: ...
