"""Clocks for simulator tests: the model's time never comes from the wall clock's time of day."""

from __future__ import annotations

import time

# 2024-06-21 04:00 UTC: solar noon for the simulators' UTC+8 sites (boiler near mid-load, sun high).
NOON = 1_718_942_400.0


class StepClock:
    """Moves ``step`` seconds each time it is read: the same sequence of instants in every run."""

    def __init__(self, start: float = NOON, step: float = 1.0) -> None:
        self.t, self.step = start, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


class Paced:
    """For tests that run real servers: model time starts at ``start`` and moves with elapsed (monotonic)
    time, so a test sees the same hour of the same day whenever it runs."""

    def __init__(self, start: float = NOON, speed: float = 1.0) -> None:
        self.start, self.speed, self.origin = start, speed, time.monotonic()

    def __call__(self) -> float:
        return self.start + (time.monotonic() - self.origin) * self.speed
