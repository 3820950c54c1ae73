"""Real services for tests: under CI=true a missing one fails the test, elsewhere it skips with a how-to."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from carbonlink.commands.faults.lab import own_mosquitto as lab_mosquitto
from carbonlink.kernel.ports import free_port as _free_port
from carbonlink.kernel.ports import port_open

ROOT = Path(__file__).resolve().parents[1]  # the repository
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str, how: str) -> None:
    """Fail under CI=true, skip elsewhere, when a real service is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available: {how}")
    pytest.skip(f"{what} not available; to run this test: {how}")


async def until(check: Callable[[], object], within: float = 10.0, step: float = 0.05) -> None:
    """Wait until ``check()`` (a function, or one that returns an awaitable) is true; TimeoutError after
    ``within`` seconds. A wait for a real process, never an assert on how long it took."""
    async with asyncio.timeout(within):
        while True:
            got = check()
            if inspect.isawaitable(got):
                got = await got
            if got:
                return
            await asyncio.sleep(step)


def free_port() -> int:
    return _free_port()


def require_mosquitto_service() -> str:
    """The machine's Mosquitto on 127.0.0.1:1883; returns its URL."""
    require(port_open(1883), "Mosquitto on 127.0.0.1:1883",
            "start it with 'mosquitto -d -c /etc/mosquitto/mosquitto.conf'")
    return "mqtt://127.0.0.1:1883"


def require_postgres() -> str:
    require(port_open(5432), "PostgreSQL on 127.0.0.1:5432",
            "start it with 'pg_ctlcluster --skip-systemctl-redirect 15 main start'")
    return os.environ.get("CARBONLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def own_mosquitto(extra_conf: str = "", port: int | None = None,
                  anonymous: bool = True) -> Iterator[tuple[str, int, Path]]:
    """A private mosquitto on a free port (the fault lab's); fails under CI=true, skips elsewhere, if missing."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    require(Path(binary).exists(), "the mosquitto binary", "apt-get install -y mosquitto")
    with lab_mosquitto(extra_conf, port, anonymous) as started:
        yield started
