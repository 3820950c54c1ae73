"""Clocks for simulator tests: the model's time never comes from the wall clock's time of day."""

from __future__ import annotations

import pytest

from carbonlink.simulators import clock as sim_clock
from carbonlink.simulators.clock import Paced as _Paced

# 2024-06-21 04:00 UTC: solar noon for the simulators' UTC+8 sites (boiler near mid-load, sun high).
NOON = 1_718_942_400.0
NOON_ISO = "2024-06-21T04:00:00Z"  # the same instant, for the simulator commands' --start


class StepClock:
    """Moves ``step`` seconds each time it is read: the same sequence of instants in every run."""

    def __init__(self, start: float = NOON, step: float = 1.0) -> None:
        self.t, self.step = start, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Paced(_Paced):
    """Model time from ``start`` (noon by default), moving with elapsed time: the same hour on every run."""

    def __init__(self, start: float = NOON, speed: float = 1.0) -> None:
        super().__init__(start, speed)


def forbid_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make a model that was given no clock fail loudly instead of following the time of day."""

    def wall() -> float:
        raise AssertionError("a simulator read the wall clock: give it clock= (tests/simulators/clocks.py)")

    monkeypatch.setattr(sim_clock, "_source", wall)


def fixed_wall_clock(monkeypatch: pytest.MonkeyPatch, at: float = NOON) -> None:
    """For paths that build their own models (a gateway's simulated source): the wall clock reads ``at``."""
    monkeypatch.setattr(sim_clock, "_source", lambda: at)
