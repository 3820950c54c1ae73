"""The storage interface the ingest and the API use, whatever the back end.

Back ends are chosen by URL (``open_store``): ``sqlite:///path`` is the embedded
default. Every back end keeps the same promises: a batch is committed at most
once per (gateway, seq), a reading at most once per (gateway, device, point, ts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from carbonlink.kernel.wire import Batch, Quality, Reading, SigAlg


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


KEY_GRACE_MS = 7 * 24 * 3600 * 1000


class ClaimError(Exception):
    """A claim token that cannot be redeemed; the message says why (unknown, expired, used)."""


@dataclass(frozen=True)
class CommitResult:
    status: str  # "committed", "duplicate" (same seq, same digest) or "conflict" (same seq, other content)
    inserted: int  # readings newly stored
    duplicates: int  # readings already stored (same identity)
    # Readings whose unit differs from their point's registered unit (the first unit the cloud stored for
    # that gateway/device/point): not stored, kept as a dead letter with the reason.
    unit_mismatches: int = 0


@dataclass(frozen=True)
class ReadingQuery:
    device: str
    point: str | None = None
    gateway: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int = 1000
    after: tuple[int, str] | None = None  # keyset cursor: (ts_ms, point) of the last row seen
    tenant: str | None = None  # only gateways of this tenant (the API always sets it)


# --- data plane: group commit, rollups, completeness (cloud/rollups.py, cloud/completeness.py) ---

Row = tuple[str, str, int, float, str, str]  # device, point, ts_ms, value, unit, quality


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A verified batch ready to commit, in the flat form the bulk writers want (no per-reading objects)."""

    gateway: str
    seq: int
    created_ms: int
    received_ms: int
    digest: str  # sha256 hex of the signed bytes
    raw: bytes
    rows: list[Row]
    alg: str = "ed25519"

    @classmethod
    def from_batch(cls, batch: Batch, raw: bytes, received_ms: int) -> PendingBatch:
        rows = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value) for r in batch.readings]
        return cls(batch.gateway, batch.seq, batch.created_ms, received_ms, batch.digest(), raw, rows,
                   batch.alg.value)

    def to_batch(self) -> Batch:
        """Back to a wire Batch (unsigned view): for back ends that commit one batch at a time."""
        readings = tuple(Reading(d, p, ts, v, u, Quality(q)) for d, p, ts, v, u, q in self.rows)
        return Batch(self.gateway, self.seq, self.created_ms, readings, SigAlg(self.alg))


def unit_reason(seq: int, wrong: list[str]) -> str:
    """The dead-letter reason for readings refused because their unit is not their point's (every back end)."""
    shown = "; ".join(wrong[:10]) + (f"; and {len(wrong) - 10} more" if len(wrong) > 10 else "")
    return f"batch {seq}: {len(wrong)} reading(s) with a unit other than their point's registered unit: {shown}"


QUALITY_FLAGS = tuple(q.value for q in Quality)  # rollup columns q_n, q_f, ... in this order


def seq_gap_summary(gateway: str, row: Any, gaps: list[dict[str, Any]]) -> dict[str, Any]:
    """Shape the sequence-gap answer the same way for every back end; seqs start at 1 on every gateway."""
    first, last, count = (row[0], row[1], int(row[2])) if row and row[2] else (None, None, 0)
    ranges = [[int(g["first"]), int(g["last"])] for g in gaps]
    if first is not None and first > 1:
        ranges.insert(0, [1, int(first) - 1])
    missing = (int(last) - count) if last is not None else 0  # every seq from 1 to last that is not stored
    return {"gateway": gateway, "first_seq": first, "last_seq": last, "batches": count,
            "missing_batches": missing, "missing": ranges}


@dataclass(frozen=True)
class SeriesQuery:
    """Rollup/availability selection: one device, optionally one point and gateway, a bounded time range."""

    device: str
    start_ms: int
    end_ms: int
    point: str | None = None
    gateway: str | None = None
    tenant: str | None = None  # only gateways of this tenant (the API always sets it)


ROLES = ("admin", "operator", "installer", "analyst", "auditor")  # cloud/auth.py says what each may do


class Store(Protocol):
    url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str, *,
                               tenant: str | None = None) -> None: ...
    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None: ...
    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None: ...

    async def commit_batch(self, batch: Batch, raw: bytes, received_ms: int) -> CommitResult: ...
    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None,
                          received_ms: int) -> None: ...

    # ``tenant``: only that tenant's gateways (and their devices, readings, dead letters); None: all.
    async def list_gateways(self, tenant: str | None = None) -> list[dict[str, Any]]: ...
    async def list_devices(self, tenant: str | None = None) -> list[dict[str, Any]]: ...
    async def latest(self, device: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]: ...
    async def readings(self, q: ReadingQuery) -> list[dict[str, Any]]: ...
    async def dead_letter_raw(self, letter_id: int) -> tuple[str, bytes, int | None] | None:
        """(topic, raw bytes, resolved_ms) of one dead letter."""
        ...
    async def resolve_dead_letter(self, letter_id: int, resolution: str, ts_ms: int) -> None: ...
    async def unresolved_dead_letters(self, limit: int = 1000) -> list[int]: ...
    async def dead_letters(self, limit: int = 100, tenant: str | None = None,
                           before_id: int | None = None) -> list[dict[str, Any]]: ...
    async def counts(self, tenant: str | None = None) -> dict[str, int]: ...

    # --- identity and provisioning (cloud/provisioning.py builds on these) ---
    async def ensure_site(self, tenant: str, site: str) -> None: ...
    async def add_claim_token(self, token_hash: str, tenant: str, site: str, created_ms: int,
                              expires_ms: int) -> None: ...
    async def redeem_claim(self, token_hash: str, gateway_id: str, alg: str, key: str, mqtt_username: str,
                           mqtt_password_hash: str, now: int) -> tuple[str, str]: ...
    async def rotate_key(self, gateway_id: str, new_key: str, now: int) -> None: ...
    async def set_revoked(self, gateway_id: str, revoked: bool) -> bool: ...
    async def broker_accounts(self) -> list[dict[str, Any]]: ...
    async def list_tenants(self) -> list[dict[str, Any]]: ...
    async def list_sites(self, tenant: str) -> list[dict[str, Any]]: ...

    # --- API users and keys (cloud/auth.py): only hashes are stored ---
    async def add_user(self, username: str, tenant: str, role: str, password_hash: str, now: int) -> bool: ...
    async def get_user(self, username: str) -> dict[str, Any] | None: ...
    async def list_users(self, tenant: str) -> list[dict[str, Any]]: ...
    async def delete_user(self, tenant: str, username: str) -> bool: ...
    async def add_api_key(self, key_id: str, tenant: str, role: str, name: str, secret_hash: str,
                          now: int) -> None: ...
    async def get_api_key(self, key_id: str) -> dict[str, Any] | None: ...
    async def list_api_keys(self, tenant: str) -> list[dict[str, Any]]: ...
    async def revoke_api_key(self, tenant: str, key_id: str, now: int) -> bool: ...


    # --- data plane (cloud/rollups.py, cloud/completeness.py, the ingest's group commit) ---
    async def commit_many(self, items: list[PendingBatch]) -> list[CommitResult]: ...
    async def hour_rollups(self, q: SeriesQuery) -> list[dict[str, Any]]: ...
    async def seq_gaps(self, gateway: str, limit: int = 1000) -> dict[str, Any]: ...
    async def late_batches(self, gateway: str, min_delay_ms: int, limit: int = 1000) -> list[dict[str, Any]]: ...

    # --- device shadows and commands (cloud/shadows.py, cloud/commands.py) ---
    async def get_shadow(self, gateway: str) -> tuple[int, dict[str, Any]] | None: ...
    async def put_shadow(self, gateway: str, expected_version: int, doc: dict[str, Any], updated_ms: int) -> bool: ...
    async def add_command(self, command_id: str, gateway: str, name: str, args: dict[str, Any],
                          created_ms: int, deadline_ms: int) -> None: ...
    async def finish_command(self, command_id: str, status: str, result: dict[str, Any] | None,
                             done_ms: int) -> bool: ...
    async def get_command(self, command_id: str) -> dict[str, Any] | None: ...
    async def list_commands(self, gateway: str, limit: int = 50) -> list[dict[str, Any]]: ...


def open_store(url: str) -> Store:
    """A store for ``url``; call ``await store.open()`` before use."""
    if url.startswith("sqlite:///"):
        from .store_sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .store_postgres import PostgresStore  # type: ignore[import-not-found]
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ValueError(f"PostgreSQL storage is not available: {exc}") from None
        return PostgresStore(url)  # type: ignore[no-any-return]
    raise ValueError(f"storage URL {url!r} must start with sqlite:/// or postgresql://")
