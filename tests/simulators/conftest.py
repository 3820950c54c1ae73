"""Simulator tests: models run on injected clocks, never on the time of day."""

from __future__ import annotations

import pytest

from tests.simulators.clocks import forbid_wall_clock


@pytest.fixture(autouse=True)
def _no_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_wall_clock(monkeypatch)
