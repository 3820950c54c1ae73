"""The supervisor stops a device even when the driver's library swallows a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from carbonlink.wire import Reading
from edge.drivers.base import Driver
from edge.supervisor import DeviceSupervisor


class SwallowingDriver(Driver):
    """Like a client library that catches CancelledError mid-request and waits on a reply that never comes."""

    kind = "test"

    async def session(self) -> AsyncIterator[list[Reading]]:
        yield [Reading.make(self.device_id, "p", 0, 1.0, "u")]
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            await never
        except asyncio.CancelledError:
            self.counters.bump("swallowed")
        await asyncio.get_running_loop().create_future()  # waits forever unless cancelled again


async def test_stop_cancels_again_until_the_task_ends() -> None:
    got: list[Reading] = []

    async def sink(rs: list[Reading]) -> None:
        got.extend(rs)

    drv = SwallowingDriver("dev", None)
    sup = DeviceSupervisor(drv, sink)
    sup.start()
    while not got:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(sup.stop(wait_s=0.1), timeout=5)
    assert sup.state == "stopped" and drv.counters.extra == {"swallowed": 1}
