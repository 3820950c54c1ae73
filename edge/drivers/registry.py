"""Explicit driver registry: each protocol registers its settings model and driver class here.

No folder scanning, no plugins loaded by name at run time: adding a driver means
adding it to ``DeviceConfig`` and ``DRIVERS`` below.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from carbonlink.kernel.events import EventSink

from .base import Driver
from .ble import BleBthomeDevice, BleBthomeDriver
from .hj212 import Hj212ServerDevice, Hj212ServerDriver
from .modbus import ModbusTcpDevice, ModbusTcpDriver
from .modbus_rtu import ModbusRtuDevice, ModbusRtuDriver
from .opcua import OpcUaDevice, OpcUaDriver
from .sunspec import SunSpecDevice, SunSpecDriver

# The union the config validates devices against; pydantic picks the member by 'driver'.
DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | SunSpecDevice | OpcUaDevice | BleBthomeDevice | Hj212ServerDevice,
    Field(discriminator="driver"),
]

DRIVERS: dict[str, type[Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
    "modbus_rtu": ModbusRtuDriver,
    "sunspec": SunSpecDriver,
    "opcua": OpcUaDriver,
    "ble_bthome": BleBthomeDriver,
    "hj212_server": Hj212ServerDriver,
}


def build_driver(device: Any, *, events: EventSink | None = None) -> Driver:
    """The driver for one device entry; ``events`` is the agent's event sink (logged when None)."""
    driver = DRIVERS[device.driver](device.id, device)
    if events is not None:
        driver.events = events
    return driver
