"""Serve a simulated device's registers over real Modbus TCP (pymodbus SimDevice).

Values are computed when a request arrives, from the model's clock, so a
client always sees the model's state at the moment it asks.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable
from typing import Any

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

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


class ModbusDeviceHost:
    """One Modbus TCP server whose holding registers a model fills on every read."""

    def __init__(self, fill: RegisterFiller, *, host: str = "127.0.0.1", port: int = 5020,
                 size: int = 256, unit_id: int = 1) -> None:
        self.fill = fill
        self.host, self.port, self.unit_id = host, port, unit_id
        self.size = size
        self.requests = 0
        self.fail_with: int | None = None  # set an exception code to inject device faults
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[Any] | None = None

    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: Any) -> Any:
        self.requests += 1
        if self.fail_with is not None:
            from pymodbus.constants import ExcCodes

            return ExcCodes(self.fail_with)
        if fc in _HOLDING_FC or fc in _INPUT_FC:
            self.fill(registers)
        return None

    async def start(self) -> None:
        regs = [SimData(0, count=self.size, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(self.unit_id, simdata=(bits, bits, regs, list(regs)), action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        self._task = asyncio.create_task(self._server.serve_forever(), name=f"modbus sim :{self.port}")
        for _ in range(100):  # wait until the socket listens
            await asyncio.sleep(0.02)
            if self._server.is_active():
                break

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._server = self._task = None

    async def __aenter__(self) -> ModbusDeviceHost:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
