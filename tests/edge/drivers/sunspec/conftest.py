"""Helpers for the SunSpec tests: a daytime inverter and a driver bound to a simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from carbonlink.edge.drivers.sunspec import SunSpecDevice, SunSpecDriver
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.inverter import SolarInverter
from tests.simulators.clocks import Paced

# 2024-06-21 04:00 UTC: solar noon for the simulator's UTC+8 site, so power is never zero.
NOON = 1718942400.0


def noon_inverter(seed: int = 1, **kwargs: Any) -> SolarInverter:
    """Noon of the same day on every run, moving on with elapsed time."""
    return SolarInverter(seed=seed, clock=Paced(NOON), **kwargs)


def make_driver(port: int, **kwargs: Any) -> SunSpecDriver:
    settings = SunSpecDevice(id="inv-1", driver="sunspec", host="127.0.0.1", port=port,
                             poll_interval_s=kwargs.pop("poll_interval_s", 0.02),
                             timeout_s=kwargs.pop("timeout_s", 0.5), **kwargs)
    return SunSpecDriver("inv-1", settings)


def by_point(readings: list[Reading]) -> dict[str, Reading]:
    out = {r.point: r for r in readings}
    assert len(out) == len(readings), "a point was published twice in one poll"
    return out


async def first_poll(driver: SunSpecDriver) -> tuple[AsyncIterator[list[Reading]], dict[str, Reading]]:
    """Open a session and return it with its first poll (close it with aclose())."""
    session = driver.session()
    return session, by_point(await anext(session))
