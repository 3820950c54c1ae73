"""The SunSpec simulator's faults and fleet mode, seen over the wire where it matters."""

from __future__ import annotations

import asyncio
import random
import socket

import pytest

from carbonlink.simulators.inverter import SolarInverter
from carbonlink.simulators.sunspec import InverterFaults, SunSpecInverter, run_inverter_fleet, start_inverter_fleet
from tests.edge.drivers.sunspec.conftest import first_poll, make_driver
from tests.simulators.clocks import NOON, Paced


def noon_inverter(seed: int = 1) -> SolarInverter:
    return SolarInverter(seed=seed, clock=lambda: NOON)


def consecutive_free_ports(n: int) -> int:
    for _ in range(50):
        first = random.randint(20000, 60000)
        socks = []
        try:
            for p in range(first, first + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def test_stuck_values_freeze_and_release() -> None:
    sim = SunSpecInverter(port=1, inverter=noon_inverter(), faults=InverterFaults(stuck=True))
    a, b = sim.sample(), sim.sample()
    assert a == b
    sim.stick(False)
    sim.inv.clock = lambda: NOON + 600  # ten minutes later, on the same sunny day
    assert sim.sample()["energy"] > a["energy"]


def test_drift_grows_with_time_and_spikes_multiply() -> None:
    sim = SunSpecInverter(port=2, inverter=noon_inverter(), faults=InverterFaults(stuck=True))
    base = sim.sample()["ac_power"]
    sim.drift(0.5)
    sim._drift_since -= 3600  # as if the drift had been running for an hour
    assert sim.sample()["ac_power"] == pytest.approx(base * 1.5, rel=1e-3)
    sim.drift(0.0)
    sim.spikes(1.0, 4.0)
    assert sim.sample()["ac_power"] == pytest.approx(base * 4)
    sim.clear_faults()
    assert sim.faults == InverterFaults()


def test_image_layout_and_not_implemented_codes() -> None:
    sim = SunSpecInverter(port=3, base=0, model=101, common_len=65, inverter=noon_inverter())
    img = sim.image()
    assert img[0:2] == [0x5375, 0x6E53] and img[2:4] == [1, 65]
    inv = 4 + 65
    assert img[inv : inv + 2] == [101, 50]
    assert img[inv + 4] == 0xFFFF and img[inv + 11] == 0xFFFF  # AphB, PhVphB on a single-phase model
    assert img[inv + 35] == 0x8000  # TmpTrns not implemented
    assert img[inv + 52 :] == [0xFFFF, 0] and len(img) == sim.size
    sim.wrong_map()
    assert sim.image()[0:2] == [0, 0]
    with pytest.raises(ValueError):
        SunSpecInverter(port=4, base=30000)
    with pytest.raises(ValueError):
        sim.fail_with(9)  # not a Modbus exception code


async def test_a_fleet_serves_distinct_inverters_on_consecutive_ports() -> None:
    first = consecutive_free_ports(3)
    fleet = await start_inverter_fleet(3, first, model=113, clock=Paced())
    try:
        serials = []
        for i, inv in enumerate(fleet):
            assert inv.port == first + i
            drv = make_driver(inv.port)
            session, got = await first_poll(drv)
            await session.aclose()
            assert "ac_power" in got and drv.identity is not None
            serials.append(drv.identity.serial)
        assert serials == ["SIM0001", "SIM0002", "SIM0003"]
    finally:
        for inv in fleet:
            await inv.stop()


async def test_run_inverter_fleet_stops_cleanly() -> None:
    first = consecutive_free_ports(2)
    stop = asyncio.Event()
    task = asyncio.create_task(run_inverter_fleet(2, first, stop=stop, base=50000, clock=Paced()))
    await asyncio.sleep(0.3)
    drv = make_driver(first + 1)
    session, got = await first_poll(drv)
    await session.aclose()
    assert drv.chain is not None and drv.chain.base == 50000 and "ac_power" in got
    stop.set()
    await asyncio.wait_for(task, 5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", first + 1), timeout=0.5).close()
