"""Real services for tests: under CI=true a missing one fails the test, elsewhere it skips with a how-to."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from carbonlink.kernel.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parents[1]  # the repository
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str, how: str) -> None:
    """Fail under CI=true, skip elsewhere, when a real service is missing."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available: {how}")
    pytest.skip(f"{what} not available; to run this test: {how}")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    return _free_port()


def require_mosquitto_service() -> str:
    """The machine's Mosquitto on 127.0.0.1:1883; returns its URL."""
    require(port_open("127.0.0.1", 1883), "Mosquitto on 127.0.0.1:1883",
            "start it with 'mosquitto -d -c /etc/mosquitto/mosquitto.conf'")
    return "mqtt://127.0.0.1:1883"


def require_postgres() -> str:
    require(port_open("127.0.0.1", 5432), "PostgreSQL on 127.0.0.1:5432",
            "start it with 'pg_ctlcluster --skip-systemctl-redirect 15 main start'")
    return os.environ.get("CARBONLINK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def own_mosquitto(extra_conf: str = "", port: int | None = None,
                  anonymous: bool = True) -> Iterator[tuple[str, int, Path]]:
    """Start a private mosquitto on a free port with the given extra config; yields (url, port, dir)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    require(Path(binary).exists(), "the mosquitto binary", "apt-get install -y mosquitto")
    port = port or free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "mosquitto.conf"
        # Started as root, mosquitto drops to its own user before reading password and ACL files,
        # which then cannot read a test's private temp folder.
        user_line = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous {str(anonymous).lower()}\n"
                        f"persistence false\n{user_line}{extra_conf}\n")
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(100):
                if port_open("127.0.0.1", port, 0.1):
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {proc.stderr.read().decode() if proc.stderr else ''}")
                time.sleep(0.05)
            yield f"mqtt://127.0.0.1:{port}", port, Path(d)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
