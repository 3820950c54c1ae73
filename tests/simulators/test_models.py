"""The simulators know the right answer: their models are functions of (seed, time), not of polling."""

from __future__ import annotations

import struct

import pytest

from carbonlink.edge.drivers.modbus import ModbusTcpDevice, ModbusTcpDriver
from carbonlink.simulators.cems import FUEL_REGISTER, CemsStack
from carbonlink.simulators.forest import SPECIES, Forest, Tree
from carbonlink.simulators.inverter import SolarInverter
from carbonlink.simulators.meter import POINTS, ElectricityMeter
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from carbonlink.simulators.sunspec import SunSpecInverter
from tests.simulators.clocks import NOON, StepClock

HOUR = 3600.0


def test_the_stack_gives_the_same_gas_for_the_same_instant_however_it_is_asked() -> None:
    a, b = CemsStack(seed=3), CemsStack(seed=3)
    for t in range(0, 600, 7):  # a is asked often, b only at the end
        a.values(NOON + t)
    assert a.values(NOON + 600) == b.values(NOON + 600)
    assert CemsStack(seed=4).values(NOON + 600) != b.values(NOON + 600)


def test_the_stacks_co2_comes_from_its_fuel() -> None:
    stack = CemsStack(seed=3)
    truth = stack.truth(NOON, NOON + HOUR)
    # what leaves the stack is what the fuel made: CO2 share × dry standard flow × density = fuel × EF
    assert truth["co2_stack_t"] == pytest.approx(truth["co2_fuel_t"], rel=1e-12)
    assert truth["co2_fuel_t"] == pytest.approx(truth["fuel_t"] * stack.fuel.t_co2_per_t, rel=1e-12)
    g = stack.flue(NOON)
    assert 60 < g["flow"] < 130 and 10 < g["co2"] < 14 and g["fuel_t_h"] == pytest.approx(stack.fuel_t_h(NOON))
    full = CemsStack(seed=3, rated_flow_m3s=120.0)
    assert full.rated_fuel_t_h == pytest.approx(41.2, rel=0.01)  # 120 m³/s at full load is about 41 t/h of coal
    regs = [0] * 32
    CemsStack(seed=3, clock=lambda: NOON).fill(regs)
    fuel = struct.unpack(">f", struct.pack(">HH", *regs[FUEL_REGISTER:FUEL_REGISTER + 2]))[0]
    assert fuel == pytest.approx(stack.fuel_t_h(NOON), rel=1e-6)


@pytest.mark.parametrize("every", [1.0, 7.0, 60.0])
def test_the_inverters_counter_rises_by_its_energy_whatever_the_polling(every: float) -> None:
    inv = SolarInverter(seed=8, clock=StepClock(NOON, every))
    first = inv.values()["energy"]
    while inv.clock() < NOON + HOUR:  # type: ignore[operator]
        last = inv.values()
    rise = last["energy"] - first
    assert rise == pytest.approx(inv.energy_between(NOON + every, inv._last_t), rel=1e-9)  # type: ignore[arg-type]
    # an hour around noon on a 100 kW plant, some of it under clouds
    assert 30_000 < inv.energy_between(NOON, NOON + HOUR) < 100_000


def test_a_replaced_inverter_has_a_new_counter_but_the_plant_keeps_producing() -> None:
    inv = SolarInverter(seed=8)
    inv.values(NOON)
    inv.values(NOON + 600)
    before = inv.produced_wh
    inv.replace(counter_wh=5_000_000.0, serial="SN-2")
    v = inv.values(NOON + 1200)
    assert inv.serial == "SN-2" and v["energy"] == pytest.approx(5_000_000 + inv.energy_between(NOON + 600,
                                                                                                 NOON + 1200))
    assert inv.produced_wh == pytest.approx(inv.energy_between(NOON, NOON + 1200)) and inv.produced_wh > before
    assert SolarInverter(seed=8).power_w(NOON - 12 * HOUR) == 0  # midnight
    sim = SunSpecInverter(port=1, inverter=SolarInverter(seed=8, clock=lambda: NOON), serial="SN-1")
    old = sim.image()
    sim.replace_unit("SN-NEW")
    sn = slice(2 + 2 + 16 + 16 + 8 + 8, 2 + 2 + 16 + 16 + 8 + 8 + 16)  # common model: SN after Mn, Md, Opt, Vr
    assert sim.image()[sn] != old[sn] and sim.inv.energy_wh == 0.0


def test_the_meter_knows_what_was_bought() -> None:
    m = ElectricityMeter(seed=3, clock=StepClock(NOON, 10.0))
    first = m.values()["import_energy"]
    for _ in range(360):
        last = m.values()
    assert last["import_energy"] - first == pytest.approx(m.energy_between(NOON + 10, NOON + 3610), rel=1e-9)
    assert m.bought_kwh == pytest.approx(last["import_energy"] - first, rel=1e-9)
    assert 400 < last["power"] < 1400
    with pytest.raises(ValueError):
        ElectricityMeter(base_kw=-1)


async def test_the_meter_is_read_by_the_real_modbus_driver(port: int) -> None:
    meter = ElectricityMeter(seed=3, clock=lambda: NOON)
    dev = ModbusTcpDevice.model_validate({"id": "meter-1", "driver": "modbus_tcp", "host": "127.0.0.1", "port": port,
                                          "points": POINTS, "poll_interval_s": 0.01, "timeout_s": 0.5})
    async with ModbusDeviceHost(meter.fill, port=port):
        session = ModbusTcpDriver("meter-1", dev).session()
        try:
            batch = await anext(session)
        finally:
            await session.aclose()
    got = {r.point: (r.value, r.unit) for r in batch}
    assert got["import_energy"][0] == pytest.approx(meter.import_kwh, abs=0.01) and got["import_energy"][1] == "kWh"
    assert got["power"][0] == pytest.approx(meter.power_kw(NOON), rel=1e-6)


def test_trees_grow_the_same_whatever_the_advert_rate_and_carry_their_stand() -> None:
    a = Tree("D2:FC:00:00:00:01", "tree-001", seed=3)
    b = Tree("D2:FC:00:00:00:01", "tree-001", seed=3)
    for t in range(0, 10 * 86400, 600):
        a.values(NOON + t)
    for t in range(0, 10 * 86400, 7200):
        b.values(NOON + t)
    a.values(NOON + 10 * 86400)
    b.values(NOON + 10 * 86400)
    assert a.growth_um == pytest.approx(b.growth_um, rel=1e-12) and a.growth_um > 30
    assert a.species in SPECIES and 12 <= a.dbh_cm <= 32 and 5 < a.height_m < 26
    assert a.true_dbh_cm() == pytest.approx(a.dbh_cm + 2 * a.growth_um / 10_000)
    plot = Forest.plot(4, seed=5, start=NOON, wall=lambda: 0.0)
    stand = plot.stand()
    assert [s["id"] for s in stand] == ["tree-001", "tree-002", "tree-003", "tree-004"]
    assert stand == Forest.plot(4, seed=5, start=NOON, wall=lambda: 0.0).stand()
