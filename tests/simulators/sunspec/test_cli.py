"""`carbonlink sim inverter` as a typer app: flags, JSON endpoints, and faults typed at run time."""

from __future__ import annotations

import asyncio
import json
import sys

from typer.testing import CliRunner

from carbonlink.kernel.wire import Quality
from carbonlink.simulators.sunspec_cli import app
from tests.edge.drivers.sunspec.conftest import make_driver
from tests.services import ROOT
from tests.simulators.clocks import NOON_ISO

from .test_simulator import consecutive_free_ports


def test_bad_flags_say_what_to_use() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--base", "30000"])
    assert res.exit_code == 2 and "40000" in res.output
    res = runner.invoke(app, ["--model", "120"])
    assert res.exit_code == 2 and "113" in res.output


async def test_fleet_from_the_command_line_with_faults_typed_at_run_time() -> None:
    first = consecutive_free_ports(2)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from carbonlink.simulators.sunspec_cli import app; app()",
        "--port", str(first), "--fleet", "2", "--base", "0", "--model", "111", "--json", "--start", NOON_ISO,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ends = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert [(e["port"], e["base"], e["model"]) for e in ends] == [(first, 0, 111), (first + 1, 0, 111)]
        drv = make_driver(first + 1)
        session = drv.session()
        assert all(r.quality is Quality.NORMAL for r in await anext(session))
        proc.stdin.write(b"exception 4\n")
        await proc.stdin.drain()
        for _ in range(100):
            readings = await anext(session)
            if readings[0].quality is Quality.FAULT:
                break
        assert all(r.quality is Quality.FAULT for r in readings)
        await session.aclose()
    finally:
        proc.terminate()
        await proc.wait()
