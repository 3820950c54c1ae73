"""The storage interface the ingest and the API use, whatever the back end.

Back ends are chosen by URL (``open_store``): ``sqlite:///path`` is the embedded
default. Every back end keeps the same promises: a batch is committed at most
once per (gateway, seq), a reading at most once per (gateway, device, point, ts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from carbonlink.wire import Batch


@dataclass(frozen=True)
class GatewayRecord:
    id: str
    site: str
    alg: str  # "ed25519" (key = public key hex) or "hmac-sha256" (key = secret hex)
    key: str
    revoked: bool = False


@dataclass(frozen=True)
class CommitResult:
    status: str  # "committed", "duplicate" (same seq, same digest) or "conflict" (same seq, other content)
    inserted: int  # readings newly stored
    duplicates: int  # readings already stored (same identity)


@dataclass(frozen=True)
class ReadingQuery:
    device: str
    point: str | None = None
    gateway: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int = 1000
    after: tuple[int, str] | None = None  # keyset cursor: (ts_ms, point) of the last row seen


class Store(Protocol):
    url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    async def register_gateway(self, gateway_id: str, site: str, alg: str, key: str) -> None: ...
    async def get_gateway(self, gateway_id: str) -> GatewayRecord | None: ...
    async def set_gateway_status(self, gateway_id: str, status: str, ts_ms: int) -> None: ...

    async def commit_batch(self, batch: Batch, raw: bytes, received_ms: int) -> CommitResult: ...
    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None,
                          received_ms: int) -> None: ...

    async def list_gateways(self) -> list[dict[str, Any]]: ...
    async def list_devices(self) -> list[dict[str, Any]]: ...
    async def latest(self, device: str | None = None) -> list[dict[str, Any]]: ...
    async def readings(self, q: ReadingQuery) -> list[dict[str, Any]]: ...
    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]: ...
    async def counts(self) -> dict[str, int]: ...


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
