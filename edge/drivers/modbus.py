"""Modbus TCP driver (pymodbus): point maps as data, merged register reads, typed decoding.

Registers are read in as few requests as the map allows (contiguous or nearly
contiguous points share one request of at most 125 registers, the Modbus limit
for function codes 3 and 4). Exception replies and timeouts become quality flags
rather than silently wrong values.

A device that reports its own state in a register (a CEMS analyser in calibration,
in maintenance, in fault) declares it in the point map: a point with ``role: status``
and a ``quality_map`` from the status value to an HJ 212-2017 data flag, e.g.
``{0: N, 1: C, 2: M, 3: D}``. The status point is published like any other; every
point it ``applies_to`` (default: all the device's other points) that was read
normally takes the mapped flag, so a calibration gas reading never passes as a
measurement. A status value missing from the map gives D (fault); an unreadable
status gives its own failure flag to the points it governs.
"""

from __future__ import annotations

import abc
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import Field, model_validator
from pymodbus.client import AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException

from carbonlink.kernel.wire import Quality, Reading, now_ms

from .base import Driver, DriverError, ticks
from .settings import DeviceBase, StrictModel

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # it logs every retry; we log failures once

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "bool"]
Table = Literal["holding", "input", "coil"]
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}
MAX_REGS = 125  # per read request (Modbus application protocol v1.1b3, 6.3)
MAX_GAP = 8  # read through a gap this small rather than issuing another request

# Exception codes (Modbus application protocol 7): 4 is a device failure, the rest mean
# the map and the device disagree. Neither is a valid measurement.
EXCEPTION_QUALITY = {1: Quality.FAULT, 2: Quality.FAULT, 3: Quality.FAULT, 4: Quality.FAULT,
                     5: Quality.COMM_FAILURE, 6: Quality.COMM_FAILURE,
                     10: Quality.COMM_FAILURE, 11: Quality.COMM_FAILURE}


class ModbusPoint(StrictModel):
    name: str = Field(min_length=1, max_length=64)
    address: int = Field(ge=0, le=65535, alias="register")
    table: Table = "holding"
    type: RegisterType = "uint16"
    byte_order: Literal["big", "little"] = "big"
    word_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = Field(default="", max_length=32)
    role: Literal["value", "status"] = "value"
    quality_map: dict[int, Quality] | None = Field(
        default=None, description="status points: status value → data flag of the points it applies to")
    applies_to: list[str] | None = Field(default=None, description="status points: default all other points")

    @model_validator(mode="after")
    def _status_fields(self) -> ModbusPoint:
        if self.role == "status":
            if not self.quality_map:
                raise ValueError(f"status point {self.name!r} needs a quality_map, e.g. {{0: N, 1: C, 2: M, 3: D}}")
            if self.type == "float32":
                raise ValueError(f"status point {self.name!r} must be an integer type or bool, not float32")
        elif self.quality_map is not None or self.applies_to is not None:
            raise ValueError(f"point {self.name!r}: quality_map and applies_to need 'role: status'")
        return self


def check_status_points(points: Sequence[ModbusPoint]) -> None:
    """Cross-point rules of a point map: unique names, status points applying to value points that exist."""
    names = [p.name for p in points]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"point names must be unique; repeated: {', '.join(dupes)}")
    values = {p.name for p in points if p.role == "value"}
    for p in points:
        unknown = sorted(set(p.applies_to or ()) - values)
        if unknown:
            raise ValueError(f"status point {p.name!r} applies_to unknown or non-value points: {', '.join(unknown)}")


class PointMapDevice(DeviceBase):
    """Settings every Modbus-register device shares: its points, inline or from a bundled map."""

    points: list[ModbusPoint] = Field(default_factory=list)
    pointmap: str | None = Field(default=None, description="name of a bundled point map, e.g. 'cems'")

    @model_validator(mode="after")
    def _points_or_map(self) -> PointMapDevice:
        if not self.points and not self.pointmap:
            raise ValueError("give either 'points' or 'pointmap'")
        check_status_points(self.resolved_points())  # a broken or unknown point map must stop start-up
        return self

    def resolved_points(self) -> list[ModbusPoint]:
        if self.points:
            return list(self.points)
        from carbonlink.edge.pointmaps import load_pointmap

        assert self.pointmap is not None
        return [ModbusPoint.model_validate(p) for p in load_pointmap(self.pointmap)]


class ModbusUnitDevice(PointMapDevice):
    """A point-map device at one Modbus unit id; each transport sets the ranges and defaults it allows."""

    unit_id: int
    timeout_s: float


class ModbusTcpDevice(ModbusUnitDevice):
    driver: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=2.0, gt=0, le=60)


@dataclass(frozen=True)
class ReadBlock:
    table: Table
    start: int
    count: int
    points: tuple[ModbusPoint, ...]


def plan_blocks(points: Sequence[ModbusPoint]) -> list[ReadBlock]:
    """Group points into as few read requests as possible."""
    blocks: list[ReadBlock] = []
    for table in ("holding", "input", "coil"):
        pts = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        cur: list[ModbusPoint] = []
        start = end = 0
        for p in pts:
            p_end = p.address + WIDTH[p.type]
            if cur and p.address - end <= MAX_GAP and p_end - start <= MAX_REGS:
                cur.append(p)
                end = max(end, p_end)
                continue
            if cur:
                blocks.append(ReadBlock(table, start, end - start, tuple(cur)))
            cur, start, end = [p], p.address, p_end
        if cur:
            blocks.append(ReadBlock(table, start, end - start, tuple(cur)))
    return blocks


def decode(regs: Sequence[int], p: ModbusPoint) -> float:
    """Registers (16-bit words as read) to the point's engineering value."""
    if p.type == "bool":
        return 1.0 if regs[0] else 0.0
    words = list(regs[: WIDTH[p.type]])
    if p.word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if p.byte_order == "little":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    fmt = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}[p.type]
    value = struct.unpack(fmt, raw)[0]
    return float(value) * p.scale + p.offset


class ModbusDriver(Driver):
    """The Modbus session, written once for every transport (TCP, RTU) and map (point map, SunSpec).

    A subclass gives the transport hook ``make_client`` (a pymodbus client, not yet connected) and
    ``poll_once``; ``prepare`` runs once per connection before polling (SunSpec walks its model chain).
    """

    settings: Any  # a device model with poll_interval_s

    @abc.abstractmethod
    def make_client(self) -> ModbusBaseClient:
        """A new, unconnected client for this device's transport."""

    @abc.abstractmethod
    def endpoint(self) -> str:
        """Where the device is, for errors: host:port or the serial port."""

    async def prepare(self, client: ModbusBaseClient) -> None:
        """Once per connection, before the first poll."""

    @abc.abstractmethod
    async def poll_once(self, client: ModbusBaseClient) -> list[Reading]:
        """One poll: every point read once."""

    async def session(self) -> AsyncIterator[list[Reading]]:
        client = self.make_client()
        try:
            if not await client.connect():
                raise DriverError(f"cannot connect to {self.endpoint()}")
            await self.prepare(client)
            async with aclosing(ticks(self.settings.poll_interval_s)) as tick:
                async for _ in tick:
                    yield await self.poll_once(client)
        finally:
            client.close()


class PointMapDriver(ModbusDriver):
    """A device described by a point map (registers, types, status points), on any Modbus transport."""

    settings: ModbusUnitDevice

    def __init__(self, device_id: str, settings: ModbusUnitDevice) -> None:
        super().__init__(device_id, settings)
        self.points = settings.resolved_points()
        check_status_points(self.points)
        self.blocks = plan_blocks(self.points)
        self.status_points = [p for p in self.points if p.role == "status"]
        value_names = [p.name for p in self.points if p.role == "value"]
        self._governed = {p.name: frozenset(p.applies_to or value_names) for p in self.status_points}

    async def poll_once(self, client: ModbusBaseClient) -> list[Reading]:
        ts = now_ms()
        out: list[Reading] = []
        for block in self.blocks:
            out.extend(await self._read_block(client, block, ts))
        return self._apply_status(out) if self.status_points else out

    def _apply_status(self, readings: list[Reading]) -> list[Reading]:
        """Flag the points a status point governs with the quality its value maps to."""
        by_name = {r.point: r for r in readings}
        flag: dict[str, Quality] = {}
        for sp in self.status_points:
            st = by_name[sp.name]
            if st.quality is Quality.NORMAL:
                assert sp.quality_map is not None
                q = sp.quality_map.get(round(st.value))
                if q is None:  # a state the map does not know: not a valid measurement
                    self.counters.bump("status_unknown")
                    q = Quality.FAULT
            else:
                q = st.quality  # the status is unknown, so are the values it qualifies
            if q is not Quality.NORMAL:
                for name in self._governed[sp.name]:
                    flag.setdefault(name, q)  # the first status in the map that objects wins
        if not flag:
            return readings
        # A point that already failed keeps its own, more specific flag.
        return [replace(r, quality=flag[r.point]) if r.quality is Quality.NORMAL and r.point in flag else r
                for r in readings]

    async def _read_block(self, client: ModbusBaseClient, block: ReadBlock, ts: int) -> list[Reading]:
        uid = self.settings.unit_id
        try:
            if block.table == "coil":
                resp = await client.read_coils(block.start, count=block.count, device_id=uid)
            elif block.table == "input":
                resp = await client.read_input_registers(block.start, count=block.count, device_id=uid)
            else:
                resp = await client.read_holding_registers(block.start, count=block.count, device_id=uid)
        except ModbusException as exc:
            # Timeout or lost connection: the session is over; the supervisor reconnects.
            raise DriverError(f"{self.describe()} read {block.table}@{block.start}: {exc}") from exc
        if resp.isError():
            code = getattr(resp, "exception_code", 0)
            self.counters.bump(f"exception_{code}")
            q = EXCEPTION_QUALITY.get(code, Quality.FAULT)
            # The value is unknown: report it flagged, never as a plausible number.
            return [Reading.make(self.device_id, p.name, ts, 0.0, p.unit, q.value) for p in block.points]
        words = [int(b) for b in resp.bits] if block.table == "coil" else list(resp.registers)
        out = []
        for p in block.points:
            off = p.address - block.start
            try:
                value = decode(words[off : off + WIDTH[p.type]], p)
                out.append(Reading.make(self.device_id, p.name, ts, value, p.unit))
            except (ValueError, struct.error, IndexError) as exc:  # NaN float, short reply
                self.counters.rejected += 1
                self.counters.last_error = f"{p.name}: {exc}"
                out.append(Reading.make(self.device_id, p.name, ts, 0.0, p.unit, Quality.FAULT.value))
        return out


class ModbusTcpDriver(PointMapDriver):
    kind = "modbus_tcp"
    settings: ModbusTcpDevice

    def make_client(self) -> ModbusBaseClient:
        s = self.settings
        return AsyncModbusTcpClient(s.host, port=s.port, timeout=s.timeout_s, retries=0, reconnect_delay=0)

    def endpoint(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"
