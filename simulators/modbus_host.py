"""Serve a simulated device's registers over real Modbus TCP (pymodbus SimDevice).

Values are computed when a request arrives, from the model's clock, so a
client always sees the model's state at the moment it asks.

Faults (``HostFaults``, changeable at run time): an exception code on every
request, no reply at all (communication loss: the client times out), a register
image shifted up by N registers (a wrong map: the device's firmware counts from
another base), and ``restart()``: every connection dropped, connections refused
for a while, then the device answers again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from carbonlink.kernel.tasks import cancel_and_wait, failure

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# fc → which bank the callback is filling
_HOLDING_FC = {3, 6, 16, 22, 23}
_INPUT_FC = {4}


def f32(value: float) -> list[int]:
    """A float32 as two big-endian registers, high word first."""
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def u32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def i16(value: int) -> int:
    return value & 0xFFFF


RegisterFiller = Callable[[list[int]], None]


@dataclass
class HostFaults:
    """Transport-level faults the host applies to every request; change the fields at run time."""

    comm_loss: bool = False  # no reply at all: the client's request times out
    exception_code: int | None = None  # every request answered with this Modbus exception
    map_shift: int = 0  # the register image starts this many registers later than the map says

    def check(self) -> None:
        if self.exception_code is not None:
            ExcCodes(self.exception_code)  # refuse codes Modbus does not define (ValueError)
        if not 0 <= self.map_shift <= 16:
            raise ValueError("map_shift must be 0-16 registers")


class ModbusDeviceHost:
    """One Modbus TCP server whose holding registers a model fills on every read."""

    def __init__(self, fill: RegisterFiller, *, host: str = "127.0.0.1", port: int = 5020,
                 size: int = 256, unit_id: int = 1, faults: HostFaults | None = None) -> None:
        self.fill = fill
        self.host, self.port, self.unit_id = host, port, unit_id
        self.size = size
        self.faults = faults if faults is not None else HostFaults()
        self.requests = 0
        self.restarts = 0
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[Any] | None = None
        self._image = [0] * size

    @property
    def fail_with(self) -> int | None:
        """The exception code every request is answered with (None: answer normally)."""
        return self.faults.exception_code

    @fail_with.setter
    def fail_with(self, code: int | None) -> None:
        self.faults.exception_code = code
        self.faults.check()

    @property
    def running(self) -> bool:
        return self._server is not None

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: Any) -> Any:
        self.requests += 1
        f = self.faults
        if f.comm_loss:
            # The server is built with ignore_missing_devices: this request gets no reply at all.
            raise NoSuchIdException("simulated communication loss")
        if f.exception_code is not None:
            return ExcCodes(f.exception_code)
        if fc in _HOLDING_FC or fc in _INPUT_FC:
            if f.map_shift:
                image = self._image
                image[:] = [0] * len(image)
                self.fill(image)
                registers[: f.map_shift] = [0] * f.map_shift
                registers[f.map_shift :] = image[: len(registers) - f.map_shift]
            else:
                self.fill(registers)
        return None

    async def start(self) -> None:
        regs = [SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(self.unit_id, simdata=(bits, bits, regs, list(regs)), action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port), ignore_missing_devices=True)
        self._task = asyncio.create_task(self._server.serve_forever(), name=f"modbus sim :{self.port}")
        for _ in range(100):  # wait until the socket listens
            await asyncio.sleep(0.02)
            if self._server.is_active():
                return
        await self.stop()
        raise OSError(f"Modbus simulator could not listen on {self.host}:{self.port}")

    async def stop(self) -> None:
        """Close the listening socket and every client connection."""
        if self._server is not None:
            await self._server.shutdown()
        if self._task is not None:
            await cancel_and_wait([self._task], what="modbus server")  # pymodbus can swallow one cancel
            failure(self._task)  # retrieved: a server that failed by itself is the test's error, not ours
        self._server = self._task = None

    async def restart(self, down_s: float = 2.0) -> None:
        """A device restart: connections dropped, refused for ``down_s``, then served again."""
        self.restarts += 1
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    async def __aenter__(self) -> ModbusDeviceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
