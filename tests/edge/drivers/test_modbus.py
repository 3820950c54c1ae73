"""The Modbus TCP driver against a real pymodbus server on loopback."""

from __future__ import annotations

import asyncio
import struct

import pytest

from carbonlink.edge.drivers.base import DriverError
from carbonlink.edge.drivers.modbus import ModbusPoint, ModbusTcpDevice, ModbusTcpDriver, decode, plan_blocks
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import LAYOUT, CemsStack
from carbonlink.simulators.modbus_host import ModbusDeviceHost
from tests.simulators.clocks import Paced


def pt(name: str, reg: int, typ: str = "uint16", **kw: object) -> ModbusPoint:
    return ModbusPoint.model_validate({"name": name, "register": reg, "type": typ, **kw})


def test_plan_merges_near_registers_and_splits_far_ones() -> None:
    blocks = plan_blocks([pt("a", 0), pt("b", 1, "float32"), pt("c", 5), pt("d", 300), pt("e", 2, table="input")])
    assert [(b.table, b.start, b.count, len(b.points)) for b in blocks] == [
        ("holding", 0, 6, 3), ("holding", 300, 1, 1), ("input", 2, 1, 1)]
    many = plan_blocks([pt(f"p{i}", i * 2, "float32") for i in range(100)])
    assert all(b.count <= 125 for b in many) and sum(len(b.points) for b in many) == 100


@pytest.mark.parametrize("typ, words, kw, want", [
    ("int16", [0xFFFE], {}, -2.0),
    ("uint16", [0xFFFE], {"scale": 0.1, "offset": 1}, 6554.4),
    ("int32", [0xFFFF, 0xFFFF], {}, -1.0),
    ("uint32", [0x0001, 0x0000], {}, 65536.0),
    ("uint32", [0x0000, 0x0001], {"word_order": "little"}, 65536.0),
    ("float32", list(struct.unpack(">HH", struct.pack(">f", 12.5))), {}, 12.5),
    ("uint16", [0x3412], {"byte_order": "little"}, 0x1234),
])
def test_decode(typ: str, words: list[int], kw: dict[str, object], want: float) -> None:
    assert decode(words, pt("x", 0, typ, **kw)) == pytest.approx(want)


async def test_reads_the_cems_simulator(port: int) -> None:
    stack = CemsStack(clock=Paced())
    async with ModbusDeviceHost(stack.fill, port=port):
        dev = ModbusTcpDevice(id="cems-1", driver="modbus_tcp", host="127.0.0.1", port=port, pointmap="cems",
                              poll_interval_s=0.05)
        drv = ModbusTcpDriver("cems-1", dev)
        assert len(drv.blocks) == 1  # 12 float32 points in one request
        got: list[list[Reading]] = []
        async for batch in drv.session():
            got.append(batch)
            if len(got) == 3:
                break
    names = [r.point for r in got[0]]
    assert names == [*LAYOUT, "status"]
    v = {r.point: r.value for r in got[-1]}
    assert 0 < v["so2"] < 100 and 2 <= v["o2"] <= 20 and all(r.quality == "N" for r in got[-1])
    assert v["nox"] == pytest.approx(v["no"] * 46 / 30 + v["no2"], rel=1e-3)  # NOx as NO2


async def test_exception_reply_becomes_flagged_reading(port: int) -> None:
    host = ModbusDeviceHost(CemsStack(clock=Paced()).fill, port=port)
    async with host:
        host.fail_with = 4  # SERVER_DEVICE_FAILURE
        dev = ModbusTcpDevice(id="c", driver="modbus_tcp", host="127.0.0.1", port=port, pointmap="cems")
        drv = ModbusTcpDriver("c", dev)
        batch = await anext(aiter(drv.session()))
    assert {r.quality for r in batch} == {"D"}
    assert drv.counters.extra == {"exception_4": 1}


async def test_supervisor_recovers_after_simulator_restart(port: int) -> None:
    got: list[Reading] = []

    async def sink(rs: list[Reading]) -> None:
        got.extend(rs)

    dev = ModbusTcpDevice(id="c", driver="modbus_tcp", host="127.0.0.1", port=port, pointmap="cems",
                          poll_interval_s=0.05, timeout_s=0.5)
    sup = DeviceSupervisor(ModbusTcpDriver("c", dev), sink)
    sup.backoff.initial, sup.backoff.cap = 0.05, 0.2
    sup.start()
    try:
        async with ModbusDeviceHost(CemsStack(clock=Paced()).fill, port=port):
            while len(got) < 24:
                await asyncio.sleep(0.05)
            errors = sup.counters.errors  # the first connect may have failed before the host listened
        # The device is gone: the session fails (a read times out after timeout_s), backoff starts.
        for _ in range(100):
            if sup.counters.errors > errors:
                break
            await asyncio.sleep(0.05)
        assert sup.state in ("backoff", "connecting") and sup.counters.errors > errors
        before = len(got)
        async with ModbusDeviceHost(CemsStack(clock=Paced()).fill, port=port):
            for _ in range(100):
                if len(got) > before + 24:
                    break
                await asyncio.sleep(0.05)
        assert len(got) > before + 24 and sup.counters.reconnects >= 1
    finally:
        await sup.stop()


async def test_connect_refused_is_a_driver_error(port: int) -> None:
    dev = ModbusTcpDevice(id="c", driver="modbus_tcp", host="127.0.0.1", port=port, pointmap="cems")
    with pytest.raises(DriverError):
        await anext(aiter(ModbusTcpDriver("c", dev).session()))
