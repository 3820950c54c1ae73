"""Helpers for the OPC-UA tests: device settings for a simulator, batch collection, task accounting."""

from __future__ import annotations

import asyncio
from typing import Any

from carbonlink.edge.drivers.opcua import OpcUaDevice, OpcUaDriver
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems_opcua import UNITS, CemsOpcUaServer


def device(sim: CemsOpcUaServer, *, by: str = "node_id", points: list[str] | None = None,
           **kw: Any) -> OpcUaDevice:
    """Settings reading the simulator's points by node id or by browse path."""
    keys = points or list(sim.node_ids)
    addr = sim.node_ids if by == "node_id" else sim.browse_paths
    nodes = [{"name": k, by: addr[k], "unit": UNITS[k]} for k in keys]
    base: dict[str, Any] = {"id": "stack1", "driver": "opcua", "endpoint": sim.url, "poll_interval_s": 0.1,
                            "keepalive_s": 1.0, "watchdog_s": 1.0, "timeout_s": 2.0, "nodes": nodes}
    base.update(kw)
    return OpcUaDevice.model_validate(base)


async def take(driver: OpcUaDriver, n: int, within: float = 10.0) -> list[list[Reading]]:
    """Run one session until it yields ``n`` batches, then close it."""
    batches: list[list[Reading]] = []

    async def run() -> None:
        gen = driver.session()
        try:
            async for batch in gen:
                batches.append(batch)
                if len(batches) >= n:
                    return
        finally:
            await gen.aclose()

    await asyncio.wait_for(run(), within)
    return batches


def _server_side(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    name = code.co_filename if code is not None else ""
    return "/asyncua/server/" in name or "/simulators/" in name


def foreign_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Client-side tasks started since ``before`` and still alive: a leak once a session has ended.

    The simulator's own tasks are left out: a server restarted during a test owns new ones.
    """
    me = asyncio.current_task()
    return sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks()  # type: ignore[union-attr]
                  if t not in before and t is not me and not t.done() and not _server_side(t))


async def settle_tasks(before: set[asyncio.Task[Any]], wait: float = 2.0) -> list[str]:
    """Give short-lived tasks (handler dispatch, socket close) a moment, then report what is left."""
    loop = asyncio.get_running_loop()
    end = loop.time() + wait
    while True:
        left = foreign_tasks(before)
        if not left or loop.time() > end:
            return left
        await asyncio.sleep(0.05)


