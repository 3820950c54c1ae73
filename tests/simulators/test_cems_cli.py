"""`carbonlink sim cems` as a typer app: flags checked, endpoints as JSON, faults by flag and typed at run time."""

from __future__ import annotations

import asyncio
import json
import sys

from typer.testing import CliRunner

from carbonlink.edge.drivers.modbus import ModbusTcpDevice, ModbusTcpDriver
from carbonlink.simulators.cems import LAYOUT
from carbonlink.simulators.cems_cli import app
from tests.services import ROOT, free_port
from tests.simulators.clocks import NOON_ISO


def test_bad_flags_say_what_to_use() -> None:
    runner = CliRunner()
    for args, hint in ((["--mode", "sleepy"], "calibration"), (["--hj212-to", "nowhere"], "HOST:PORT"),
                       (["--exception-code", "9"], "9"), (["--spikes", "2"], "probability"),
                       (["--opcua-port", "4840", "--opcua-user", "u"], "--opcua-password")):
        res = runner.invoke(app, [*args, "--start", NOON_ISO])
        assert res.exit_code == 2 and hint in res.output, (args, res.output)


async def test_fault_flag_then_commands_typed_at_run_time() -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from carbonlink.simulators.cems_cli import app; app()",
        "--modbus-port", str(port), "--mode", "calibration", "--json", "--start", NOON_ISO,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        ends = json.loads(await asyncio.wait_for(proc.stdout.readline(), 20))
        assert ends == {"modbus": {"host": "127.0.0.1", "port": port, "unit_id": 1, "pointmap": "cems"}}
        drv = ModbusTcpDriver("c", ModbusTcpDevice(id="c", driver="modbus_tcp", host="127.0.0.1", port=port,
                                                   pointmap="cems", poll_interval_s=0.05))
        session = drv.session()
        first = await anext(session)
        assert {r.quality for r in first if r.point in LAYOUT} == {"C"}  # --mode calibration
        proc.stdin.write(b"maintenance on\n")
        await proc.stdin.drain()
        for _ in range(100):
            batch = await anext(session)
            if batch[0].quality == "M":
                break
        assert {r.quality for r in batch if r.point in LAYOUT} == {"M"}
        proc.stdin.write(b"clear\n")
        await proc.stdin.drain()
        for _ in range(100):
            batch = await anext(session)
            if batch[0].quality == "N":
                break
        assert {r.quality for r in batch} == {"N"}
        await session.aclose()
    finally:
        proc.terminate()
        await proc.wait()
