"""A device restarted or removed at run time leaves no poller behind, even when its driver loses a
cancellation (pymodbus can swallow one mid-request): the old supervisor is stopped for certain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import load_gateway_config
from carbonlink.edge.supervisor import DeviceSupervisor
from tests.services import free_port


async def test_disabled_device_stops_though_its_poller_loses_a_cancellation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lost: list[asyncio.Task[None] | None] = []

    async def run(self: DeviceSupervisor) -> None:  # a poll loop whose driver swallows the first cancellation
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if asyncio.current_task() in lost:
                    raise
                lost.append(asyncio.current_task())  # type: ignore[arg-type]

    monkeypatch.setattr(DeviceSupervisor, "run", run)
    cfg = {"gateway": {"id": "gw-rs", "site": "plant-a", "key_file": "gw.key", "data_dir": "edge"},
           "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},  # no broker: the cloud link is not under test
           "devices": [{"id": "stack-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": free_port(),
                        "poll_interval_s": 1, "pointmap": "cems"}]}
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
    agent = EdgeAgent(load_gateway_config(tmp_path / "gateway.yaml"))
    await agent.start()
    try:
        await asyncio.sleep(0.1)  # the poll loop runs (a task cancelled before its first step never runs)
        first = agent.supervisors["stack-1"]._task
        assert first is not None
        agent.set_device("stack-1", enabled=True, poll_interval_s=2, points=None)  # a restart: new settings
        second = agent.supervisors["stack-1"]._task
        assert second is not None and second is not first
        await asyncio.sleep(0.1)
        agent.set_device("stack-1", enabled=False, poll_interval_s=None, points=None)  # and off
        assert "stack-1" not in agent.supervisors
        done, _ = await asyncio.wait({first, second}, timeout=10)  # before: the first one never ended
        assert done == {first, second} and first.cancelled() and second.cancelled()
        assert lost == [first, second]  # each swallowed one cancellation and was cancelled again
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("supervisor") and not t.done()]
    finally:
        await agent.stop()
