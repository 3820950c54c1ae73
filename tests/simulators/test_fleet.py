"""Fleet mode: CEMS stacks and inverters on consecutive ports, read by the drivers a generated gateway.yaml names."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
import yaml
from typer.testing import CliRunner

from carbonlink.edge.config import GatewayConfig
from carbonlink.edge.drivers.base import DriverError
from carbonlink.edge.drivers.registry import build_driver
from carbonlink.simulators.cems import LAYOUT
from carbonlink.simulators.fleet import start_fleet
from carbonlink.simulators.fleet_cli import app, apply_command
from tests.services import ROOT
from tests.simulators.clocks import NOON_ISO, Paced
from tests.simulators.sunspec.test_simulator import consecutive_free_ports

GATEWAY = {"gateway": {"id": "gw-fleet", "site": "load", "key_file": "gw.key", "data_dir": "edge"}}


async def first_batch(device: object) -> list:
    gen = build_driver(device).session()
    try:
        return await asyncio.wait_for(anext(gen), 10)
    finally:
        await gen.aclose()


async def test_fleet_serves_every_device_its_gateway_yaml_names() -> None:
    first = consecutive_free_ports(5)
    async with await start_fleet(cems=3, inverters=2, forest_trees=4, first_port=first, clock=Paced()) as fleet:
        assert fleet.ports() == list(range(first, first + 5))
        cfg = GatewayConfig.model_validate(GATEWAY | {"devices": fleet.gateway_devices(0.05)})
        assert [d.driver for d in cfg.devices] == ["modbus_tcp"] * 3 + ["sunspec"] * 2 + ["ble_bthome"]
        batches = await asyncio.gather(*(first_batch(d) for d in cfg.devices[:5]))
        for b in batches[:3]:
            assert [r.point for r in b] == [*LAYOUT, "status"] and {r.quality for r in b} == {"N"}
        assert {b[0].value for b in batches[:3]} != {batches[0][0].value}  # each stack has its own noise
        for b in batches[3:]:
            assert b and {r.quality for r in b} == {"N"}
        assert len(cfg.devices[5].sensors) == 4  # type: ignore[union-attr]
        # Run-time faults reach every device of a kind.
        assert apply_command("cems calibration on", fleet).startswith("applied")
        assert "cannot apply" in apply_command("cems exception 99", fleet)
        assert apply_command("inverter exception 4", fleet).startswith("applied")
        assert "cems COMMAND" in apply_command("help", fleet)
        batches = await asyncio.gather(*(first_batch(d) for d in cfg.devices[:3]))
        for b in batches:
            assert {r.quality for r in b if r.point in LAYOUT} == {"C"}
        for d in cfg.devices[3:5]:  # every request answered with an exception: not even the chain is found
            with pytest.raises(DriverError, match="exception reply"):
                await first_batch(d)


def test_bad_fleet_flags() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--cems", "0", "--inverters", "0"])
    assert res.exit_code == 2 and "nothing to serve" in res.output
    res = runner.invoke(app, ["--cems", "10", "--first-port", "65530"])
    assert res.exit_code == 2 and "--first-port" in res.output


async def test_fleet_command_prints_endpoints_and_gateway_yaml() -> None:
    first = consecutive_free_ports(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from carbonlink.simulators.fleet_cli import app; app()",
        "--cems", "2", "--inverters", "1", "--forest-trees", "2", "--first-port", str(first), "--json",
        "--start", NOON_ISO,
        "--gateway-yaml", cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        ends = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        assert [e["port"] for e in ends["cems"]] == [first, first + 1]
        assert [e["port"] for e in ends["inverters"]] == [first + 2] and ends["forest"]["trees"] == 2
        lines = []
        while True:  # the YAML follows; it is complete when stdout goes quiet
            try:
                lines.append(await asyncio.wait_for(proc.stdout.readline(), 1.0))
            except TimeoutError:
                break
        devices = yaml.safe_load(b"".join(lines))["devices"]
        cfg = GatewayConfig.model_validate(GATEWAY | {"devices": devices})
        assert [d.id for d in cfg.devices] == ["cems-001", "cems-002", "inverter-001", "forest-plot-1"]
        b = await first_batch(cfg.devices[2])
        assert b and {r.quality for r in b} == {"N"}
    finally:
        proc.terminate()
        await proc.wait()
