"""The cloud service stops for certain: a task of its own that loses one cancellation (Python 3.11's
wait_for can swallow one) is cancelled again, not awaited for ever (kernel.tasks.cancel_and_wait)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carbonlink.cloud.broker import EmbeddedBroker
from carbonlink.cloud.rules_service import RulesService
from carbonlink.cloud.service import CloudService, running_cloud
from tests.services import free_port


def swallowing_once(lost: list[str], name: str):  # type: ignore[no-untyped-def]
    """A task body that ignores the first cancellation it gets, as a lost one would be ignored."""
    async def body(self: object) -> None:
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if name in lost:
                    raise
                lost.append(name)
    return body


async def test_stop_ends_though_a_task_loses_a_cancellation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    lost: list[str] = []
    monkeypatch.setattr(CloudService, "_refresh_rollups", swallowing_once(lost, "rollups"))
    monkeypatch.setattr(RulesService, "_writer", swallowing_once(lost, "rules-writer"))

    async def use() -> None:
        async with EmbeddedBroker() as broker, \
                running_cloud(f"sqlite:///{tmp_path / 'cloud.sqlite'}", broker.url, http_port=free_port()):
            await asyncio.sleep(0.2)

    user = asyncio.create_task(use())
    done, _ = await asyncio.wait({user}, timeout=60)  # the old stop never ended: a bound for "for ever"
    if not done:
        user.cancel()
    assert user in done and user.exception() is None
    assert sorted(lost) == ["rollups", "rules-writer"]
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name() in ("rollups", "rules-writer")
            and not t.done()] == []
