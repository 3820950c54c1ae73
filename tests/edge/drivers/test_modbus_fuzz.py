"""Hypothesis on the Modbus path: decoding against struct, block planning invariants, and the driver over real
Modbus TCP fed random registers and random exception replies (never a crash, never a value for a failed read)."""

from __future__ import annotations

import asyncio
import math
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from carbonlink.edge.drivers.modbus import (
    MAX_GAP,
    MAX_REGS,
    WIDTH,
    ModbusPoint,
    ModbusTcpDevice,
    ModbusTcpDriver,
    decode,
    plan_blocks,
)
from carbonlink.kernel.wire import Reading, WireError
from tests.services import free_port

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WIRE = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

FMT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
RANGE = {"int16": (-2**15, 2**15 - 1), "uint16": (0, 2**16 - 1), "int32": (-2**31, 2**31 - 1),
         "uint32": (0, 2**32 - 1)}
orders = st.sampled_from(["big", "little"])


def device_words(raw: bytes, byte_order: str, word_order: str) -> list[int]:
    """What a device with this byte and word order puts in its registers, from the big-endian bytes."""
    words = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "little":
        words = [w[::-1] for w in words]
    if word_order == "little":
        words.reverse()
    return [int.from_bytes(w, "big") for w in words]


@st.composite
def typed_values(draw: st.DrawFn) -> tuple[str, float]:
    typ = draw(st.sampled_from(sorted(FMT)))
    if typ == "float32":
        return typ, draw(st.floats(width=32, allow_nan=False))
    lo, hi = RANGE[typ]
    return typ, float(draw(st.integers(lo, hi)))


@FAST
@given(typed_values(), orders, orders, st.sampled_from([1.0, 0.1, 0.01, 10.0, -1.0]), st.sampled_from([0.0, -40.0]))
def test_decode_round_trips_struct_packed_values(tv: tuple[str, float], byte_order: str, word_order: str,
                                                  scale: float, offset: float) -> None:
    typ, value = tv
    raw = struct.pack(">" + FMT[typ], int(value) if typ != "float32" else value)
    p = ModbusPoint.model_validate({"name": "x", "register": 0, "type": typ, "byte_order": byte_order,
                                    "word_order": word_order, "scale": scale, "offset": offset})
    got = decode(device_words(raw, byte_order, word_order), p)
    want = value * scale + offset
    assert got == want or (math.isinf(got) and math.isinf(want) and got == want)


@FAST
@given(st.integers(0, 0xFFFF))
def test_bool_is_any_nonzero_register(word: int) -> None:
    assert decode([word], ModbusPoint.model_validate({"name": "b", "register": 0, "type": "bool"})) == float(word != 0)


@st.composite
def point_maps(draw: st.DrawFn, max_address: int = 65534, tables: tuple[str, ...] = ("holding", "input", "coil"),
               max_size: int = 60) -> list[ModbusPoint]:
    n = draw(st.integers(1, max_size))
    out = []
    for i in range(n):
        table = draw(st.sampled_from(tables))
        typ = "bool" if table == "coil" else draw(st.sampled_from(sorted(WIDTH)))
        # Addresses cluster sometimes (shared blocks) and spread sometimes (gaps, many blocks).
        addr = draw(st.one_of(st.integers(0, 300), st.integers(0, max_address - 1)))
        out.append(ModbusPoint.model_validate({"name": f"p{i}", "register": addr, "type": typ, "table": table}))
    return out


def _end(p: ModbusPoint) -> int:
    return p.address + WIDTH[p.type]


# Register words that decode to edge cases: zero, all ones, NaN, infinity, the sign bit.
SPECIAL = [0x0000, 0xFFFF, 0x7FC0, 0x7F80, 0xFF80, 0x8000, 0x0001]


@FAST
@given(point_maps(), st.integers(0, 2**32), st.dictionaries(st.integers(0, 65535), st.sampled_from(SPECIAL)))
def test_plan_blocks_invariants(points: list[ModbusPoint], seed: int, special: dict[int, int]) -> None:
    blocks = plan_blocks(points)
    covered = [p.name for b in blocks for p in b.points]
    assert sorted(covered) == sorted(p.name for p in points)  # every point exactly once
    for b in blocks:
        assert 1 <= b.count <= MAX_REGS
        assert all(p.table == b.table for p in b.points)
        assert b.start == min(p.address for p in b.points) and b.start + b.count == max(map(_end, b.points))
        end = b.start
        for p in sorted(b.points, key=lambda p: p.address):
            assert p.address - end <= MAX_GAP  # never reads through a larger gap
            end = max(end, _end(p))

    def mem(a: int, n: int) -> list[int]:  # pseudo-random registers, with edge-case words where drawn
        return [special.get(x, ((x ^ seed) * 2654435761 >> 11) & 0xFFFF) for x in range(a, a + n)]

    for b in blocks:  # decoding from the block equals decoding each point on its own
        words = mem(b.start, b.count)
        for p in b.points:
            off = p.address - b.start
            one, alone = decode(words[off : off + WIDTH[p.type]], p), decode(mem(p.address, WIDTH[p.type]), p)
            assert one == alone or (math.isnan(one) and math.isnan(alone))


# --- the driver over real Modbus TCP --------------------------------------------------------------

SIZE = 400
CODES = [1, 2, 3, 4, 5, 6, 10, 11]


@dataclass
class Scenario:
    registers: list[int] = field(default_factory=lambda: [0] * SIZE)
    exceptions: dict[tuple[int, int], int] = field(default_factory=dict)  # (function code, start) → code


class LoopThread:
    """A server and the driver's client on one event loop in a thread, so a sync hypothesis test can drive them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.scenario = Scenario()
        self.port = free_port()

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _action(self, fc: int, start: int, address: int, count: int, registers: list[int],
                      values: Any) -> ExcCodes | None:
        code = self.scenario.exceptions.get((fc, address))
        if code is not None:
            return ExcCodes(code)
        registers[:SIZE] = self.scenario.registers
        return None

    async def start(self) -> None:
        regs = [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        device = SimDevice(1, simdata=(bits, bits, regs, list(regs)), action=self._action)
        self.server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        self.serving = asyncio.create_task(self.server.serve_forever())
        while not self.server.is_active():
            await asyncio.sleep(0.01)
        self.client = AsyncModbusTcpClient("127.0.0.1", port=self.port, timeout=2, retries=0, reconnect_delay=0)
        assert await self.client.connect()

    async def stop(self) -> None:
        self.client.close()
        await self.server.shutdown()
        self.serving.cancel()

    def close(self) -> None:
        self.run(self.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def wire() -> Iterator[LoopThread]:
    lt = LoopThread()
    lt.run(lt.start())
    yield lt
    lt.close()


@WIRE
@given(point_maps(max_address=SIZE - 2, tables=("holding", "input"), max_size=30),
       st.lists(st.integers(0, 0xFFFF) | st.sampled_from(SPECIAL), min_size=SIZE, max_size=SIZE), st.data())
def test_driver_never_crashes_and_never_values_a_failed_read(wire: LoopThread, points: list[ModbusPoint],
                                                             registers: list[int], data: st.DataObject) -> None:
    blocks = plan_blocks(points)
    failing = data.draw(st.lists(st.sampled_from(range(len(blocks))), unique=True))
    fc = {"holding": 3, "input": 4}
    wire.scenario = Scenario(registers, {(fc[blocks[i].table], blocks[i].start): data.draw(st.sampled_from(CODES))
                                         for i in failing})
    dev = ModbusTcpDevice(id="fuzz", driver="modbus_tcp", host="127.0.0.1", port=wire.port, points=points)
    drv = ModbusTcpDriver("fuzz", dev)
    readings: list[Reading] = wire.run(drv.poll_once(wire.client))
    assert [r.point for r in readings] == [p.name for b in blocks for p in b.points]
    failed = {p.name for i in failing for p in blocks[i].points}
    rejected = 0
    for r, p in zip(readings, (p for b in blocks for p in b.points), strict=True):
        if p.name in failed:
            assert r.quality.value in "DB" and r.value == 0  # flagged, never a plausible number
            continue
        value = decode(registers[p.address : _end(p)], p)
        try:
            want = Reading.make("fuzz", p.name, 0, value, p.unit).value
        except WireError:  # NaN or infinity: rejected and flagged, not published as a number
            assert r.quality.value == "D" and r.value == 0
            rejected += 1
            continue
        assert r.quality.value == "N" and r.value == want
    assert drv.counters.rejected == rejected
    assert sum(drv.counters.extra.values()) == len(failing)
