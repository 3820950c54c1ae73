"""One SQL layer for SQLite and PostgreSQL.

Queries are written once, with ``?`` placeholders, in the concern modules (registry, data, control,
access, anchors, audit). A ``Database`` runs them on its back end: PostgreSQL gets ``$1, $2, …``
(translated once per statement text and cached). What truly differs between the engines is a
dialect hook here (``greatest``/``least``, ``returning_id``) or lives in the back end's own module:
bulk writes (COPY against executemany), partitions, migrations, TimescaleDB.

Every failure of the database itself surfaces as ``StoreUnavailable`` from the concern methods that
the ingest calls, so it can tell "the store is down, retry" from "this message is bad".
"""

from __future__ import annotations

import abc
import functools
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

QueryObserver = Callable[[str, float], None]  # (label, seconds), e.g. a Prometheus histogram


@functools.lru_cache(maxsize=4096)
def numbered(sql: str) -> str:
    """``?`` placeholders to ``$1 … $n`` (our SQL never has a ``?`` inside a literal)."""
    n = 0

    def repl(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return re.sub(r"\?", repl, sql)


@functools.lru_cache(maxsize=4096)
def label_of(sql: str) -> str:
    """A short label for metrics: the verb and the first table, e.g. ``insert batches``."""
    m = re.match(r"\s*(?:WITH\b.*?\)\s*)?(\w+)", sql, re.S)
    verb = m.group(1).lower() if m else "sql"
    t = re.search(r"\b(?:FROM|INTO|UPDATE|TABLE)\s+([a-z_]+)", sql, re.I)
    return f"{verb} {t.group(1)}" if t else verb


class Conn(abc.ABC):
    """Statements on one connection (inside a transaction, or a pooled one for a single statement)."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; returns the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))

    @abc.abstractmethod
    async def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Bulk insert that fails on a duplicate key (COPY on PostgreSQL, executemany on SQLite)."""

    @abc.abstractmethod
    async def bulk(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Run ``sql`` over many rows: its ``{rows}`` becomes the row source of the dialect.

        Written once, e.g. ``INSERT INTO latest(series, ts_ms) {rows} ON CONFLICT (series) DO UPDATE …``;
        PostgreSQL reads the rows from ``unnest`` of one array per column (``types`` names the
        PostgreSQL element types), SQLite runs ``VALUES (?, …)`` once per row in one call.
        """

    @abc.abstractmethod
    async def bulk_returning(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
                             ) -> list[dict[str, Any]]:
        """``bulk`` for a statement with ``RETURNING``: the rows it returned."""


class Database(Conn):
    """A back end: statements outside a transaction, transactions, streaming reads, dialect hooks."""

    dialect: str = ""
    url: str = ""
    observer: QueryObserver | None = None

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Conn]:
        """One transaction on one connection; committed on exit, rolled back on an exception."""

    @abc.abstractmethod
    def stream(self, sql: str, *args: Any, chunk: int = 2000) -> AsyncIterator[list[dict[str, Any]]]:
        """Rows of one query in chunks, on a connection of its own, so a long export never holds up ingest."""

    @abc.abstractmethod
    def is_unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the database failing (connection, disk, lock time-out), not a bad statement."""

    # --- dialect hooks ------------------------------------------------------------------------------

    async def prepare_for(self, timestamps: set[int]) -> None:
        """Make whatever storage these reading times need before a commit (PostgreSQL: month partitions)."""

    async def lock_for(self, tx: Conn, name: str) -> None:
        """Hold ``name`` until ``tx`` ends, so two transactions that rebuild the same derived rows (DELETE,
        then INSERT … SELECT) run one after the other. SQLite serialises writers already; PostgreSQL
        takes a transaction advisory lock."""

    def greatest(self, a: str, b: str) -> str:
        return f"greatest({a}, {b})"

    def least(self, a: str, b: str) -> str:
        return f"least({a}, {b})"

    def round_half_up(self, expr: str) -> str:
        """A non-negative double to the nearest whole number, halves up, as an integer (PostgreSQL casts a
        double to bigint by rounding half to even, SQLite truncates: neither is the rule we want)."""
        return f"CAST(floor(({expr}) + 0.5) AS BIGINT)"

    def observe(self, sql: str, started: float) -> None:
        if self.observer is not None:
            self.observer(label_of(sql), time.perf_counter() - started)
