"""The supervisor stops a device even when the driver's library swallows a cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from carbonlink.edge.drivers.base import Driver
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.wire import Reading


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


async def test_cancel_and_wait_stops_a_task_that_swallows_cancellations() -> None:
    from carbonlink.kernel.tasks import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while swallowed < 2:  # loses two cancellations, as a wait_for race or a library might
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
        await asyncio.sleep(3600)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    left = await asyncio.wait_for(cancel_and_wait([task], wait_s=0.05), 5)
    assert left == [] and task.cancelled() and swallowed == 2
    # And the helper gives up, saying so, on a task that never stops.
    forever = asyncio.create_task(stubborn())
    swallowed = -10**9
    await asyncio.sleep(0)
    assert await cancel_and_wait([forever], attempts=3, wait_s=0.01) == [forever]
    swallowed = 1  # let it stop now: one more lost cancellation, then it ends
    assert await cancel_and_wait([forever], wait_s=0.05) == [] and forever.cancelled()


async def test_cancel_and_wait_finishes_its_rounds_when_its_caller_is_cancelled() -> None:
    """An owner stopped from outside while it stops its own task (cancel_and_wait in a finally) still
    stops that task, then raises the cancellation: a cut-short cleanup left the task running, ownerless."""
    from carbonlink.kernel.tasks import cancel_and_wait

    lost: list[int] = []

    async def child() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(1)

    inner = asyncio.create_task(child())

    async def owner() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await cancel_and_wait([inner], wait_s=0.2)

    outer = asyncio.create_task(owner())
    await asyncio.sleep(0)
    outer.cancel()
    await asyncio.sleep(0.05)  # inside its finally now, waiting on the child that lost a cancellation
    outer.cancel()  # stopped again, as a supervisor's next round does
    done, _ = await asyncio.wait({outer}, timeout=5)
    assert outer in done and outer.cancelled()
    assert inner.cancelled() and lost == [1]
