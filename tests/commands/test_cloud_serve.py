"""`carbonlink cloud serve` with broker credentials: never prints the password; bad settings stop it at start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from carbonlink.commands.faults.lab import stop_process
from tests.services import ROOT, free_port, own_mosquitto

SERVE = [sys.executable, "-m", "carbonlink.cli", "cloud", "serve"]
SECRET = "t0p-s3cret-pw"


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CARBONLINK_MQTT_")} | extra


def test_cloud_up_line_shows_the_user_but_never_the_password(tmp_path: Path) -> None:
    with own_mosquitto() as (_url, port, _d):  # anonymous: any user and password are let in
        proc = subprocess.Popen(
            [*SERVE, "--mqtt", f"mqtt://carbonlink-ingest:{SECRET}@127.0.0.1:{port}",
             "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", "--port", str(free_port())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=_env())
        lines = []
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
                if "cloud up:" in line:
                    break
        finally:
            stop_process(proc, 10)
        rest = proc.stdout.read() if proc.stdout else ""
    text = "".join(lines) + rest
    up = [x for x in lines if "cloud up:" in x]
    assert up, text
    assert f"carbonlink-ingest@127.0.0.1:{port}" in up[0]
    assert SECRET not in text


def _refused(*args: str, **env: str) -> str:
    proc = subprocess.run([*SERVE, *args, "--db", "sqlite:///:memory:"], capture_output=True, text=True, cwd=ROOT,
                          env=_env(**env), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    return " ".join((proc.stdout + proc.stderr).split())


def test_bad_broker_settings_stop_the_cloud_with_the_key_and_the_fix(tmp_path: Path) -> None:
    out = _refused("--mqtt", "mqtts://127.0.0.1?cafile=/nonexistent/ca.crt")
    assert "cafile=/nonexistent/ca.crt" in out and "no such file" in out
    out = _refused("--mqtt", f"mqtt://u:{SECRET}@127.0.0.1", CARBONLINK_MQTT_PASSWORD=SECRET)
    assert "CARBONLINK_MQTT_PASSWORD" in out and "one place" in out
    out = _refused("--mqtt", "mqtt://u@127.0.0.1", CARBONLINK_MQTT_PASSWORD_FILE=str(tmp_path / "missing"))
    assert "CARBONLINK_MQTT_PASSWORD_FILE=" in out and "cannot read it" in out
