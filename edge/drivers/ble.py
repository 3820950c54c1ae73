"""BLE driver for BTHome v2 sensors (forest plots): passive scan with bleak, or the forest simulator.

One driver instance listens for a list of sensors. Adverts come from an *advert
source*, an async iterator of ``RawAdvert``: bleak's scanner in production, the
forest simulator where no radio exists (demos, tests). Every advert is decoded
by ``edge.bthome``; the driver then drops repeats (a sensor sends each advert
several times with the same packet id; encrypted ones must also carry a rising
counter), ignores and counts other vendors' adverts and unknown sensors, and
turns each object into a reading of the sensor's own device id.

The dendrometer: BTHome has no micrometre length object, and distance 0x40 is in
whole millimetres, too coarse for a stem's daily shrinking and swelling (tens of
micrometres). So ``dendrometer: count_um`` (the default) reads it as micrometres
in the signed 32-bit count object 0x5B; ``distance_mm`` reads standard distance
0x40 (mm). Either way the point is ``dendrometer`` in µm.

Replay guard: an encrypted advert whose counter is not above the last one seen
from that MAC is dropped. A sensor whose counter restarts (some reset it on a
battery change) is therefore refused until the agent restarts; that is the price
of not accepting recorded adverts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from carbonlink.codecs.bthome import UUID16, UUID128, BTHomeError, Measurement, RawAdvert, advertised_mac, decode
from carbonlink.kernel.ids import DEVICE_ID_PATTERN
from carbonlink.kernel.wire import Reading, now_ms

from .base import Driver, DriverUnavailable
from .settings import DeviceBase, StrictModel

log = logging.getLogger(__name__)

AdvertSource = Callable[[], AsyncIterator[RawAdvert]]
# source name -> factory(settings, keys by upper-case MAC) -> AdvertSource. The edge never imports a
# simulator: whoever runs an agent on simulated plots (the demo, `carbonlink edge run`, tests) registers
# the "simulator" source here (see carbonlink.commands.simsources).
SourceFactory = Callable[["BleBthomeDevice", dict[str, bytes | None]], AdvertSource]
ADVERT_SOURCES: dict[str, SourceFactory] = {}
MAC_PATTERN = r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$"
QUEUE_MAX = 4096  # adverts waiting for the driver; beyond this the oldest are dropped and counted

# Decoder object names that become a different point name here.
POINT_NAMES = {"moisture": "soil_moisture"}
DENDRO = {"count_um": (0x5B, 1.0), "distance_mm": (0x40, 1000.0)}  # object id, factor to µm


class BleSensor(StrictModel):
    mac: str = Field(pattern=MAC_PATTERN, description="the sensor's Bluetooth address, AA:BB:CC:DD:EE:FF")
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="device id its readings carry, e.g. tree-001")
    key: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$",
                            description="BTHome encryption key (32 hex digits); adverts must then be encrypted")
    dendrometer: Literal["count_um", "distance_mm"] = "count_um"


class BleBthomeDevice(DeviceBase):
    driver: Literal["ble_bthome"]
    source: Literal["bleak", "simulator"] = Field(
        default="bleak", description="bleak: scan the radio; simulator: a simulated forest plot of these sensors")
    adapter: str | None = Field(default=None, description="BlueZ adapter, e.g. hci0; default: the first")
    scanning_mode: Literal["passive", "active"] = "passive"
    sensors: list[BleSensor] = Field(min_length=1)
    sim_speed: float = Field(default=1.0, gt=0, le=1e6, description="simulator: simulated seconds per second")
    sim_repeats: int = Field(default=2, ge=1, le=10, description="simulator: copies of each advert, as radios send")

    @model_validator(mode="after")
    def _unique(self) -> BleBthomeDevice:
        for what, values in (("mac", [s.mac.upper() for s in self.sensors]), ("id", [s.id for s in self.sensors])):
            dup = {v for v in values if values.count(v) > 1}
            if dup:
                raise ValueError(f"sensor {what} {sorted(dup)} listed twice; each sensor once")
        return self


@dataclass
class _Seen:
    packet_id: int | None = None
    counter: int | None = None


class BleBthomeDriver(Driver):
    kind = "ble_bthome"
    settings: BleBthomeDevice

    def __init__(self, device_id: str, settings: BleBthomeDevice, source: AdvertSource | None = None) -> None:
        super().__init__(device_id, settings)
        self.sensors = {s.mac.upper(): s for s in settings.sensors}
        self.keys = {mac: bytes.fromhex(s.key) if s.key else None for mac, s in self.sensors.items()}
        self._seen: dict[str, _Seen] = {}
        self._warned: set[tuple[str, str]] = set()
        if source is not None:
            self.source = source
        elif settings.source == "bleak":
            self.source = self._bleak_source
        elif settings.source in ADVERT_SOURCES:
            self.source = ADVERT_SOURCES[settings.source](settings, self.keys)
        else:
            self.source = self._missing_source

    async def session(self) -> AsyncIterator[list[Reading]]:
        adverts = self.source()
        try:
            async for adv in adverts:
                readings = self.handle(adv, now_ms())
                if readings:
                    yield readings
        finally:
            aclose = getattr(adverts, "aclose", None)
            if aclose is not None:
                await aclose()

    # --- one advert -------------------------------------------------------------------------

    def handle(self, adv: RawAdvert, ts_ms: int) -> list[Reading]:
        """Decode one advert into readings; refusals and repeats are counted, never raised."""
        c = self.counters
        if adv.uuid16 != UUID16:
            c.rejected += 1
            c.bump("other_vendor")
            return []
        mac = (advertised_mac(adv.data) or adv.mac).upper()
        sensor = self.sensors.get(mac)
        if sensor is None:
            c.bump("unknown_sensor")
            if len(self._warned) < 1000 and (mac, "unknown") not in self._warned:
                self._warned.add((mac, "unknown"))
                log.info("%s hears BTHome sensor %s, which is not in its sensors list", self.describe(), mac)
            return []
        try:
            advert = decode(adv.data, mac, self.keys[mac])
        except BTHomeError as exc:
            c.rejected += 1
            c.bump(exc.reason)
            c.last_error = f"{sensor.id}: {exc}"
            if (mac, exc.reason) not in self._warned:  # once per sensor and reason; the counters keep the rest
                self._warned.add((mac, exc.reason))
                log.warning("%s refused an advert from %s (%s): %s", self.describe(), sensor.id, mac, exc)
            return []
        seen = self._seen.setdefault(mac, _Seen())
        if advert.counter is not None:
            if seen.counter is not None and advert.counter <= seen.counter:
                if advert.counter == seen.counter:
                    c.bump("duplicate")
                else:
                    c.rejected += 1
                    c.bump("replay")
                return []
            seen.counter = advert.counter
        if advert.packet_id is not None:
            if advert.packet_id == seen.packet_id:
                c.bump("duplicate")
                return []
            seen.packet_id = advert.packet_id
        if not advert.ordered:
            c.bump("out_of_order")  # the format asks for ascending ids; the values are still unambiguous
        return self._readings(sensor, advert.measurements, ts_ms)

    def _readings(self, sensor: BleSensor, measurements: tuple[Measurement, ...], ts_ms: int) -> list[Reading]:
        dendro_id, to_um = DENDRO[sensor.dendrometer]
        out: list[Reading] = []
        names: dict[str, int] = {}
        for m in measurements:
            if m.object_id == dendro_id:
                point, value, unit = "dendrometer", m.value * to_um, "µm"
            else:
                point, value, unit = POINT_NAMES.get(m.name, m.name), m.value, m.unit
            n = names[point] = names.get(point, 0) + 1
            if n > 1:  # the same object twice (e.g. two temperature probes): temperature, temperature_2
                point = f"{point}_{n}"
            out.append(Reading.make(sensor.id, point, ts_ms, value, unit))
        return out

    # --- sources ---------------------------------------------------------------------------

    async def _missing_source(self) -> AsyncIterator[RawAdvert]:
        raise DriverUnavailable(
            f"advert source {self.settings.source!r} is not installed in this process: run the gateway with "
            "`carbonlink edge run` from an install with the [sim] extra, or use source: bleak")
        yield  # pragma: no cover - makes this an async generator

    async def _bleak_source(self) -> AsyncIterator[RawAdvert]:
        try:
            from bleak import BleakScanner
            from bleak.args.bluez import OrPattern
            from bleak.assigned_numbers import AdvertisementDataType
            from bleak.backends.device import BLEDevice
            from bleak.backends.scanner import AdvertisementData
            from bleak.exc import BleakError
        except ImportError as exc:
            raise DriverUnavailable(f"bleak is not installed ({exc}); install the edge extra") from exc

        s = self.settings
        queue: asyncio.Queue[RawAdvert] = asyncio.Queue(QUEUE_MAX)

        def on_advert(device: BLEDevice, adv: AdvertisementData) -> None:
            data = adv.service_data.get(UUID128)
            if data is not None:
                item = RawAdvert(device.address, bytes(data), adv.rssi, UUID16)
            else:
                other = next(iter(adv.service_data), None)
                uuid16 = int(other[4:8], 16) if other and other.endswith("-0000-1000-8000-00805f9b34fb") else None
                item = RawAdvert(device.address, b"", adv.rssi, uuid16)
            if queue.full():
                queue.get_nowait()
                self.counters.bump("queue_overflow")
            queue.put_nowait(item)

        bluez: dict = {}
        if s.adapter:
            bluez["adapter"] = s.adapter
        if s.scanning_mode == "passive":
            # BlueZ scans passively only through an advertisement monitor, which needs a pattern:
            # service data (AD type 0x16) starting with the BTHome UUID.
            bluez["or_patterns"] = [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")]
        try:
            scanner = BleakScanner(on_advert, scanning_mode=s.scanning_mode, bluez=bluez)  # type: ignore[arg-type]
            await scanner.start()
        except (OSError, BleakError) as exc:  # no D-Bus / BlueZ / adapter on this host
            raise DriverUnavailable(f"no usable Bluetooth stack: {type(exc).__name__}: {exc}") from exc
        try:
            while True:
                yield await queue.get()
        finally:
            try:
                await scanner.stop()
            except (OSError, BleakError):
                pass
