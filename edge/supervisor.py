"""One supervisor per device: runs the driver's sessions with backoff, forever.

Logs once when a device fails and once when it recovers, not on every retry.
An unexpected exception is logged with its traceback and treated as a failure:
the poll loop never dies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.tasks import cancel_and_wait, failure
from carbonlink.kernel.wire import Reading

from .drivers.base import ConnectionState, Driver, DriverError, DriverUnavailable

log = logging.getLogger(__name__)

ReadingSink = Callable[[list[Reading]], Awaitable[None]]


class DeviceSupervisor:
    def __init__(
        self,
        driver: Driver,
        sink: ReadingSink,
        backoff: Backoff | None = None,
        unavailable_retry: float = 300.0,
    ) -> None:
        self.driver = driver
        self.sink = sink
        self.backoff = backoff or Backoff(initial=0.5, cap=30.0)
        self.unavailable_retry = unavailable_retry
        self.state = ConnectionState.IDLE
        self.failing_since: float | None = None
        self._said_unavailable = False  # each retry passes through CONNECTING; say it once until it works
        self._task: asyncio.Task[None] | None = None

    @property
    def counters(self):
        return self.driver.counters

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"supervisor {self.driver.describe()}")
        return self._task

    async def stop(self, *, attempts: int = 20, wait_s: float = 0.5) -> None:
        """Cancel the device's task and wait for it to end.

        A library may swallow one cancellation (pymodbus can, mid-request, and then waits
        on a reply that never comes), so cancel again until the task really ends.
        """
        task = self._task
        if task is not None:
            await cancel_and_wait([task], attempts=attempts, wait_s=wait_s, what="device")
            if (exc := failure(task)) is not None:
                log.error("%s ended with an error", self.driver.describe(), exc_info=exc)
        self.state = ConnectionState.STOPPED

    async def run(self) -> None:
        name = self.driver.describe()
        while True:
            self.state = ConnectionState.CONNECTING
            try:
                async for readings in self.driver.session():
                    if self.state is not ConnectionState.ONLINE:
                        self._online(name)
                    self.driver.counters.polls += 1
                    self.driver.counters.readings += len(readings)
                    if readings:
                        await self.sink(readings)
                # A session that ends by itself is treated like a dropped connection.
                raise DriverError("session ended")
            except asyncio.CancelledError:
                raise
            except DriverUnavailable as exc:
                if not self._said_unavailable:
                    log.warning("%s unavailable on this host: %s", name, exc)
                    self._said_unavailable = True
                self.state = ConnectionState.UNAVAILABLE
                self.driver.counters.last_error = str(exc)
                await asyncio.sleep(self.unavailable_retry)
                continue
            except (DriverError, OSError, TimeoutError) as exc:
                self._failed(name, exc, unexpected=False)
            except Exception as exc:  # the loop must survive driver bugs; the traceback is logged
                self._failed(name, exc, unexpected=True)
            self.state = ConnectionState.BACKOFF
            await asyncio.sleep(self.backoff.next_delay())

    def _online(self, name: str) -> None:
        if self.failing_since is not None:
            log.info("%s recovered after %.1f s", name, time.monotonic() - self.failing_since)
            self.driver.counters.reconnects += 1
        self.failing_since = None
        self._said_unavailable = False
        self.backoff.reset()
        self.state = ConnectionState.ONLINE

    def _failed(self, name: str, exc: BaseException, *, unexpected: bool) -> None:
        self.driver.counters.errors += 1
        self.driver.counters.last_error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            if unexpected:
                log.error("%s failed unexpectedly; retrying with backoff", name, exc_info=exc)
            else:
                log.warning("%s failed: %s; retrying with backoff", name, self.driver.counters.last_error)
