"""What the store's concerns take and give: plain records, queries and results, shared by every back end."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from carbonlink.kernel.wire import Batch, Quality

KEY_GRACE_MS = 7 * 24 * 3600 * 1000
QUALITY_FLAGS = tuple(q.value for q in Quality)  # rollup columns q_n, q_f, ... in this order
FLAG_COLS = tuple(f"q_{f.lower()}" for f in QUALITY_FLAGS)
Role = Literal["admin", "operator", "installer", "analyst", "auditor"]  # cloud/auth.py says what each may do
ROLES: tuple[str, ...] = get_args(Role)
HOUR_MS = 3_600_000


class ClaimError(Exception):
    """A claim token that cannot be redeemed; the message says why (unknown, expired, used)."""


class StoreUnavailable(Exception):
    """The database itself failed (down, full, refusing): retry later; nothing about the input is wrong."""


@dataclass(frozen=True)
class GatewayRecord:
    id: str
    site: str
    alg: str  # "ed25519" (key = public key hex) or "hmac-sha256" (key = secret hex)
    key: str
    revoked: bool = False
    # Keys replaced by a rotation less than KEY_GRACE_MS ago: batches the gateway signed before it
    # rotated may still sit in its outbox, and must not be refused.
    previous_keys: tuple[str, ...] = ()
    tenant: str | None = None


@dataclass(frozen=True)
class CommitResult:
    status: str  # "committed", "duplicate" (same seq, same digest) or "conflict" (same seq, other content)
    inserted: int  # readings newly stored
    duplicates: int  # readings already stored (same identity)
    # Readings whose unit differs from their point's registered unit (the first unit the cloud stored for
    # that gateway/device/point): not stored, kept as a dead letter with the reason.
    unit_mismatches: int = 0


Row = tuple[str, str, int, float, str, str]  # device, point, ts_ms, value, unit, quality


@dataclass(slots=True)
class Group:
    """A batch's readings of one (device, point, quality, unit), in batch order: times and values side by side.

    What the commit works on: a series id and a unit check per group, not per reading, and the readings
    go to the database as (series, ts, value, quality, seq) records zipped in C from the two lists.
    """

    device: str
    point: str
    quality: str
    unit: str
    ts: list[int]
    values: list[float]


def group_rows(rows: list[Row]) -> list[Group]:
    """Rows grouped by (device, point, quality, unit), groups in order of first appearance."""
    groups: dict[tuple[str, str, str, str], Group] = {}
    for d, p, ts, v, u, q in rows:
        g = groups.get((d, p, q, u))
        if g is None:
            g = groups[(d, p, q, u)] = Group(d, p, q, u, [], [])
        g.ts.append(ts)
        g.values.append(v)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A verified batch ready to commit, in the grouped form the bulk writers want (no per-reading objects)."""

    gateway: str
    seq: int
    created_ms: int
    received_ms: int
    # The batch's identity for telling a redelivery from a reuse of its seq: its signature. Ed25519
    # (RFC 8032) and HMAC are deterministic, so the same signed bytes always carry the same signature and
    # other content another one; no second hash over the bytes is needed.
    digest: str
    raw: bytes
    groups: list[Group]
    alg: str = "ed25519"
    # span() once computed: the ingest's time check and the commit both ask (groups are not changed after).
    _span: tuple[int, int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def n(self) -> int:
        """How many readings the batch holds."""
        return sum(len(g.ts) for g in self.groups)

    @property
    def rows(self) -> list[Row]:
        """The readings as rows, group by group (each group in batch order); for the exporters, not the commit."""
        return [(g.device, g.point, ts, v, g.unit, g.quality) for g in self.groups
                for ts, v in zip(g.ts, g.values, strict=True)]

    def span(self) -> tuple[int, int]:
        """The first and last reading time (min and max in C over each group's times, once per batch)."""
        span = self._span
        if span is None:
            span = min(min(g.ts) for g in self.groups), max(max(g.ts) for g in self.groups)
            object.__setattr__(self, "_span", span)
        return span

    @classmethod
    def from_rows(cls, gateway: str, seq: int, created_ms: int, received_ms: int, digest: str, raw: bytes,
                  rows: list[Row], alg: str = "ed25519") -> PendingBatch:
        return cls(gateway, seq, created_ms, received_ms, digest, raw, group_rows(rows), alg)

    @classmethod
    def from_batch(cls, batch: Batch, raw: bytes, received_ms: int) -> PendingBatch:
        rows = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in batch.readings]
        return cls.from_rows(batch.gateway, batch.seq, batch.created_ms, received_ms, batch.sig, raw, rows,
                             batch.alg.value)


@dataclass(frozen=True)
class ReadingQuery:
    """Readings of one device (optionally one point and gateway) in [start, end), ordered by point then time.

    ``after`` is the keyset position (point, gateway, ts_ms) of the last row of the previous page: each
    page is an ordered index range scan, so the thousandth page costs what the first did.
    """

    device: str
    point: str | None = None
    gateway: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int = 1000
    after: tuple[str, str, int] | None = None
    tenant: str | None = None  # only gateways of this tenant (the API always sets it)


@dataclass(frozen=True)
class SeriesQuery:
    """Rollup/availability selection: one device, optionally one point and gateway, a bounded time range."""

    device: str
    start_ms: int
    end_ms: int
    point: str | None = None
    gateway: str | None = None
    tenant: str | None = None  # only gateways of this tenant (the API always sets it)


@dataclass(frozen=True)
class Series:
    id: int
    gateway: str
    device: str
    point: str
    unit: str


def encode_cursor(row: dict[str, Any]) -> str:
    """The keyset position after ``row`` as an opaque, URL-safe text (point and gateway may hold any character)."""
    text = json.dumps([row["point"], row["gateway"], int(row["ts_ms"])], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str, int]:
    """Back from ``encode_cursor``; ValueError for anything this API did not hand out."""
    try:
        point, gateway, ts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("cursor is not one this API returned") from None
    if not (isinstance(point, str) and isinstance(gateway, str) and type(ts) is int and 0 <= ts < 2**53):
        raise ValueError("cursor is not one this API returned")
    return point, gateway, ts


def unit_reason(seq: int, wrong: list[str]) -> str:
    """The dead-letter reason for readings refused because their unit is not their point's registered unit."""
    shown = "; ".join(wrong[:10]) + (f"; and {len(wrong) - 10} more" if len(wrong) > 10 else "")
    return f"batch {seq}: {len(wrong)} reading(s) with a unit other than their point's registered unit: {shown}"


def seq_gap_summary(gateway: str, row: Any, gaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Shape the sequence-gap answer; seqs start at 1 on every gateway."""
    first, last, count = (row[0], row[1], int(row[2])) if row and row[2] else (None, None, 0)
    ranges = [[int(g["first"]), int(g["last"])] for g in gaps]
    if first is not None and first > 1:
        ranges.insert(0, [1, int(first) - 1])
    missing = (int(last) - count) if last is not None else 0  # every seq from 1 to last that is not stored
    return {"gateway": gateway, "first_seq": first, "last_seq": last, "batches": count,
            "missing_batches": missing, "missing": ranges}
