"""Explicit driver registry: each protocol registers its settings model and driver class here.

No folder scanning, no plugins loaded by name at run time: adding a driver means
adding it to ``DeviceConfig`` and ``DRIVERS`` below. Settings models are imported
here (the configuration is validated against them); a driver's module, with its
protocol library, is imported only when a device of that kind is built, so a
gateway that reads Modbus never loads asyncua.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

from pydantic import Field

from carbonlink.kernel.events import EventSink

from .base import Driver
from .ble import BleBthomeDevice
from .hj212 import Hj212ServerDevice
from .modbus import ModbusTcpDevice
from .modbus_rtu import ModbusRtuDevice
from .opcua_settings import OpcUaDevice
from .sunspec import SunSpecDevice

# The union the config validates devices against; pydantic picks the member by 'driver'.
DeviceConfig = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | SunSpecDevice | OpcUaDevice | BleBthomeDevice | Hj212ServerDevice,
    Field(discriminator="driver"),
]

# driver kind → "module:class" of its driver, relative to this package
DRIVERS: dict[str, str] = {
    "modbus_tcp": "modbus:ModbusTcpDriver",
    "modbus_rtu": "modbus_rtu:ModbusRtuDriver",
    "sunspec": "sunspec:SunSpecDriver",
    "opcua": "opcua:OpcUaDriver",
    "ble_bthome": "ble:BleBthomeDriver",
    "hj212_server": "hj212:Hj212ServerDriver",
}


def driver_class(kind: str) -> type[Driver]:
    module, _, name = DRIVERS[kind].partition(":")
    cls = getattr(importlib.import_module(f"{__package__}.{module}"), name)
    assert isinstance(cls, type) and issubclass(cls, Driver)
    return cls


def build_driver(device: Any, *, events: EventSink | None = None) -> Driver:
    """The driver for one device entry; ``events`` is the agent's event sink (logged when None)."""
    driver = driver_class(device.driver)(device.id, device)
    if events is not None:
        driver.events = events
    return driver
