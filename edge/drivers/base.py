"""The one small interface every protocol driver implements.

A driver owns one device. Its ``session()`` is an async generator: it connects,
then yields lists of readings until the connection fails, when it raises. The
supervisor (edge/supervisor.py) runs sessions again and again with backoff, so
a driver never loops over reconnects itself and never touches MQTT.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Reading

log = logging.getLogger(__name__)


class ConnectionState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    ONLINE = "online"
    BACKOFF = "backoff"
    UNAVAILABLE = "unavailable"  # the platform lacks what the driver needs (e.g. no Bluetooth stack)
    STOPPED = "stopped"


class DriverError(Exception):
    """An expected failure talking to a device (refused, timed out, protocol error)."""


class DriverUnavailable(DriverError):
    """The host cannot run this driver at all; the supervisor says so once and stops retrying fast."""


@dataclass
class DriverCounters:
    """Figures every driver keeps; the agent exposes them."""

    polls: int = 0
    readings: int = 0
    errors: int = 0
    rejected: int = 0  # inputs refused as invalid (bad CRC, unknown code, other vendor's advert)
    reconnects: int = 0
    last_error: str = ""
    extra: dict[str, int] = field(default_factory=dict)

    def bump(self, name: str, n: int = 1) -> None:
        self.extra[name] = self.extra.get(name, 0) + n


class LogEvents:
    """The event sink a driver has until the agent gives it its own: events are logged, never dropped silently."""

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        level = logging.INFO if severity == "info" else logging.WARNING
        log.log(level, "event %s device=%s point=%s %s", kind, device, point, json.dumps(body or {})[:500])


class Driver(abc.ABC):
    """Base class for one device's driver.

    ``events`` is where the driver reports what is not a reading (a refused station, say); the agent
    sets its signed event pipeline (``build_driver(..., events=...)``).
    """

    kind: ClassVar[str]

    def __init__(self, device_id: str, settings: Any) -> None:
        self.device_id = device_id
        self.settings = settings
        self.counters = DriverCounters()
        self.events: EventSink = LogEvents()

    @abc.abstractmethod
    def session(self) -> AsyncIterator[list[Reading]]:
        """Connect, then yield readings until the connection fails (raise DriverError/OSError)."""

    def describe(self) -> str:
        return f"{self.kind}:{self.device_id}"


async def ticks(interval_s: float) -> AsyncGenerator[None, None]:
    """Yield at a fixed rate, starting now, for poll loops.

    A caller that falls behind (a slow device or line) skips the missed ticks
    rather than polling in a burst to catch up.
    """
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        yield
        next_at += interval_s
        delay = next_at - loop.time()
        if delay < 0:
            next_at, delay = loop.time(), 0.0
        await asyncio.sleep(delay)
