"""The Modbus poll loop over time: no memory growth over thousands of polls, recovery after a long outage,
and a supervisor that survives an unexpected exception in the driver, logging it once."""

from __future__ import annotations

import asyncio
import logging
import sys
import tracemalloc

import pytest

from carbonlink.edge.drivers.modbus import ModbusTcpDevice, ModbusTcpDriver, ReadBlock
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.memgrowth import session_growth
from tests.services import ROOT
from tests.simulators.clocks import NOON_ISO, Paced


def device(port: int, **kw: object) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({"id": "cems", "driver": "modbus_tcp", "host": "127.0.0.1", "port": port,
                                           "pointmap": "cems", "timeout_s": 0.5, **kw})


async def test_long_poll_run_does_not_grow_memory(port: int) -> None:
    """Thousands of polls as fast as the simulator answers; the simulator runs in its own process, so
    everything traced here is the driver's side."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from carbonlink.simulators.cems_cli import app; app()",
        "--modbus-port", str(port), "--json", "--start", NOON_ISO,
        cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        await asyncio.wait_for(proc.stdout.readline(), 20)
        driver = ModbusTcpDriver("cems", device(port, poll_interval_s=0.0001))
        measured = 2000
        growth, batch = await session_growth(driver.session(), 1000, measured,
                                             [tracemalloc.Filter(False, __file__)])
    finally:
        proc.terminate()
        await proc.wait()
    assert len(batch) == 13 and {r.quality for r in batch} == {"N"} and driver.counters.rejected == 0
    # Measured: about 3 kB of noise over 2,000 polls; keeping 100 bytes per poll adds about 320 kB.
    assert growth < 50_000, f"grew {growth} B over {measured} polls"


class Collector:
    def __init__(self) -> None:
        self.batches: list[list[Reading]] = []

    async def __call__(self, rs: list[Reading]) -> None:
        self.batches.append(rs)

    async def more(self, n: int = 3, within: float = 5.0) -> None:
        target = len(self.batches) + n
        async with asyncio.timeout(within):
            while len(self.batches) < target:
                await asyncio.sleep(0.02)


async def test_reconnects_after_a_long_outage_and_logs_once_each_way(port: int,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    stack = CemsStack(clock=Paced())
    got = Collector()
    sup = DeviceSupervisor(ModbusTcpDriver("cems", device(port, poll_interval_s=0.05)), got,
                           backoff=Backoff(initial=0.05, cap=0.3))
    caplog.set_level(logging.INFO, logger="carbonlink.edge.supervisor")
    async with ModbusDeviceHost(stack.fill, port=port, faults=stack.faults) as host:
        sup.start()
        try:
            await got.more()
            # Down for 4 s: refused connections, the backoff climbs to its cap and stays there.
            await host.restart(down_s=4.0)
            await got.more()
        finally:
            await sup.stop()
    c = sup.counters
    assert c.errors >= 8 and c.reconnects == 1  # many failed attempts, one recovery
    records = [r for r in caplog.records if r.name == "carbonlink.edge.supervisor"]
    assert [r.levelname for r in records] == ["WARNING", "INFO"]
    assert "recovered after" in records[1].getMessage()


class FlakyDriver(ModbusTcpDriver):
    """A driver with a bug: while ``broken`` it raises an exception type no code path expects."""

    broken = False

    async def _read_block(self, client: object, block: ReadBlock, ts: int) -> list[Reading]:
        if self.broken:
            raise KeyError("a bug in the driver")
        return await super()._read_block(client, block, ts)  # type: ignore[arg-type]


async def test_supervisor_survives_an_unexpected_exception_and_logs_it_once(port: int,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    stack = CemsStack(clock=Paced())
    got = Collector()
    drv = FlakyDriver("cems", device(port, poll_interval_s=0.05))
    sup = DeviceSupervisor(drv, got, backoff=Backoff(initial=0.05, cap=0.1))
    caplog.set_level(logging.INFO, logger="carbonlink.edge.supervisor")
    async with ModbusDeviceHost(stack.fill, port=port, faults=stack.faults):
        task = sup.start()
        try:
            await got.more()
            drv.broken = True
            await asyncio.sleep(1.0)  # about ten sessions fail with the bug
            assert not task.done() and drv.counters.errors >= 5
            assert drv.counters.last_error == "KeyError: 'a bug in the driver'"
            drv.broken = False
            await got.more()
        finally:
            await sup.stop()
    records = [r for r in caplog.records if r.name == "carbonlink.edge.supervisor"]
    assert [r.levelname for r in records] == ["ERROR", "INFO"]  # once with the traceback, once on recovery
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError
