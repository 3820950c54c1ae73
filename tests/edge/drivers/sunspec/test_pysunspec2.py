"""Independent check: pysunspec2 (the SunSpec Alliance's client) scans and reads our simulator.

It must find the same models where our driver finds them and read the same W and WH.
"""

from __future__ import annotations

import asyncio

import pytest

from carbonlink.simulators.sunspec import InverterFaults, SunSpecInverter
from tests.services import require

from .conftest import first_poll, make_driver, noon_inverter

try:
    import sunspec2.modbus.client as client
except ImportError:  # a test dependency: fail under CI, skip elsewhere
    client = None


@pytest.fixture(autouse=True)
def _pysunspec2() -> None:
    require(client is not None, "pysunspec2", ".venv/bin/pip install pysunspec2")


def scan(port: int, model: int) -> dict[str, object]:
    dev = client.SunSpecModbusClientDeviceTCP(slave_id=1, ipaddr="127.0.0.1", ipport=port, timeout=2)
    try:
        dev.scan()
        inv = dev.models[model][0]
        return {"base": dev.base_addr, "ids": [k for k in dev.models if isinstance(k, int)],
                "addr": inv.model_addr, "Mn": dev.common[0].Mn.cvalue, "SN": dev.common[0].SN.cvalue,
                "W": inv.W.cvalue, "WH": inv.WH.cvalue, "St": inv.St.cvalue, "Hz": inv.Hz.cvalue,
                "PhVphC": inv.PhVphC.cvalue}
    finally:
        dev.close()


@pytest.mark.parametrize(("base", "model", "common_len"),
                         [(40000, 103, 66), (0, 101, 65), (50000, 113, 66), (40000, 111, 65), (0, 102, 66)])
async def test_pysunspec2_reads_what_our_driver_reads(port: int, base: int, model: int,
                                                      common_len: int) -> None:
    sim = SunSpecInverter(port=port, base=base, model=model, common_len=common_len, inverter=noon_inverter(),
                          energy_start_wh=3_000_000_000.0, faults=InverterFaults(stuck=True))
    async with sim:
        theirs = await asyncio.to_thread(scan, port, model)
        drv = make_driver(port)
        session, ours = await first_poll(drv)
        await session.aclose()
    assert drv.chain is not None
    assert theirs["base"] == base and theirs["ids"] == [1, model]
    assert theirs["addr"] == drv.chain.models[1].addr == base + 4 + common_len
    assert (theirs["Mn"], theirs["SN"]) == ("CarbonLink", "SIM0001")
    assert ours["ac_power"].value == pytest.approx(theirs["W"], rel=1e-6)
    assert ours["energy"].value == pytest.approx(theirs["WH"], rel=1e-9)
    assert ours["state"].value == theirs["St"] == 4
    assert ours["frequency"].value == pytest.approx(theirs["Hz"], rel=1e-6)
    # Phase C is not implemented on 1- and 2-phase models: pysunspec2 says None, we publish no point.
    assert (theirs["PhVphC"] is None) == (model % 10 < 3) == ("ac_voltage_c" not in ours)
