"""Shared fixtures. Tests needing a real service use tests/services.py: fail under CI=true, skip elsewhere."""

from __future__ import annotations

import pytest

from carbonlink.commands import simsources
from tests.services import free_port

simsources.install()  # agents in tests read simulated forest plots, as `carbonlink edge run` does


@pytest.fixture
def port() -> int:
    return free_port()
