"""The SunSpec driver against the SunSpec simulator over real Modbus TCP on loopback."""

from __future__ import annotations

import math

import pytest

from carbonlink.edge.drivers.base import DriverError
from carbonlink.edge.drivers.sunspec import ChainError
from carbonlink.kernel.wire import Quality
from carbonlink.simulators.sunspec import InverterFaults, SunSpecInverter

from .conftest import first_poll, make_driver, noon_inverter

THREE_PHASE = {"ac_power", "energy", "dc_power", "ac_current", "ac_voltage", "ac_voltage_b", "ac_voltage_c",
               "frequency", "state", "temp"}


@pytest.mark.parametrize("base", [0, 40000, 50000])
@pytest.mark.parametrize("common_len", [65, 66])
async def test_discovery_at_each_base_and_common_length(port: int, base: int, common_len: int) -> None:
    async with SunSpecInverter(port=port, base=base, common_len=common_len, inverter=noon_inverter()):
        drv = make_driver(port)
        session, got = await first_poll(drv)
        await session.aclose()
    assert drv.chain is not None and drv.chain.base == base
    common, inverter = drv.chain.models
    assert (common.id, common.addr, common.length) == (1, base + 2, common_len)
    # The inverter follows the common model wherever its length puts it (40070 for base 40000, L=66).
    assert (inverter.id, inverter.addr, inverter.length) == (103, base + 4 + common_len, 50)
    assert set(got) == THREE_PHASE
    assert all(r.quality is Quality.NORMAL for r in got.values())
    assert drv.identity is not None and drv.identity.manufacturer == "CarbonLink"
    assert drv.identity.serial == "SIM0001"


@pytest.mark.parametrize("model", [101, 102, 103, 111, 112, 113])
async def test_values_and_scale_factors_match_the_physics(port: int, model: int) -> None:
    sim = SunSpecInverter(port=port, model=model, inverter=noon_inverter(), faults=InverterFaults(stuck=True))
    async with sim:
        session, got = await first_poll(make_driver(port))
        await session.aclose()
        truth = sim.sample()  # stuck: the very values the poll saw
    w_step = 10 ** sim.w_sf if model < 110 else 1e-2  # int16 with W_SF, or float32
    assert truth["ac_power"] > 1000
    assert got["ac_power"].value == pytest.approx(truth["ac_power"], abs=w_step / 2 + 1e-6)
    assert got["dc_power"].value == pytest.approx(truth["dc_power"], abs=w_step / 2 + 1e-6)
    assert got["energy"].value == pytest.approx(truth["energy"], abs=1.0)
    assert got["frequency"].value == pytest.approx(50.0, abs=0.03)
    assert got["ac_voltage"].value == pytest.approx(230.0, abs=2.0)
    assert got["state"].value == 4  # MPPT
    assert got["temp"].value == pytest.approx(truth["temp"], abs=0.06)
    phases = model % 10
    assert got["ac_current"].value == pytest.approx(truth["ac_power"] / 230.0, rel=0.02)
    assert ("ac_voltage_b" in got) == (phases >= 2) and ("ac_voltage_c" in got) == (phases == 3)
    assert {r.unit for r in got.values()} >= {"W", "Wh", "Hz", "V", "A", "°C"}


async def test_scale_factors_for_a_small_inverter_and_energy_in_tens_of_wh(port: int) -> None:
    # 5 kW fits int16 without scaling (W_SF 0); WH_SF 1 counts energy in units of 10 Wh.
    sim = SunSpecInverter(port=port, model=101, wh_sf=1, energy_start_wh=123_456_780.0,
                          inverter=noon_inverter(rated_w=5000.0), faults=InverterFaults(stuck=True))
    async with sim:
        session, got = await first_poll(make_driver(port))
        await session.aclose()
        truth = sim.sample()
    assert sim.w_sf == 0
    assert got["ac_power"].value == round(truth["ac_power"])
    assert got["energy"].value == round(truth["energy"] / 10) * 10


async def test_not_implemented_values_become_flagged_readings(port: int) -> None:
    sim = SunSpecInverter(port=port, model=103, inverter=noon_inverter(),
                          not_implemented={"W", "WH", "DCW_SF", "Hz", "TmpCab"})
    async with sim:
        drv = make_driver(port, points=["W", "WH", "DCW", "Hz", "Tmp", "St", "DCV"])
        session, got = await first_poll(drv)
        await session.aclose()
    for name in ("ac_power", "energy", "dc_power", "frequency"):
        assert got[name].quality is Quality.FAULT and got[name].value == 0, name
    assert got["state"].quality is Quality.NORMAL and got["dc_voltage"].quality is Quality.NORMAL
    # TmpCab is missing: the driver reports the first temperature the device has (heat sink).
    assert got["temp"].quality is Quality.NORMAL and got["temp"].value > 30
    assert drv.counters.extra["not_implemented"] == 4


async def test_no_temperature_at_all_gives_no_temperature_reading(port: int) -> None:
    sim = SunSpecInverter(port=port, model=113, inverter=noon_inverter(),
                          not_implemented={"TmpCab", "TmpSnk", "W"})
    async with sim:
        session, got = await first_poll(make_driver(port, points=["W", "Tmp"]))
        await session.aclose()
    assert set(got) == {"ac_power"}
    assert got["ac_power"].quality is Quality.FAULT  # float32 NaN


async def test_energy_counter_wraps_at_2_32_and_stays_monotonic(port: int) -> None:
    sim = SunSpecInverter(port=port, energy_start_wh=2**32 - 1000, inverter=noon_inverter())
    async with sim:
        drv = make_driver(port, points=["WH"])
        session, got = await first_poll(drv)
        before = got["energy"].value
        assert before == pytest.approx(2**32 - 1000, abs=50)
        sim.set_energy(2**32 + 500)  # the register now reads ~500: the accumulator wrapped
        after = (await anext(session))[0]
        sim.set_energy(2**32 + 2**31)
        later = (await anext(session))[0]
        await session.aclose()
    assert after.quality is Quality.NORMAL
    assert after.value == pytest.approx(2**32 + 500, abs=50) and after.value > before
    assert later.value == pytest.approx(2**32 + 2**31, abs=50)
    assert drv.counters.extra["energy_wraps"] == 1 and drv.energy.resets == 0


async def test_exception_replies_become_flagged_readings(port: int) -> None:
    sim = SunSpecInverter(port=port, inverter=noon_inverter())
    async with sim:
        drv = make_driver(port)
        session, got = await first_poll(drv)
        sim.fail_with(4)  # device failure
        failed = await anext(session)
        sim.fail_with(6)  # device busy
        busy = await anext(session)
        sim.fail_with(None)
        back = await anext(session)
        await session.aclose()
    assert {r.point for r in failed} == set(got)
    assert all(r.quality is Quality.FAULT and r.value == 0 for r in failed)
    assert all(r.quality is Quality.COMM_FAILURE for r in busy)
    assert all(r.quality is Quality.NORMAL for r in back)
    assert drv.counters.extra["exception_4"] == 1 and drv.counters.extra["exception_6"] == 1


async def test_wrong_register_map_is_a_clear_error(port: int) -> None:
    async with SunSpecInverter(port=port, inverter=noon_inverter(), faults=InverterFaults(wrong_map=True)):
        with pytest.raises(ChainError, match="no 'SunS' marker"):
            await first_poll(make_driver(port))


async def test_communication_loss_ends_the_session(port: int) -> None:
    sim = SunSpecInverter(port=port, inverter=noon_inverter())
    async with sim:
        session, _ = await first_poll(make_driver(port, timeout_s=0.3))
        sim.lose_comm()
        with pytest.raises(DriverError):
            await anext(session)
        await session.aclose()


async def test_a_chain_whose_common_model_lies_about_its_length_is_refused(port: int) -> None:
    # The next header then lands on the pad register (id 0): the driver must not guess offsets.
    sim = SunSpecInverter(port=port, inverter=noon_inverter())
    sim._common[1] = 65 if sim.common_len == 66 else 66  # common L now lies by one register
    async with sim:
        with pytest.raises(ChainError):
            await first_poll(make_driver(port))


async def test_settings_refuse_unknown_points_and_duplicates() -> None:
    from pydantic import ValidationError

    from carbonlink.edge.drivers.sunspec import SunSpecDevice

    with pytest.raises(ValidationError):
        SunSpecDevice(id="i", driver="sunspec", host="h", points=["W", "Watts"])
    with pytest.raises(ValidationError):
        SunSpecDevice(id="i", driver="sunspec", host="h", points=["W", "W"])
    dev = SunSpecDevice(id="i", driver="sunspec", host="h")
    assert dev.port == 502 and dev.bases == [0, 40000, 50000] and math.isclose(dev.timeout_s, 2.0)
