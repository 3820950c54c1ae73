"""Shared fixtures. Tests needing a real service use tests/services.py: fail under CI=true, skip elsewhere."""

from __future__ import annotations

import pytest

from tests.services import free_port


@pytest.fixture
def port() -> int:
    return free_port()
