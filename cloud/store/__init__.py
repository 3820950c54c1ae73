"""The cloud's storage, split by concern, on SQLite or PostgreSQL with one SQL layer.

``open_store(url)`` gives a ``Store``; ``await store.open()`` migrates and connects. Its concerns:

- ``store.registry``: tenants, sites, gateways, keys, claims, broker accounts, presence
- ``store.data``: the point registry (series), group commit, latest values, readings, rollups, gaps
- ``store.control``: device shadows and commands
- ``store.access``: API users and keys (hashes only)
- ``store.anchors``: anchoring jobs and leaves, and what proof bundles read
- ``store.audit``: dead letters, gateway events, the audit log
- ``store.rules``: rule versions, rule-set versions and sets by hash, silences, provenance of derived
  readings, readings the cloud derived; ``store.rules.alerts``: alerts and their lifecycle
- ``store.models``: anomaly model files by hash, per tenant

Every back end keeps the same promises: a batch is committed at most once per (gateway, seq), a
reading at most once per (gateway, device, point, ts).
"""

from __future__ import annotations

from .access import Access
from .anchors import Anchors
from .audit import Audit
from .control import Control
from .data import Data
from .db import Database, QueryObserver
from .model import (
    FLAG_COLS,
    HOUR_MS,
    KEY_GRACE_MS,
    QUALITY_FLAGS,
    ROLES,
    ClaimError,
    CommitResult,
    GatewayRecord,
    Group,
    PendingBatch,
    ReadingQuery,
    Row,
    Series,
    SeriesQuery,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
    group_rows,
    seq_gap_summary,
    unit_reason,
)
from .models import Models
from .registry import Registry
from .rules import Rules

__all__ = [
    "FLAG_COLS", "HOUR_MS", "KEY_GRACE_MS", "QUALITY_FLAGS", "ROLES", "Access", "Anchors", "Audit", "ClaimError",
    "CommitResult", "Control", "Data", "Database", "GatewayRecord", "Group", "PendingBatch", "QueryObserver",
    "ReadingQuery", "Registry", "Row", "Rules", "Series", "SeriesQuery", "Store", "StoreUnavailable", "decode_cursor",
    "encode_cursor", "group_rows", "open_store",
    "seq_gap_summary", "unit_reason",
]


class Store:
    """One database and its concerns; open it before use, close it after."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.registry = Registry(db)
        self.data = Data(db)
        self.control = Control(db)
        self.access = Access(db)
        self.anchors = Anchors(db)
        self.audit = Audit(db)
        self.rules = Rules(db)
        self.models = Models(db)

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def dialect(self) -> str:
        return self.db.dialect

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def migrate(self) -> int:
        return await self.db.migrate()  # type: ignore[attr-defined, no-any-return]

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def open_store(url: str) -> Store:
    """A store for ``url`` (``sqlite:///PATH`` or ``postgresql://…``); call ``await store.open()`` before use."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteDatabase

        return Store(SqliteDatabase(url))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresDatabase
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ValueError(f"PostgreSQL storage is not available: {exc}") from None
        return Store(PostgresDatabase(url))
    raise ValueError(f"storage URL {url!r} must start with sqlite:/// or postgresql://")
