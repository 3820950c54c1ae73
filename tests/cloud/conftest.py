"""Fixtures for cloud tests: a store on a temp file, brokers (embedded amqtt and the machine's Mosquitto)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from carbonlink.cloud.broker import EmbeddedBroker
from carbonlink.cloud.store import Store, open_store
from tests.cloud.store.conftest import throwaway_store
from tests.services import require_mosquitto_service


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await s.open()
    yield s
    await s.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """The same test on both back ends (PostgreSQL in a throwaway schema)."""
    async with throwaway_store(request.param, tmp_path, "clcloud_") as s:
        yield s


@pytest.fixture(params=["amqtt", "mosquitto"])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "mosquitto":
        yield require_mosquitto_service()
        return
    async with EmbeddedBroker() as b:
        yield b.url
