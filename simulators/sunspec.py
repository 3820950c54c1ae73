"""A SunSpec solar inverter served over real Modbus TCP, with faults on demand.

Register map (SunSpec Modbus, models from sunspec/models json/): the 'SunS' marker
at a configurable base (0, 40000 or 50000), common model 1 (L = 66, or 65 as some
devices report), one inverter model (101/102/103 integer + scale factors, or
111/112/113 float32), then the end model 0xFFFF with L = 0. Values come from
simulators/inverter.py (clear-sky power with passing clouds, rising energy).

The image is laid out field by field in spec order here, independently of the
driver's offset table, so the driver tests and pysunspec2 both cross-check it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from carbonlink.kernel.tasks import cancel_and_wait

from .clock import wall_clock
from .inverter import ST_SLEEPING, SolarInverter

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

SUNS = (0x5375, 0x6E53)  # 'SunS'
END_ID = 0xFFFF
BASES = (0, 40000, 50000)
INT_MODELS = (101, 102, 103)
FLOAT_MODELS = (111, 112, 113)

# Not-implemented encodings (sunspec2/mb.py): what a device sends for a point it lacks.
_NI = {"int16": [0x8000], "sunssf": [0x8000], "uint16": [0xFFFF], "enum16": [0xFFFF],
       "acc32": [0, 0], "bitfield32": [0xFFFF, 0xFFFF], "float32": [0x7FC0, 0x0000]}


@dataclass
class InverterFaults:
    """Faults the simulator applies on every request; change the fields at run time."""

    stuck: bool = False  # values freeze at the last sample (energy too)
    drift_per_h: float = 0.0  # AC power error growing by this share per hour since set
    spike_rate: float = 0.0  # probability that one sample's AC power is multiplied by spike_factor
    spike_factor: float = 3.0
    comm_loss: bool = False  # requests get no reply at all
    exception_code: int | None = None  # every request answered with this Modbus exception
    wrong_map: bool = False  # the 'SunS' marker is missing (the chain cannot be found)


def text(value: str, n: int) -> list[int]:
    """A SunSpec string point: n registers, NUL padded."""
    raw = value.encode("ascii")[: 2 * n].ljust(2 * n, b"\0")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, 2 * n, 2)]


def f32(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


def _sf_for(limit: float, span: int = 32767) -> int:
    """Smallest scale factor that fits `limit` into an int16 (how devices pick W_SF)."""
    sf = 0
    while limit / 10**sf > span:
        sf += 1
    return sf


class SunSpecInverter:
    """One SunSpec inverter on one Modbus TCP port; an async context manager."""

    def __init__(self, *, port: int, host: str = "127.0.0.1", unit_id: int = 1, base: int = 40000,
                 model: int = 103, common_len: int = 66, inverter: SolarInverter | None = None,
                 energy_start_wh: float | None = None, wh_sf: int = 0,
                 not_implemented: Iterable[str] = (), faults: InverterFaults | None = None,
                 manufacturer: str = "CarbonLink", model_name: str = "SIM-INV-100K",
                 serial: str = "SIM0001", version: str = "1.0.0") -> None:
        if base not in BASES:
            raise ValueError(f"base must be one of {BASES}, got {base}")
        if model not in INT_MODELS + FLOAT_MODELS:
            raise ValueError(f"model must be one of {INT_MODELS + FLOAT_MODELS}, got {model}")
        if common_len not in (65, 66):
            raise ValueError("common_len must be 66 (with pad) or 65 (without)")
        self.host, self.port, self.unit_id = host, port, unit_id
        self.base, self.model, self.common_len = base, model, common_len
        self.inv = inverter or SolarInverter(seed=port)
        if energy_start_wh is not None:
            self.inv.energy_wh = energy_start_wh
        self.wh_sf = wh_sf
        self.w_sf = _sf_for(self.inv.rated_w * 1.5)  # headroom for spikes before clamping
        self.not_implemented = frozenset(not_implemented)
        self.faults = faults or InverterFaults()
        self.requests = 0
        self._rng = random.Random(port)
        self._stuck: dict[str, float] | None = None
        self._drift_since = self.inv.clock()  # drift grows with the model's time, not the wall clock
        self._absent_until = 0.0
        self._names = (manufacturer, model_name, version)
        self._common = self._common_model(serial)
        self.size = len(self.image())
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[Any] | None = None

    # --- faults at run time ---------------------------------------------------------------
    def stick(self, on: bool = True) -> None:
        self.faults.stuck = on

    def drift(self, per_h: float) -> None:
        self.faults.drift_per_h = per_h
        self._drift_since = self.inv.clock()

    def spikes(self, rate: float, factor: float = 3.0) -> None:
        self.faults.spike_rate, self.faults.spike_factor = rate, factor

    def lose_comm(self, on: bool = True) -> None:
        self.faults.comm_loss = on

    def fail_with(self, code: int | None) -> None:
        if code is not None:
            ExcCodes(code)  # refuse codes Modbus does not define
        self.faults.exception_code = code

    def wrong_map(self, on: bool = True) -> None:
        self.faults.wrong_map = on

    def clear_faults(self) -> None:
        self.faults = InverterFaults()
        self._absent_until = 0.0

    def set_energy(self, wh: float) -> None:
        self.inv.energy_wh = wh

    def replace_unit(self, serial: str, counter_wh: float = 0.0) -> None:
        """The inverter swapped for another unit: its own serial number (common model SN) and counter."""
        self.inv.replace(counter_wh, serial)
        self._common = self._common_model(serial)

    def _common_model(self, serial: str) -> list[int]:
        manufacturer, model_name, version = self._names
        return ([1, self.common_len] + text(manufacturer, 16) + text(model_name, 16) + text("", 8)
                + text(version, 8) + text(serial, 16) + [self.unit_id] + [0] * (self.common_len - 65))

    async def restart(self, downtime_s: float = 0.5, *, reset_energy: bool = False,
                      chain_absent_s: float = 0.0) -> None:
        """Drop every connection, stay away `downtime_s`, come back (optionally with the
        energy counter at zero and the model chain absent while the firmware boots)."""
        await self.stop()
        await asyncio.sleep(downtime_s)
        if reset_energy:
            self.inv.energy_wh = 0.0
        self._absent_until = time.monotonic() + chain_absent_s
        await self.start()

    # --- the register image ---------------------------------------------------------------
    def sample(self) -> dict[str, float]:
        v = self.inv.values()
        if self.faults.stuck:
            self._stuck = self._stuck or v
            v = self._stuck
        else:
            self._stuck = None
        v = dict(v)
        if self.faults.drift_per_h:
            hours = (self.inv.clock() - self._drift_since) / 3600
            v["ac_power"] *= 1 + self.faults.drift_per_h * hours
        if self.faults.spike_rate and self._rng.random() < self.faults.spike_rate:
            v["ac_power"] *= self.faults.spike_factor
        return v

    def image(self) -> list[int]:
        """Every register from the base to the end model, as a client would read them now."""
        regs = [*SUNS, *self._common, *self._inverter_model(self.sample()), END_ID, 0]
        if time.monotonic() < self._absent_until:
            return [0] * len(regs)  # firmware still booting: nothing mapped yet
        if self.faults.wrong_map:
            regs[0:2] = [0, 0]
        return regs

    def _inverter_model(self, v: dict[str, float]) -> list[int]:
        phases = self.model % 10
        p = v["ac_power"]
        volts = [230.0 + 1.5 * math.sin(i + p / 7e3) for i in range(3)]
        amps = [p / phases / volts[i] if i < phases else 0.0 for i in range(3)]
        hz = 50.0 + 0.02 * math.sin(p / 5e3)
        va = p / 0.99
        var = math.sqrt(max(0.0, va * va - p * p))
        dc_v = 620.0 if p > 0 else 0.0
        dc_a = v["dc_power"] / dc_v if dc_v else 0.0
        state = int(v["state"]) if p > 0 else ST_SLEEPING
        t_cab = v["temp"]
        # Per-phase points beyond the model's phase count are not implemented, as on real devices.
        present = {"AphB": phases >= 2, "AphC": phases >= 3, "PhVphB": phases >= 2, "PhVphC": phases >= 3,
                   "PPVphAB": phases >= 2, "PPVphBC": phases >= 3, "PPVphCA": phases >= 3,
                   "TmpTrns": False, "TmpOt": False, "StVnd": False}
        ll = [volts[0] * math.sqrt(3)] * 3 if phases == 3 else [volts[0] * 2] * 3
        fields: list[tuple[Any, ...]]  # (name, type, value[, scale factor])
        if self.model in FLOAT_MODELS:
            fields = [("A", "float32", sum(amps)), ("AphA", "float32", amps[0]), ("AphB", "float32", amps[1]),
                      ("AphC", "float32", amps[2]), ("PPVphAB", "float32", ll[0]),
                      ("PPVphBC", "float32", ll[1]), ("PPVphCA", "float32", ll[2]),
                      ("PhVphA", "float32", volts[0]), ("PhVphB", "float32", volts[1]),
                      ("PhVphC", "float32", volts[2]), ("W", "float32", p), ("Hz", "float32", hz),
                      ("VA", "float32", va), ("VAr", "float32", var), ("PF", "float32", 99.0),
                      ("WH", "float32", v["energy"]), ("DCA", "float32", dc_a), ("DCV", "float32", dc_v),
                      ("DCW", "float32", v["dc_power"]), ("TmpCab", "float32", t_cab),
                      ("TmpSnk", "float32", t_cab + 5), ("TmpTrns", "float32", 0), ("TmpOt", "float32", 0),
                      ("St", "enum16", state), ("StVnd", "enum16", 0)]
            length = 60
        else:
            w_sf, a_sf, v_sf, hz_sf, pf_sf, dc_sf, t_sf = self.w_sf, -1, -1, -2, 0, -1, -1
            fields = [("A", "uint16", sum(amps), a_sf), ("AphA", "uint16", amps[0], a_sf),
                      ("AphB", "uint16", amps[1], a_sf), ("AphC", "uint16", amps[2], a_sf),
                      ("A_SF", "sunssf", a_sf), ("PPVphAB", "uint16", ll[0], v_sf),
                      ("PPVphBC", "uint16", ll[1], v_sf), ("PPVphCA", "uint16", ll[2], v_sf),
                      ("PhVphA", "uint16", volts[0], v_sf), ("PhVphB", "uint16", volts[1], v_sf),
                      ("PhVphC", "uint16", volts[2], v_sf), ("V_SF", "sunssf", v_sf),
                      ("W", "int16", p, w_sf), ("W_SF", "sunssf", w_sf), ("Hz", "uint16", hz, hz_sf),
                      ("Hz_SF", "sunssf", hz_sf), ("VA", "int16", va, w_sf), ("VA_SF", "sunssf", w_sf),
                      ("VAr", "int16", var, w_sf), ("VAr_SF", "sunssf", w_sf), ("PF", "int16", 99, pf_sf),
                      ("PF_SF", "sunssf", pf_sf), ("WH", "acc32", v["energy"], self.wh_sf),
                      ("WH_SF", "sunssf", self.wh_sf), ("DCA", "uint16", dc_a, dc_sf),
                      ("DCA_SF", "sunssf", dc_sf), ("DCV", "uint16", dc_v, dc_sf),
                      ("DCV_SF", "sunssf", dc_sf),
                      ("DCW", "int16", v["dc_power"], w_sf), ("DCW_SF", "sunssf", w_sf),
                      ("TmpCab", "int16", t_cab, t_sf), ("TmpSnk", "int16", t_cab + 5, t_sf),
                      ("TmpTrns", "int16", 0, t_sf), ("TmpOt", "int16", 0, t_sf), ("Tmp_SF", "sunssf", t_sf),
                      ("St", "enum16", state), ("StVnd", "enum16", 0)]
            length = 50
        fields += [("Evt1", "bitfield32", 0), ("Evt2", "bitfield32", 0), ("EvtVnd1", "bitfield32", 0),
                   ("EvtVnd2", "bitfield32", 0), ("EvtVnd3", "bitfield32", 0), ("EvtVnd4", "bitfield32", 0)]
        out = [self.model, length]
        for name, typ, value, *sf in fields:
            if name in self.not_implemented or not present.get(name, True):
                out += _NI[typ]
            else:
                out += _encode(typ, value, int(sf[0]) if sf else 0)
        return out

    # --- the Modbus server ----------------------------------------------------------------
    async def _action(self, fc: int, start: int, address: int, count: int,
                      registers: list[int], values: Any) -> ExcCodes | None:
        self.requests += 1
        if self.faults.comm_loss:
            # The server is built with ignore_missing_devices: this request gets no reply at all.
            raise NoSuchIdException("simulated communication loss")
        if self.faults.exception_code is not None:
            return ExcCodes(self.faults.exception_code)
        if values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # the simulated inverter is read-only
        offset = self.base - start
        registers[offset : offset + self.size] = self.image()
        return None

    async def start(self) -> None:
        block = [SimData(self.base, count=self.size, values=0, datatype=DataType.REGISTERS)]
        device = SimDevice(self.unit_id, simdata=block, action=self._action)
        self._server = ModbusTcpServer(device, address=(self.host, self.port), ignore_missing_devices=True)
        self._task = asyncio.create_task(self._server.serve_forever(), name=f"sunspec sim :{self.port}")
        for _ in range(100):  # wait until the socket listens
            await asyncio.sleep(0.02)
            if self._server.is_active():
                return
        raise OSError(f"SunSpec simulator could not listen on {self.host}:{self.port}")

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
        if self._task is not None:
            await cancel_and_wait([self._task], what="sunspec server")  # pymodbus can swallow one cancel
        self._server = self._task = None

    async def __aenter__(self) -> SunSpecInverter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _encode(typ: str, value: float, sf: int) -> list[int]:
    if typ == "float32":
        return f32(value)
    if typ == "sunssf":
        return [int(value) & 0xFFFF]
    raw = round(value / 10**sf)
    if typ == "acc32":
        raw &= 0xFFFFFFFF  # accumulators wrap at 2^32 (SunSpec acc32)
        return [raw >> 16, raw & 0xFFFF]
    if typ == "bitfield32":
        return [raw >> 16 & 0xFFFF, raw & 0xFFFF]
    if typ == "int16":
        return [max(-32767, min(32767, raw)) & 0xFFFF]  # -32768 is the not-implemented value
    return [max(0, min(0xFFFE, raw))]  # uint16 / enum16: 0xFFFF is reserved for not-implemented


async def start_inverter_fleet(n: int, first_port: int, *, clock: Callable[[], float] = wall_clock,
                               **kwargs: Any) -> list[SunSpecInverter]:
    """Start N inverters on consecutive ports, each with its own weather, serial number and faults."""
    faults: InverterFaults | None = kwargs.pop("faults", None)
    fleet: list[SunSpecInverter] = []
    try:
        for i in range(n):
            inv = SunSpecInverter(port=first_port + i, inverter=SolarInverter(seed=first_port + i, clock=clock),
                                  serial=f"SIM{i + 1:04d}", faults=replace(faults) if faults else None,
                                  **kwargs)
            await inv.start()
            fleet.append(inv)
    except BaseException:
        for inv in fleet:
            await inv.stop()
        raise
    return fleet


async def run_inverter_fleet(n: int, first_port: int, *, stop: asyncio.Event | None = None,
                             **kwargs: Any) -> None:
    """Serve N inverters on ports first_port … first_port+N-1 until `stop` is set (or cancelled)."""
    fleet = await start_inverter_fleet(n, first_port, **kwargs)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        for inv in fleet:
            await inv.stop()
