"""What every command shares: one way to fail, a store for the length of a command, signals, logging, output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from carbonlink.cloud.store import Store

T = TypeVar("T")

DEFAULT_DB = "sqlite:///var/cloud/cloud.sqlite"
DbOpt = Annotated[str, typer.Option("--db", envvar="CARBONLINK_DB",
                                    help="storage URL: sqlite:///PATH or postgresql://user@host/db")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print why a command cannot go on (and what to do) and return the exit to raise: ``raise fail(...)``."""
    err.print(f"[red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


async def open_store(db: str, *, create: bool = True) -> Store:
    """An open store for ``db``, or a clear failure when the URL is wrong or the database is unreachable.

    ``create=False`` for commands that only read: a SQLite file that is not there is an error, not a new,
    empty database.
    """
    from carbonlink.cloud.store import open_store as _open

    if not create and _sqlite_missing(db):
        raise fail(f"{db.removeprefix('sqlite:///')} does not exist: start the cloud store first"
                   " (carbonlink cloud serve) or pass --db with the cloud's storage URL")

    try:
        store = _open(db)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        await store.open()
    except OSError as exc:
        raise fail(f"cannot reach the database at {redact_url(db)}: {exc}; is it running?") from None
    _attach_key_ring(store)
    return store


def _attach_key_ring(store: Store) -> None:
    """Let a command read sealed node secrets when the cloud's key ring is at hand (never made here)."""
    from pydantic import ValidationError

    from carbonlink.cloud.secretbox import SecretKeyError
    from carbonlink.cloud.settings import CloudSettings

    try:
        store.registry.attach_secrets(CloudSettings().secret_box(create=False))
    except ValidationError:
        return  # the cloud's settings are not in this shell's environment: nothing to attach
    except (SecretKeyError, OSError) as exc:
        err.print(f"[yellow]note:[/] the cloud's secret key ring is not usable here ({exc}); commands that need an"
                  " HMAC node's secret will say so")


def _sqlite_missing(db: str) -> bool:
    return db.startswith("sqlite:///") and not os.path.exists(db.removeprefix("sqlite:///").partition("?")[0])


@contextlib.asynccontextmanager
async def store_for(db: str, *, create: bool = True) -> AsyncIterator[Store]:
    """An open store for the length of a block (``async with store_for(db) as store``)."""
    store = await open_store(db, create=create)
    try:
        yield store
    finally:
        await store.close()


def with_store(db: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Run ``fn(store)`` on a store opened for this command only."""
    async def go() -> T:
        store = await open_store(db)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(go())


def redact_url(url: str) -> str:
    """A URL safe to print: any password replaced by ***."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_until_signal(coro: Coroutine[Any, Any, T]) -> T | None:
    """Run a coroutine; Ctrl-C and SIGTERM stop it cleanly through cancellation."""
    async def main() -> T | None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return None

    return asyncio.run(main())


def table(rows: Sequence[dict[str, Any]], cols: Sequence[str], title: str, *, width: int = 80) -> None:
    """Rows as a readable table on stdout; long cells are cut at ``width``."""
    t = Table(title=title)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r[c])[:width] for c in cols))
    out.print(t)


def emit(data: Any, as_json: bool, title: str, cols: Sequence[str] | None = None) -> None:
    """JSON for scripts, a table for people: a list of rows or one mapping shown as key/value."""
    if as_json:
        print(json.dumps(data, default=str))
        return
    if isinstance(data, dict):
        t = Table(title=title, show_header=False)
        for k, v in data.items():
            t.add_row(str(k), str(v))
        out.print(t)
        return
    table(data, cols or (list(data[0]) if data else []), title)
