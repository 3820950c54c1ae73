"""What the command line and the gateway import: nothing of the cloud, the chain or unused protocols.

`carbonlink --help` must answer in well under half a second on a Raspberry Pi, and the agent must stay
small; both follow from the import set, which is checked here (timings go in bench/, never in tests).
Each case runs in a fresh interpreter of this (full) environment, where every extra *could* be imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("fastapi", "uvicorn", "starlette", "web3", "eth_account", "eth_tester", "py_ecc", "sqlalchemy",
         "asyncpg", "aiosqlite", "amqtt", "onnxruntime", "numpy", "plotly", "fpdf", "carbonlink.cloud",
         "carbonlink.simulators")

CLI = """
import sys
sys.argv = ["carbonlink", *{args!r}]
from carbonlink.cli import main
try:
    main()
except SystemExit:
    pass
"""

AGENT = """
import sys
from carbonlink.commands import simsources
from carbonlink.edge.agent import EdgeAgent
from carbonlink.edge.config import GatewayConfig
from carbonlink.edge.drivers.registry import build_driver
simsources.install()
cfg = GatewayConfig.model_validate({"gateway": {"id": "gw", "site": "s", "key_file": "k"}, "devices": [
    {"id": "stack-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": 502, "pointmap": "cems"},
    {"id": "inv-1", "driver": "sunspec", "host": "127.0.0.1", "port": 502}]})
drivers = [build_driver(d) for d in cfg.devices]
"""


def imported(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def heavy_in(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


@pytest.mark.parametrize("args", [["--help"], ["edge", "run", "--help"], ["edge", "--help"], ["hj212", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    modules = imported(CLI.format(args=args))
    assert heavy_in(modules, HEAVY) == []
    if args == ["--help"]:  # the root help loads no command group at all, nor pydantic
        assert not any(m.startswith("carbonlink.commands.") and m != "carbonlink.commands.lazy" for m in modules)
        assert "pydantic" not in modules and "asyncio" not in modules


def test_a_modbus_gateway_loads_neither_opcua_nor_bluetooth() -> None:
    modules = imported(AGENT)
    assert heavy_in(modules, HEAVY) == []
    assert heavy_in(modules, ("asyncua", "bleak", "dbus_fast")) == []
    assert "pymodbus" in modules and "carbonlink.edge.drivers.sunspec" in modules
