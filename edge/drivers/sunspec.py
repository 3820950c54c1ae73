"""SunSpec Modbus driver: find the model chain, then poll the inverter model.

On every connect the driver looks for the 'SunS' marker at 0, 40000 and 50000,
walks the chain of [ID][L][L registers] blocks up to the end model 0xFFFF
(addresses come from the device, never from a table: the common model is 66
registers on some devices and 65 on others), reads model 1 once for the logs,
then polls one inverter model (101/102/103 integer + scale factors, or
111/112/113 float32) with one request per poll. Offsets are from the SunSpec
model definitions (sunspec/models json/model_103.json, model_113.json).

Not-implemented values (int16/sunssf 0x8000, uint16/enum16 0xFFFF, acc32 0,
float32 NaN) and unusable scale factors become FAULT-flagged readings, never
numbers. Exception replies become flagged readings (as in edge/drivers/modbus.py);
timeouts and lost connections end the session so the supervisor reconnects and
the chain is discovered again.

Energy: WH is a 32-bit accumulator that wraps at 2^32. The driver publishes a
monotonic ``energy`` point: it keeps the last raw value and adds 2^32 when the
counter wraps; when the counter falls back for another reason (the device reset
it), the total continues from the last value. This state lives in memory only
and survives reconnects, but not a restart of the agent: after an agent restart
``energy`` starts again from the device's raw value, so it can step down by
multiples of 2^32·10^WH_SF (or by earlier resets). Consumers that need lifetime
energy must therefore work from differences and treat a step down as a new
counter epoch.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator
from pymodbus.client import AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException

from carbonlink.kernel.wire import Quality, Reading, now_ms

from .base import DriverError
from .modbus import EXCEPTION_QUALITY, ModbusDriver
from .settings import DeviceBase

log = logging.getLogger(__name__)

SUNS = (0x5375, 0x6E53)  # 'SunS'
END_ID = 0xFFFF
BASES = (0, 40000, 50000)
MAX_MODELS = 64  # far more than any inverter carries; bounds the walk on a garbage map
ADDR_SPACE = 0x10000
INT_MODELS = frozenset({101, 102, 103})
FLOAT_MODELS = frozenset({111, 112, 113})
MODEL_LEN = {101: 50, 102: 50, 103: 50, 111: 60, 112: 60, 113: 60}  # fixed-length models
WRAP = 1 << 32
WRAP_WINDOW = 1 << 30  # a fall from the top quarter into the bottom quarter is a wrap, not a reset

PointName = Literal["W", "WH", "DCW", "A", "PhV", "Hz", "St", "Tmp", "VA", "VAr", "PF", "DCA", "DCV"]
DEFAULT_POINTS: tuple[PointName, ...] = ("W", "WH", "DCW", "A", "PhV", "Hz", "St", "Tmp")


class ChainError(DriverError):
    """No usable SunSpec model chain on the device."""


# --- settings -----------------------------------------------------------------------------


class SunSpecDevice(DeviceBase):
    driver: Literal["sunspec"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    timeout_s: float = Field(default=2.0, gt=0, le=60)
    points: list[PointName] = Field(default_factory=lambda: list(DEFAULT_POINTS), min_length=1)
    bases: list[int] = Field(default_factory=lambda: list(BASES), min_length=1,
                             description="where to look for 'SunS', in order")

    @field_validator("points")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each point may be listed once")
        return v

    @field_validator("bases")
    @classmethod
    def _in_range(cls, v: list[int]) -> list[int]:
        if any(not 0 <= b <= ADDR_SPACE - 4 for b in v):
            raise ValueError("base addresses must be between 0 and 65532")
        return v


# --- the chain walk -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    id: int
    addr: int  # address of the model's ID register
    length: int  # L: registers after the ID and L registers


@dataclass(frozen=True)
class Chain:
    base: int
    models: tuple[ModelRef, ...]

    def first(self, ids: frozenset[int]) -> ModelRef | None:
        return next((m for m in self.models if m.id in ids), None)


ReadFn = Callable[[int, int], Awaitable[list[int] | None]]  # None: the device answered with an exception


async def walk_chain(read: ReadFn, bases: Sequence[int] = BASES, max_models: int = MAX_MODELS) -> Chain:
    """Find 'SunS' at the first base that has it and walk the chain to the end model.

    Raises ChainError when no base has the marker or the chain is broken; the
    walk is bounded (addresses only grow, at most `max_models` models).
    """
    tried = []
    for base in bases:
        head = await read(base, 2)
        if head is not None and tuple(head[:2]) == SUNS:
            return await _walk_from(read, base, max_models)
        tried.append(f"{base}: {'exception reply' if head is None else 'no marker'}")
    raise ChainError("no 'SunS' marker (" + "; ".join(tried) + ")")


async def _walk_from(read: ReadFn, base: int, max_models: int) -> Chain:
    models: list[ModelRef] = []
    addr = base + 2
    while True:
        if addr + 1 > ADDR_SPACE:
            raise ChainError(f"chain from {base} runs past the register space without an end model")
        hdr = await read(addr, 2) if addr + 2 <= ADDR_SPACE else None
        if hdr is None or len(hdr) < 2:
            # Some devices answer only the end model's ID, not an L after it.
            one = await read(addr, 1)
            if one and one[0] == END_ID:
                return Chain(base, tuple(models))
            raise ChainError(f"cannot read model header at {addr}")
        mid, length = hdr[0], hdr[1]
        if mid == END_ID:
            return Chain(base, tuple(models))
        if mid == 0:
            raise ChainError(f"model id 0 at {addr}: the map is empty or not SunSpec")
        if len(models) >= max_models:
            raise ChainError(f"more than {max_models} models from {base}: not a SunSpec chain")
        if addr + 2 + length > ADDR_SPACE:
            raise ChainError(f"model {mid} at {addr} with L={length} overruns the register space")
        models.append(ModelRef(mid, addr, length))
        addr += 2 + length


# --- decoding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """Where one published point sits in the inverter model (offset from the ID register)."""

    name: str
    unit: str
    off: int
    typ: Literal["int16", "uint16", "enum16", "acc32", "float32"]
    sf: int | None = None  # offset of the scale factor (integer models)


# 101/102/103 (json/model_103.json) and 111/112/113 (json/model_113.json).
INT_SPECS: dict[str, tuple[Spec, ...]] = {
    "W": (Spec("ac_power", "W", 14, "int16", 15),),
    "WH": (Spec("energy", "Wh", 24, "acc32", 26),),
    "DCW": (Spec("dc_power", "W", 31, "int16", 32),),
    "A": (Spec("ac_current", "A", 2, "uint16", 6),),
    "PhV": (Spec("ac_voltage", "V", 10, "uint16", 13), Spec("ac_voltage_b", "V", 11, "uint16", 13),
            Spec("ac_voltage_c", "V", 12, "uint16", 13)),
    "Hz": (Spec("frequency", "Hz", 16, "uint16", 17),),
    "St": (Spec("state", "", 38, "enum16"),),
    "Tmp": (Spec("temp", "°C", 33, "int16", 37), Spec("temp", "°C", 34, "int16", 37),
            Spec("temp", "°C", 35, "int16", 37), Spec("temp", "°C", 36, "int16", 37)),
    "VA": (Spec("apparent_power", "VA", 18, "int16", 19),),
    "VAr": (Spec("reactive_power", "var", 20, "int16", 21),),
    "PF": (Spec("power_factor", "%", 22, "int16", 23),),
    "DCA": (Spec("dc_current", "A", 27, "uint16", 28),),
    "DCV": (Spec("dc_voltage", "V", 29, "uint16", 30),),
}
FLOAT_SPECS: dict[str, tuple[Spec, ...]] = {
    "W": (Spec("ac_power", "W", 22, "float32"),),
    "WH": (Spec("energy", "Wh", 32, "float32"),),
    "DCW": (Spec("dc_power", "W", 38, "float32"),),
    "A": (Spec("ac_current", "A", 2, "float32"),),
    "PhV": (Spec("ac_voltage", "V", 16, "float32"), Spec("ac_voltage_b", "V", 18, "float32"),
            Spec("ac_voltage_c", "V", 20, "float32")),
    "Hz": (Spec("frequency", "Hz", 24, "float32"),),
    "St": (Spec("state", "", 48, "enum16"),),
    "Tmp": (Spec("temp", "°C", 40, "float32"), Spec("temp", "°C", 42, "float32"),
            Spec("temp", "°C", 44, "float32"), Spec("temp", "°C", 46, "float32")),
    "VA": (Spec("apparent_power", "VA", 26, "float32"),),
    "VAr": (Spec("reactive_power", "var", 28, "float32"),),
    "PF": (Spec("power_factor", "%", 30, "float32"),),
    "DCA": (Spec("dc_current", "A", 34, "float32"),),
    "DCV": (Spec("dc_voltage", "V", 36, "float32"),),
}


def raw_value(regs: Sequence[int], off: int, typ: str) -> float | None:
    """The raw point value, or None when it carries the not-implemented code."""
    if typ == "float32":
        f = struct.unpack(">f", struct.pack(">HH", regs[off], regs[off + 1]))[0]
        return None if not math.isfinite(f) else float(f)
    if typ == "acc32":
        v = regs[off] << 16 | regs[off + 1]
        return None if v == 0 else float(v)
    w = regs[off]
    if typ == "int16":
        return None if w == 0x8000 else float(w - 0x10000 if w & 0x8000 else w)
    return None if w == 0xFFFF else float(w)  # uint16, enum16


def scale_factor(regs: Sequence[int], off: int) -> int | None:
    """A sunssf register; None when not implemented or outside the spec's −10…10."""
    w = regs[off]
    sf = w - 0x10000 if w & 0x8000 else w
    return sf if -10 <= sf <= 10 else None


def text(regs: Sequence[int]) -> str:
    raw = b"".join(w.to_bytes(2, "big") for w in regs)
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def _implemented(regs: Sequence[int], spec: Spec) -> bool:
    return raw_value(regs, spec.off, spec.typ) is not None and (
        spec.sf is None or scale_factor(regs, spec.sf) is not None)


@dataclass
class EnergyCounter:
    """A monotonic total from a device accumulator that wraps at 2^32 or resets."""

    last: float | None = None
    offset: float = 0.0
    wraps: int = 0
    resets: int = 0

    def update(self, raw: float, *, acc32: bool) -> float:
        if self.last is not None and raw < self.last:
            if acc32 and self.last >= WRAP - WRAP_WINDOW and raw < WRAP_WINDOW:
                self.offset += WRAP
                self.wraps += 1
            else:  # the device restarted its counter: continue from where it was
                self.offset += self.last
                self.resets += 1
        self.last = raw
        return self.offset + raw


# --- the driver ---------------------------------------------------------------------------


@dataclass
class Identity:
    manufacturer: str = ""
    model: str = ""
    serial: str = ""
    version: str = ""


@dataclass
class _Plan:
    ref: ModelRef
    specs: list[tuple[str, tuple[Spec, ...]]] = field(default_factory=list)


class SunSpecDriver(ModbusDriver):
    kind = "sunspec"
    settings: SunSpecDevice

    def __init__(self, device_id: str, settings: SunSpecDevice) -> None:
        super().__init__(device_id, settings)
        self.energy = EnergyCounter()  # kept across reconnects; see the module docstring
        self.identity: Identity | None = None
        self.chain: Chain | None = None
        self._last_exception = 0
        self._plan: _Plan | None = None  # this connection's, made by prepare()

    def make_client(self) -> ModbusBaseClient:
        s = self.settings
        return AsyncModbusTcpClient(s.host, port=s.port, timeout=s.timeout_s, retries=0, reconnect_delay=0)

    def endpoint(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def prepare(self, client: ModbusBaseClient) -> None:
        self._plan = None
        self._plan = await self.discover(client)

    async def _read(self, client: ModbusBaseClient, addr: int, count: int) -> list[int] | None:
        try:
            resp = await client.read_holding_registers(addr, count=count, device_id=self.settings.unit_id)
        except ModbusException as exc:
            raise DriverError(f"{self.describe()} read @{addr}: {exc}") from exc
        if resp.isError():
            self._last_exception = getattr(resp, "exception_code", 0)
            return None
        return list(resp.registers)

    async def discover(self, client: ModbusBaseClient) -> _Plan:
        """Walk the chain, read the common model once, choose the inverter model to poll."""
        self.counters.bump("discoveries")
        self.chain = chain = await walk_chain(lambda a, n: self._read(client, a, n), self.settings.bases)
        ids = [m.id for m in chain.models]
        ref = chain.first(INT_MODELS | FLOAT_MODELS)
        if ref is None:
            raise ChainError(f"no inverter model (101-103, 111-113) in the chain at {chain.base}: {ids}")
        if ref.length != MODEL_LEN[ref.id]:
            raise ChainError(f"model {ref.id} at {ref.addr} has L={ref.length}, the spec says "
                             f"{MODEL_LEN[ref.id]}: the map is not what it claims")
        common = chain.first(frozenset({1}))
        if common is not None and common.length >= 64:
            regs = await self._read(client, common.addr + 2, 64)
            if regs is not None:
                ident = Identity(text(regs[0:16]), text(regs[16:32]), text(regs[48:64]), text(regs[40:48]))
                if ident != self.identity:
                    log.info("%s: %s %s serial %s firmware %s, models %s at base %d", self.describe(),
                             ident.manufacturer, ident.model, ident.serial, ident.version, ids, chain.base)
                    self.identity = ident
        table = FLOAT_SPECS if ref.id in FLOAT_MODELS else INT_SPECS
        phases = ref.id % 10
        plan = _Plan(ref)
        for point in self.settings.points:
            specs = table[point]
            if point == "PhV":
                specs = specs[:phases]  # a single-phase inverter has no phase B or C
            plan.specs.append((point, specs))
        return plan

    async def poll_once(self, client: ModbusBaseClient) -> list[Reading]:
        plan = self._plan
        assert plan is not None, "prepare() makes the plan before the first poll"
        ref = plan.ref
        ts = now_ms()
        regs = await self._read(client, ref.addr, ref.length + 2)
        if regs is None:
            return self._flag_all(plan, ts)
        if len(regs) < ref.length + 2:
            raise DriverError(f"{self.describe()}: short reply, {len(regs)} of {ref.length + 2} registers")
        if regs[0] != ref.id or regs[1] != ref.length:
            # The device restarted with another map, or its chain is not up yet: rediscover.
            raise ChainError(f"model {ref.id} at {ref.addr} now reads {regs[0]}/{regs[1]}; rediscovering")
        out: list[Reading] = []
        for point, specs in plan.specs:
            if point == "Tmp":  # the first temperature the device implements; none → no reading
                spec = next((sp for sp in specs if _implemented(regs, sp)), None)
                if spec is not None:
                    out.append(self._reading(regs, spec, ts))
                continue
            out.extend(self._reading(regs, spec, ts) for spec in specs)
        return out

    def _flag_all(self, plan: _Plan, ts: int) -> list[Reading]:
        code = self._last_exception
        self.counters.bump(f"exception_{code}")
        q = EXCEPTION_QUALITY.get(code, Quality.FAULT).value
        # Unknown values: reported flagged, never as a plausible number.
        return [Reading.make(self.device_id, spec.name, ts, 0.0, spec.unit, q)
                for point, specs in plan.specs for spec in (specs[:1] if point == "Tmp" else specs)]

    def _reading(self, regs: Sequence[int], spec: Spec, ts: int) -> Reading:
        raw = raw_value(regs, spec.off, spec.typ)
        sf: int | None = 0
        if spec.sf is not None:
            sf = scale_factor(regs, spec.sf)
        if raw is None or sf is None:
            self.counters.bump("not_implemented")
            return Reading.make(self.device_id, spec.name, ts, 0.0, spec.unit, Quality.FAULT.value)
        if spec.name == "energy":
            before = self.energy.wraps, self.energy.resets
            raw = self.energy.update(raw, acc32=spec.typ == "acc32")
            if (self.energy.wraps, self.energy.resets) != before:
                kind = "wrapped" if self.energy.wraps != before[0] else "was reset by the device"
                log.warning("%s: energy counter %s; the published total continues", self.describe(), kind)
                self.counters.bump("energy_wraps" if kind == "wrapped" else "energy_resets")
        value = raw * 10**sf if sf >= 0 else raw / 10 ** -sf  # divide: 2313 / 10 is exactly 231.3
        return Reading.make(self.device_id, spec.name, ts, value, spec.unit)
