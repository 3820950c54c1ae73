"""Modbus RTU driver: the Modbus TCP driver's point maps, block planning and decoding over a serial line.

Only the transport differs (pymodbus AsyncModbusSerialClient with the RTU framer,
CRC-16 per Modbus over serial line v1.02): this module gives the transport hook
(``make_client``); the session, reads, exception-code quality flags and decoding are
edge/drivers/modbus.py's ``PointMapDriver``, so both behave the same.

One driver owns its serial port: two devices on one RS-485 bus need one shared
client, which this driver does not provide.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, ModbusBaseClient

from .modbus import ModbusUnitDevice, PointMapDriver


class ModbusRtuDevice(ModbusUnitDevice):
    driver: Literal["modbus_rtu"]
    serial_port: str = Field(min_length=1, description="e.g. /dev/ttyUSB0 or /dev/serial/by-id/…")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    unit_id: int = Field(default=1, ge=1, le=247)  # 0 is broadcast, 248-255 reserved on serial lines
    timeout_s: float = Field(default=1.0, gt=0, le=60)


class ModbusRtuDriver(PointMapDriver):
    kind = "modbus_rtu"
    settings: ModbusRtuDevice

    def make_client(self) -> ModbusBaseClient:
        s = self.settings
        return AsyncModbusSerialClient(s.serial_port, framer=FramerType.RTU, baudrate=s.baudrate,
                                       bytesize=s.bytesize, parity=s.parity, stopbits=s.stopbits,
                                       timeout=s.timeout_s, retries=0, reconnect_delay=0)

    def endpoint(self) -> str:
        return f"serial port {self.settings.serial_port}"
