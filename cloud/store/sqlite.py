"""SQLite (WAL): the embedded default, no setup.

One writer connection: a transaction holds an asyncio lock, so statements of other coroutines never
land inside it; single statements take the lock too. Reads that are not part of a transaction go to
a second connection (WAL gives it a consistent snapshot without blocking the writer), and every export
stream opens a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiosqlite

from .db import Conn, Database
from .migrations_sqlite import MIGRATIONS


def _dicts(cur: aiosqlite.Cursor, rows: Iterable[Any]) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in rows]


class _SqliteConn(Conn):
    def __init__(self, con: aiosqlite.Connection, db: SqliteDatabase) -> None:
        self.con, self.db = con, db

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        t = time.perf_counter()
        cur = await self.con.execute(sql, args)
        rows = _dicts(cur, await cur.fetchall())
        self.db.observe(sql, t)
        return rows

    async def execute(self, sql: str, *args: Any) -> int:
        t = time.perf_counter()
        cur = await self.con.execute(sql, args)
        self.db.observe(sql, t)
        return cur.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        t = time.perf_counter()
        await self.con.executemany(sql, rows)
        self.db.observe(sql, t)

    async def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        marks = ",".join("?" * len(columns))
        await self.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})", rows)

    async def bulk(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self.executemany(sql.replace("{rows}", "VALUES (" + ",".join("?" * len(types)) + ")"), rows)

    async def bulk_returning(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
                             ) -> list[dict[str, Any]]:
        one = sql.replace("{rows}", "VALUES (" + ",".join("?" * len(types)) + ")")
        out: list[dict[str, Any]] = []
        for row in rows:
            out += await self.fetch(one, *row)
        return out


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str) -> None:
        self.url = url
        path, _, query = url.removeprefix("sqlite:///").partition("?")
        self.path = Path(path)
        opts = dict(parse_qsl(query))
        unknown = set(opts) - {"busy_timeout_ms"}
        if unknown:
            raise ValueError(f"unknown SQLite URL option(s) {sorted(unknown)}; the one known is busy_timeout_ms")
        # How long a write waits for a lock held elsewhere before the store counts as unavailable.
        self.busy_timeout_ms = int(opts.get("busy_timeout_ms", "5000"))
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self, *, readonly: bool = False) -> aiosqlite.Connection:
        con = await aiosqlite.connect(self.path, isolation_level=None)
        if readonly:
            await con.execute("PRAGMA query_only=ON")
            con.row_factory = sqlite3.Row  # fetch() reads the column names off each row
        else:
            await con.execute("PRAGMA journal_mode=WAL")
            await con.execute("PRAGMA synchronous=NORMAL")
        await con.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return con

    async def open(self) -> None:
        # The database holds node secrets and password hashes: its folder and files are the owner's only.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        self._writer = await self._connect()
        await self.migrate()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(f"{self.path}{suffix}", 0o600)
        self._reader = await self._connect(readonly=True)

    async def migrate(self) -> int:
        con = self._need(self._writer)
        await con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = await (await con.execute("SELECT max(version) FROM schema_version")).fetchone()
        current = (row[0] if row else None) or 0
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            await con.execute("BEGIN IMMEDIATE")
            try:
                await step(con)
                await con.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
                await con.execute("COMMIT")
            except BaseException:
                await con.execute("ROLLBACK")
                raise
        return len(MIGRATIONS)

    async def close(self) -> None:
        for con in (self._reader, self._writer):
            if con is not None:
                await con.close()
        self._reader = self._writer = None

    @staticmethod
    def _need(con: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if con is None:
            raise RuntimeError("store is not open; call await store.open() first")
        return con

    # --- statements outside a transaction -----------------------------------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        # One job on the reader's thread: with execute and fetchall as two awaits, another read ran in
        # between inside the first one's still-open statement, on its older snapshot, and missed rows
        # committed just before it was asked (an anchor job written, then "not found").
        t = time.perf_counter()
        rows = await self._need(self._reader).execute_fetchall(sql, args)
        self.observe(sql, t)
        return [dict(zip(r.keys(), r, strict=True)) for r in rows]

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._lock:
            return await _SqliteConn(self._need(self._writer), self).execute(sql, *args)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.executemany(sql, rows)

    async def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.insert_rows(table, columns, rows)

    async def bulk(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        async with self.transaction() as tx:
            await tx.bulk(sql, types, rows)

    async def bulk_returning(self, sql: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
                             ) -> list[dict[str, Any]]:
        async with self.transaction() as tx:
            return await tx.bulk_returning(sql, types, rows)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        con = self._need(self._writer)
        async with self._lock:
            await con.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConn(con, self)
            except BaseException:
                await con.execute("ROLLBACK")
                raise
            await con.execute("COMMIT")

    async def stream(self, sql: str, *args: Any, chunk: int = 2000) -> AsyncIterator[list[dict[str, Any]]]:
        con = await self._connect(readonly=True)
        try:
            cur = await con.execute(sql, args)
            while rows := await cur.fetchmany(chunk):
                yield _dicts(cur, rows)
        finally:
            await con.close()

    def is_unavailable(self, exc: BaseException) -> bool:
        if isinstance(exc, sqlite3.OperationalError):
            text = str(exc).lower()
            return any(s in text for s in ("locked", "busy", "disk", "unable to open", "readonly", "i/o"))
        return isinstance(exc, OSError | sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError)

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})"

    def round_half_up(self, expr: str) -> str:
        return f"CAST(({expr}) + 0.5 AS INTEGER)"  # truncation of a non-negative value + 0.5
