"""Issue 11 §1: a gateway installed with only ``pip install '.[edge]'`` runs end to end.

A fresh virtual environment gets the project with the ``edge`` extra and nothing else (pip's cache and
the machine's package index make it quick; dependencies are resolved for real, so a missing one fails
here). Its ``carbonlink edge run`` reads a simulated CEMS over Modbus TCP and delivers signed batches
through the machine's Mosquitto to a cloud running from the full development environment (this
process), which commits them. The edge venv must not even contain the cloud's or the chain's libraries.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from carbonlink.cloud.service import running_cloud
from carbonlink.edge.identity import load_or_create_key, public_key_hex
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.services import ROOT, free_port, require_mosquitto_service
from tests.simulators.clocks import Paced

# What the source distribution needs: the package (its folders are links into the layout) and metadata.
SOURCES = ("pyproject.toml", "README.md", "carbonlink", "edge", "cloud", "rules", "simulators", "contracts")
IGNORE = shutil.ignore_patterns("node_modules", "__pycache__", "*.pyc", "*.sqlite*", "build", "*.egg-info")
# The cloud's and the chain's libraries (aiosqlite is not here: asyncua needs it).
HEAVY = ("fastapi", "uvicorn", "web3", "eth_account", "py_ecc", "asyncpg", "sqlalchemy", "amqtt",
         "onnxruntime", "numpy")
# The install resolves and builds for real: on a loaded 2-core machine it outlasts the suite's 120 s default.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def edge_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A venv with ``pip install '.[edge]'`` of a copy of the working tree (the build writes into the copy)."""
    base = tmp_path_factory.mktemp("edge-install")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=IGNORE)
        else:
            shutil.copy2(path, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The full venv's pip installs into the new one (--python): no pip bootstrap in the edge venv.
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--quiet", "--disable-pip-version-check", f"{src}[edge]"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"pip install '.[edge]' failed:\n{proc.stdout}\n{proc.stderr}"
    yield venv


def run(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True, timeout=60,
                          env=env, cwd=venv)


def test_the_edge_venv_has_the_edge_and_not_the_cloud(edge_venv: Path) -> None:
    probe = ("import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None"
             f" for m in {[*HEAVY, 'pymodbus', 'asyncua', 'carbonlink.edge.agent']!r}}}))")
    proc = run(edge_venv, "python", "-c", probe)
    assert proc.returncode == 0, proc.stderr
    found = yaml.safe_load(proc.stdout)
    assert found["pymodbus"] and found["asyncua"] and found["carbonlink.edge.agent"]
    assert not any(found[m] for m in HEAVY), found
    assert run(edge_venv, "carbonlink", "--help").returncode == 0
    assert run(edge_venv, "carbonlink", "edge", "run", "--help").returncode == 0
    cloud = run(edge_venv, "carbonlink", "cloud", "up", "--help")  # a group whose extra is missing says which
    assert cloud.returncode != 0 and "carbonlink[cloud]" in cloud.stdout + cloud.stderr


async def test_edge_only_gateway_delivers_to_the_cloud(edge_venv: Path, tmp_path: Path) -> None:
    mqtt = require_mosquitto_service()
    gateway, site = f"gw-edgeonly-{os.getpid()}", f"site-edgeonly-{os.getpid()}"  # topics of this test only
    key = load_or_create_key(tmp_path / "gw.key")
    stack = CemsStack(seed=7, clock=Paced())
    async with ModbusDeviceHost(stack.fill, port=free_port()) as sim, \
            running_cloud(f"sqlite:///{tmp_path / 'cloud.sqlite'}", mqtt, http_port=free_port(),
                          client_id=f"ingest-{gateway}", sites=[site]) as cloud:
        await cloud.store.registry.register_gateway(gateway, site, "ed25519", public_key_hex(key))
        cfg = {"gateway": {"id": gateway, "site": site, "key_file": "gw.key", "data_dir": "edge"},
               "mqtt": {"url": mqtt}, "batch": {"max_readings": 100, "max_age_s": 0.5}, "log_level": "INFO",
               "devices": [{"id": "stack-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": sim.port,
                            "poll_interval_s": 0.2, "pointmap": "cems"}]}
        (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(cfg))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        agent = await asyncio.create_subprocess_exec(
            str(edge_venv / "bin" / "carbonlink"), "edge", "run", "--config", str(tmp_path / "gateway.yaml"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
        try:
            async with asyncio.timeout(60):
                while cloud.ingest.counters.batches_committed < 3 and agent.returncode is None:
                    await asyncio.sleep(0.1)
        finally:
            if agent.returncode is None:
                agent.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(agent.communicate(), 30)
        log = stderr.decode(errors="replace")
        assert agent.returncode == 0, log
        assert "Traceback" not in log, log
        assert cloud.ingest.counters.batches_committed >= 3, log
        rows = await cloud.store.data.latest(device="stack-1")
    points = {r["point"]: r for r in rows}
    assert {"so2", "nox", "o2"} <= points.keys()
    assert 0 < points["so2"]["value"] < 100  # the simulator's SO2, carried through the edge-only gateway
