"""Fleet mode: many simulated devices on consecutive ports, and the gateway.yaml that reads them (load tests).

CEMS stacks (Modbus TCP, point map 'cems') take ports ``first_port`` …, SunSpec
inverters the ports right after them (simulators/sunspec.py start_inverter_fleet).
A forest plot has no port: BLE adverts cannot travel over loopback, so the
gateway simulates the same trees itself (``ble_bthome`` with ``source: simulator``)
and the fleet only writes that device entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .cems import CemsStack
from .cems_cli import CemsRig
from .clock import wall_clock
from .forest import Forest
from .sunspec import SunSpecInverter, start_inverter_fleet


@dataclass
class Fleet:
    host: str
    cems: list[CemsRig] = field(default_factory=list)
    inverters: list[SunSpecInverter] = field(default_factory=list)
    forest: Forest | None = None

    def endpoints(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "cems": [{"id": f"cems-{i:03d}", "host": self.host, "port": r.modbus.port, "unit_id": 1,  # type: ignore[union-attr]
                      "pointmap": "cems"} for i, r in enumerate(self.cems, 1)],
            "inverters": [{"id": f"inverter-{i:03d}", "host": inv.host, "port": inv.port, "unit_id": inv.unit_id,
                           "base": inv.base, "model": inv.model} for i, inv in enumerate(self.inverters, 1)],
        }
        if self.forest is not None:
            out["forest"] = {"id": "forest-plot-1", "trees": len(self.forest.trees), "source": "simulator"}
        return out

    def gateway_devices(self, poll_interval_s: float = 1.0) -> list[dict[str, Any]]:
        """The ``devices:`` list of a gateway.yaml that polls the whole fleet."""
        ends = self.endpoints()
        devices: list[dict[str, Any]] = [
            {"id": e["id"], "driver": "modbus_tcp", "host": e["host"], "port": e["port"], "unit_id": e["unit_id"],
             "poll_interval_s": poll_interval_s, "pointmap": "cems"} for e in ends["cems"]]
        devices += [{"id": e["id"], "driver": "sunspec", "host": e["host"], "port": e["port"], "unit_id": e["unit_id"],
                     "poll_interval_s": poll_interval_s, "bases": [e["base"]]} for e in ends["inverters"]]
        if self.forest is not None:
            devices.append({"id": "forest-plot-1", "driver": "ble_bthome", "source": "simulator",
                            "poll_interval_s": max(2.0, poll_interval_s), "sensors": self.forest.sensor_config()})
        return devices

    def ports(self) -> list[int]:
        return [r.modbus.port for r in self.cems] + [inv.port for inv in self.inverters]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for rig in self.cems:
            await rig.stop()
        for inv in self.inverters:
            await inv.stop()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def fleet_ports(first_port: int, cems: int, inverters: int) -> list[int]:
    return list(range(first_port, first_port + cems + inverters))


async def start_fleet(*, cems: int = 0, inverters: int = 0, forest_trees: int = 0, first_port: int,
                      host: str = "127.0.0.1", seed: int = 1, clock: Callable[[], float] = wall_clock,
                      **inverter_kw: Any) -> Fleet:
    """Start the fleet: CEMS stacks on first_port…, inverters right after, each with its own noise.

    ``clock`` is the model time of every device (default: the wall clock); ``seed`` their randomness."""
    if cems < 0 or inverters < 0 or forest_trees < 0:
        raise ValueError("device counts must be 0 or more")
    ports = fleet_ports(first_port, cems, inverters)
    if ports and (ports[0] < 1 or ports[-1] > 65535):
        raise ValueError(f"ports {ports[0]}…{ports[-1]} do not fit in 1-65535")
    fleet = Fleet(host)
    try:
        for i in range(cems):
            rig = CemsRig(CemsStack(seed=seed + i, clock=clock), host=host, modbus_port=first_port + i)
            await rig.start()
            fleet.cems.append(rig)
        if inverters:
            fleet.inverters = await start_inverter_fleet(inverters, first_port + cems, host=host, clock=clock,
                                                         **inverter_kw)
    except BaseException:
        with contextlib.suppress(OSError):
            await fleet.stop()
        raise
    if forest_trees:
        fleet.forest = Forest.plot(forest_trees, seed=seed, start=clock())
    return fleet
