"""Modbus RTU driver: the Modbus TCP driver's point maps, block planning and decoding over a serial line.

Only the transport differs (pymodbus AsyncModbusSerialClient with the RTU framer,
CRC-16 per Modbus over serial line v1.02); reads, exception-code quality flags and
decoding are inherited from edge/drivers/modbus.py so both behave the same.

One driver owns its serial port: two devices on one RS-485 bus need one shared
client, which this driver does not provide.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Literal

from pydantic import Field
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient

from carbonlink.kernel.wire import Reading

from .base import DriverError, ticks
from .modbus import ModbusTcpDriver, PointMapDevice


class ModbusRtuDevice(PointMapDevice):
    driver: Literal["modbus_rtu"]
    serial_port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/…")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(default=1, ge=1, le=247)  # 0 is broadcast, 248-255 reserved on serial lines
    timeout_s: float = Field(default=1.0, gt=0, le=60)


class ModbusRtuDriver(ModbusTcpDriver):
    kind = "modbus_rtu"
    settings: ModbusRtuDevice  # type: ignore[assignment]

    def __init__(self, device_id: str, settings: ModbusRtuDevice) -> None:
        super().__init__(device_id, settings)  # type: ignore[arg-type]  # same fields it uses

    async def session(self) -> AsyncIterator[list[Reading]]:
        s = self.settings
        client = AsyncModbusSerialClient(s.serial_port, framer=FramerType.RTU, baudrate=s.baudrate,
                                         bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits,
                                         timeout=s.timeout_s, retries=0, reconnect_delay=0)
        try:
            if not await client.connect():
                raise DriverError(f"cannot open serial port {s.serial_port}")
            async with aclosing(ticks(s.poll_interval_s)) as tick:
                async for _ in tick:
                    yield await self.poll_once(client)  # type: ignore[arg-type]  # same read API as TCP
        finally:
            client.close()
