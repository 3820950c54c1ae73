"""The time simulated devices live in: the wall clock unless the caller injects a clock.

Every model (CEMS stack, inverter, meter, forest, fleets) takes ``clock`` and ``seed``; its values are
a function of (seed, clock()), so the same seed at the same instant gives the same registers. A
running demo or lab uses the wall clock; a test passes its own (``tests/simulators/clocks.py``),
and the test suites of the simulators and drivers turn ``wall_clock`` into an error so that no test
can come to depend on the time of day (issue 11 §9: a check failed at 0.74 % of a day's instants).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

Clock = Callable[[], float]

_source: Clock = time.time  # replaced by the tests' guard


def wall_clock() -> float:
    """Seconds since the epoch, now: the default clock of every model."""
    return _source()


class Paced:
    """Model time that starts at ``start`` and moves with elapsed (monotonic) time, ``speed`` times as fast:
    the same hour of the same day whenever it runs."""

    def __init__(self, start: float, speed: float = 1.0) -> None:
        self.start, self.speed, self.origin = start, speed, time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.origin) * self.speed


def parse_start(text: str) -> float:
    """``--start`` of the simulator commands: an ISO 8601 UTC time (``2024-06-21T04:00:00Z``) to epoch seconds."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time such as 2024-06-21T04:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; end it with Z for UTC")
    return when.timestamp()


def start_clock(start: str | None) -> Clock:
    """The clock of a simulator command: the wall clock, or paced from ``--start``."""
    return wall_clock if start is None else Paced(parse_start(start))
