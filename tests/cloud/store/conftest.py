"""One store fixture, two back ends: SQLite on a temp file and PostgreSQL in a throwaway schema."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from carbonlink.cloud.store import Store, open_store
from carbonlink.cloud.store.postgres import drop_schema
from tests.services import require_postgres


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL storage URL with a unique schema, dropped afterwards (parallel runs do not collide)."""
    base = require_postgres()
    schema = "cltest_" + uuid.uuid4().hex[:12]
    yield f"{base}?schema={schema}"
    await drop_schema(base, schema)


@contextlib.asynccontextmanager
async def throwaway_store(kind: str, tmp_path: Path, prefix: str = "cltest_") -> AsyncIterator[Store]:
    """An open store: SQLite on a temp file, or PostgreSQL in a unique schema dropped afterwards."""
    base = schema = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    else:
        base, schema = require_postgres(), prefix + uuid.uuid4().hex[:12]
        url = f"{base}?schema={schema}"
    s = open_store(url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if base and schema:
            await drop_schema(base, schema)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with throwaway_store(request.param, tmp_path) as s:
        yield s
