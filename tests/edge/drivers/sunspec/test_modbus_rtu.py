"""The Modbus RTU driver against a pymodbus RTU serial server over a pty null modem.

Two pty pairs joined master to master make a null-modem cable: the server opens
one slave end, the driver the other, and every byte crosses a real tty with RTU
framing and CRC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tty
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from carbonlink.edge.drivers.base import ConnectionState, DriverError
from carbonlink.edge.drivers.modbus import ModbusPoint, plan_blocks
from carbonlink.edge.drivers.modbus_rtu import ModbusRtuDevice, ModbusRtuDriver
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.wire import Quality, Reading
from tests.services import until


@contextlib.asynccontextmanager
async def null_modem() -> AsyncIterator[tuple[str, str]]:
    loop = asyncio.get_running_loop()
    m1, s1 = os.openpty()
    m2, s2 = os.openpty()
    for fd in (s1, s2):
        tty.setraw(fd)  # no echo, no line editing: a serial line carries bytes as they are

    def pump(src: int, dst: int) -> None:
        with contextlib.suppress(OSError):
            os.write(dst, os.read(src, 4096))

    loop.add_reader(m1, pump, m1, m2)
    loop.add_reader(m2, pump, m2, m1)
    try:
        yield os.ttyname(s1), os.ttyname(s2)
    finally:
        loop.remove_reader(m1)
        loop.remove_reader(m2)
        for fd in (m1, m2, s1, s2):
            os.close(fd)


class RtuDevice:
    """A pymodbus RTU server with fixed registers and injectable exception replies."""

    # int16 -5 at 0, float32 3.5 at 1-2, uint32 65538 at 3-4, uint16 1234 at 10.
    REGS: ClassVar[list[int]] = [0xFFFB, *struct.unpack(">HH", struct.pack(">f", 3.5)), 1, 2,
                                 0, 0, 0, 0, 0, 1234]

    def __init__(self, path: str, unit_id: int = 7) -> None:
        self.path, self.unit_id = path, unit_id
        self.fail_with: int | None = None
        self.requests = 0
        self.server: ModbusSerialServer | None = None
        self.task: asyncio.Task[None] | None = None

    async def _action(self, fc, start, address, count, registers, values):
        self.requests += 1
        if self.fail_with is not None:
            return ExcCodes(self.fail_with)
        registers[0 : len(self.REGS)] = self.REGS
        return None

    async def start(self) -> None:
        block = [SimData(0, count=len(self.REGS) + 4, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(self.unit_id, simdata=block, action=self._action)
        self.server = ModbusSerialServer(device, framer=FramerType.RTU, port=self.path, baudrate=115200)
        self.task = asyncio.create_task(self.server.serve_forever())
        await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.server = self.task = None


POINTS = [
    ModbusPoint(name="temp", register=0, type="int16", scale=0.5, unit="°C"),
    ModbusPoint(name="flow", register=1, type="float32", unit="m3/h"),
    ModbusPoint(name="count", register=3, type="uint32", unit=""),
    ModbusPoint(name="level", register=10, type="uint16", scale=0.1, offset=-100, unit="cm"),
]


def rtu_driver(path: str, **kwargs: object) -> ModbusRtuDriver:
    dev = ModbusRtuDevice(id="rtu-1", driver="modbus_rtu", serial_port=path, baudrate=115200, unit_id=7,
                          poll_interval_s=0.02, timeout_s=0.3, points=POINTS, **kwargs)
    return ModbusRtuDriver("rtu-1", dev)


def values(readings: list[Reading]) -> dict[str, tuple[float, str]]:
    return {r.point: (r.value, r.quality.value) for r in readings}


async def test_reads_and_decodes_over_a_serial_line() -> None:
    async with null_modem() as (server_end, client_end):
        dev = RtuDevice(server_end)
        await dev.start()
        try:
            drv = rtu_driver(client_end)
            assert len(drv.blocks) == 1  # registers 0-10 merged into one request
            session = drv.session()
            got = values(await anext(session))
            dev.fail_with = 2
            failed = values(await anext(session))
            dev.fail_with = None
            again = values(await anext(session))
            await session.aclose()
        finally:
            await dev.stop()
    assert got == {"temp": (-2.5, "N"), "flow": (3.5, "N"), "count": (65538, "N"), "level": (23.4, "N")}
    assert all(q == Quality.FAULT.value and v == 0 for v, q in failed.values())
    assert again == got
    assert drv.counters.extra["exception_2"] == 1
    assert dev.requests == 3


async def test_a_missing_serial_port_is_a_driver_error(tmp_path) -> None:
    session = rtu_driver(str(tmp_path / "ttyNOPE")).session()
    with pytest.raises(DriverError, match="cannot connect to serial port"):
        await anext(session)


async def test_a_silent_device_times_out_and_the_supervisor_reconnects() -> None:
    async with null_modem() as (server_end, client_end):
        dev = RtuDevice(server_end)
        await dev.start()
        drv = rtu_driver(client_end)
        polls: list[list[Reading]] = []

        async def sink(readings: list[Reading]) -> None:
            polls.append(readings)

        sup = DeviceSupervisor(drv, sink, backoff=Backoff(initial=0.05, cap=0.2))
        sup.start()
        try:
            await until(lambda: len(polls) >= 2)
            await dev.stop()  # the device goes quiet: requests time out
            await until(lambda: sup.state is ConnectionState.BACKOFF)
            await dev.start()
            n = len(polls)
            await until(lambda: len(polls) > n + 1)
            assert sup.state is ConnectionState.ONLINE and drv.counters.reconnects >= 1
            assert values(polls[-1])["flow"] == (3.5, "N")
        finally:
            await sup.stop()
            await dev.stop()


def test_rtu_settings_reuse_the_modbus_point_model() -> None:
    from pydantic import ValidationError

    dev = ModbusRtuDevice(id="r", driver="modbus_rtu", serial_port="/dev/ttyUSB0", pointmap="cems")
    assert dev.parity == "N" and dev.baudrate == 9600 and plan_blocks(dev.resolved_points())
    with pytest.raises(ValidationError):
        ModbusRtuDevice(id="r", driver="modbus_rtu", serial_port="/dev/ttyUSB0")  # no points
    with pytest.raises(ValidationError):
        ModbusRtuDevice(id="r", driver="modbus_rtu", serial_port="/dev/x", points=POINTS, parity="X")
