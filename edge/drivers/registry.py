"""Explicit driver registry: each protocol registers its settings model and driver class here.

No folder scanning, no plugins loaded by name at run time: adding a driver means
adding it to ``DeviceConfig`` and ``DRIVERS`` below.
"""

from __future__ import annotations

from typing import Any

from .base import Driver
from .modbus import ModbusTcpDevice, ModbusTcpDriver

# The union the config validates devices against; pydantic picks the member by 'driver'.
DeviceConfig = ModbusTcpDevice

DRIVERS: dict[str, type[Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
}


def build_driver(device: Any) -> Driver:
    cls = DRIVERS[device.driver]
    return cls(device.id, device)
