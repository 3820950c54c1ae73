"""The BLE driver: repeats, replays, other vendors, the simulator source through the supervisor, and no radio."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from carbonlink.codecs.bthome import RawAdvert, encode
from carbonlink.edge.drivers.base import ConnectionState
from carbonlink.edge.drivers.ble import BleBthomeDevice, BleBthomeDriver
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.wire import Reading
from tests.simulators.clocks import fixed_wall_clock

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
A, B, C = "D2:FC:00:00:00:01", "D2:FC:00:00:00:02", "D2:FC:00:00:00:03"


def device(**kw: object) -> BleBthomeDevice:
    sensors = [{"mac": A, "id": "tree-a"}, {"mac": B.lower(), "id": "tree-b", "key": KEY.hex()},
               {"mac": C, "id": "tree-c", "dendrometer": "distance_mm"}]
    return BleBthomeDevice.model_validate({"id": "forest", "driver": "ble_bthome", "sensors": sensors, **kw})


def driver(**kw: object) -> BleBthomeDriver:
    return BleBthomeDriver("forest", device(**kw))


def adv(mac: str, objs: list[tuple[int, float]], **kw: object) -> RawAdvert:
    return RawAdvert(mac, encode(objs, mac=mac, **kw), -70)  # type: ignore[arg-type]


def test_readings_per_object_with_point_names() -> None:
    d = driver()
    rs = d.handle(adv(A, [(0, 1), (0x01, 88), (0x02, 12.5), (0x03, 80), (0x0C, 2.98), (0x14, 31.2), (0x5B, 5012)]),
                  1_000)
    assert [(r.device, r.point, r.value, r.unit) for r in rs] == [
        ("tree-a", "battery", 88, "%"), ("tree-a", "temperature", 12.5, "°C"), ("tree-a", "humidity", 80, "%"),
        ("tree-a", "voltage", 2.98, "V"), ("tree-a", "soil_moisture", 31.2, "%"), ("tree-a", "dendrometer", 5012, "µm")]
    # distance_mm sensors: BTHome distance 0x40 in mm becomes the dendrometer in µm
    rs = d.handle(adv(C, [(0, 1), (0x40, 5), (0x2F, 30)]), 1_000)
    assert [(r.point, r.value, r.unit) for r in rs] == [("soil_moisture", 30, "%"), ("dendrometer", 5000, "µm")]
    # the same object twice: two probes
    rs = d.handle(adv(A, [(0, 2), (0x02, 10), (0x02, 11)]), 1_000)
    assert [r.point for r in rs] == ["temperature", "temperature_2"]


def test_repeated_packet_id_is_dropped() -> None:
    d = driver()
    first = adv(A, [(0, 7), (0x02, 20.0)])
    assert len(d.handle(first, 1)) == 1
    assert d.handle(first, 2) == [] and d.handle(first, 3) == []
    assert len(d.handle(adv(A, [(0, 8), (0x02, 20.1)]), 4)) == 1
    assert d.counters.extra["duplicate"] == 2 and d.counters.rejected == 0
    assert len(d.handle(adv(C, [(0, 7), (0x2F, 20)]), 5)) == 1  # per MAC: another sensor's id 7 is new


def test_encrypted_repeats_and_replays() -> None:
    d = driver()
    first = adv(B, [(0, 1), (0x02, 20.0)], key=KEY, counter=10)
    assert len(d.handle(first, 1)) == 1
    assert d.handle(first, 2) == []  # the same advert again
    assert len(d.handle(adv(B, [(0, 2), (0x02, 20.0)], key=KEY, counter=11), 3)) == 1
    assert d.handle(first, 4) == []  # a recorded older advert played back
    assert d.counters.extra == {"duplicate": 1, "replay": 1} and d.counters.rejected == 1


def test_bad_adverts_are_counted_refusals() -> None:
    d = driver()
    assert d.handle(RawAdvert(A, b"\x02\x01\x06", -50, uuid16=0xFE95), 1) == []  # another vendor's service data
    assert d.handle(RawAdvert(A, b"", -50, uuid16=None), 1) == []  # no service data at all
    assert d.handle(adv(B, [(0, 1), (0x02, 20.0)], key=bytes(16), counter=1), 1) == []  # wrong key
    assert d.handle(adv(B, [(0, 1), (0x02, 20.0)]), 1) == []  # plaintext from a keyed sensor
    assert d.handle(RawAdvert(A, bytes.fromhex("40 00 05 3A 01"), -50), 1) == []  # unknown object
    assert d.handle(adv("AA:BB:CC:DD:EE:FF", [(0, 1), (0x02, 20.0)]), 1) == []  # not our sensor
    assert d.counters.extra == {"other_vendor": 2, "mic": 1, "downgrade": 1, "unknown_object": 1,
                                "unknown_sensor": 1}
    assert d.counters.rejected == 5 and "tree-a" in d.counters.last_error


def test_sensor_found_by_the_mac_inside_the_advert() -> None:
    d = driver()
    data = encode([(0, 1), (0x02, 19.0)], key=KEY, mac=B, counter=1, include_mac=True)
    rs = d.handle(RawAdvert("7A:11:22:33:44:55", data, -60), 1)  # a rotating private radio address
    assert [(r.device, r.value) for r in rs] == [("tree-b", 19.0)]


def test_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="listed twice"):
        BleBthomeDevice.model_validate({"id": "f", "driver": "ble_bthome",
                                        "sensors": [{"mac": A, "id": "x"}, {"mac": A.lower(), "id": "y"}]})
    with pytest.raises(ValidationError, match="key"):
        BleBthomeDevice.model_validate({"id": "f", "driver": "ble_bthome",
                                        "sensors": [{"mac": A, "id": "x", "key": "abc"}]})
    with pytest.raises(ValidationError, match="sensors"):
        BleBthomeDevice.model_validate({"id": "f", "driver": "ble_bthome", "sensors": []})


async def test_simulator_source_through_the_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed_wall_clock(monkeypatch)  # the plot the command layer builds starts at noon of a fixed day
    got: list[Reading] = []

    async def sink(rs: list[Reading]) -> None:
        got.extend(rs)

    drv = driver(source="simulator", poll_interval_s=0.02, sim_repeats=3, sim_speed=600)
    sup = DeviceSupervisor(drv, sink)
    sup.start()
    try:
        for _ in range(200):
            if len({r.device for r in got}) == 3 and drv.counters.polls >= 15:
                break
            await asyncio.sleep(0.02)
    finally:
        await sup.stop()
    by_dev = {d: {r.point for r in got if r.device == d} for d in ("tree-a", "tree-b", "tree-c")}
    assert all(p >= {"temperature", "humidity", "soil_moisture", "battery", "voltage", "dendrometer"}
               for p in by_dev.values())
    assert drv.counters.extra["duplicate"] >= 2 * drv.counters.polls * 0.9  # 3 copies each: 2 dropped
    assert drv.counters.rejected == 0 and drv.counters.errors == 0
    assert all(r.quality == "N" for r in got)
    dendro = [r.value for r in got if r.point == "dendrometer" and r.device == "tree-a"]
    assert all(4800 < v < 5200 for v in dendro)
    tc = [r.value for r in got if r.point == "dendrometer" and r.device == "tree-c"]
    assert tc and all(v % 1000 == 0 for v in tc)  # whole millimetres from distance 0x40


async def test_injected_source_and_session_end() -> None:
    async def two() -> AsyncIterator[RawAdvert]:
        yield adv(A, [(0, 1), (0x02, 5.0)])
        yield RawAdvert(A, b"\xff", -1)  # garbage: counted, the session goes on
        yield adv(A, [(0, 2), (0x02, 6.0)])

    d = BleBthomeDriver("forest", device(), source=two)
    batches = [b async for b in d.session()]
    assert [[r.value for r in b] for b in batches] == [[5.0], [6.0]] and d.counters.extra == {"version": 1}


async def _run_without_radio(caplog: pytest.LogCaptureFixture, retry: float) -> tuple[BleBthomeDriver, list[str]]:
    caplog.set_level(logging.INFO)

    async def sink(rs: list[Reading]) -> None:
        raise AssertionError("no readings expected")

    drv = driver()
    sup = DeviceSupervisor(drv, sink, unavailable_retry=retry)
    sup.start()
    try:
        await asyncio.sleep(0.4)
        assert sup.state is ConnectionState.UNAVAILABLE and not sup._task.done()  # type: ignore[union-attr]
        await asyncio.sleep(0)  # the event loop (the gateway) is alive and scheduling
    finally:
        await sup.stop()
    lines = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    if not lines:
        pytest.skip("this host has a working Bluetooth stack")
    return drv, lines


async def test_no_bluetooth_stack_says_so_once_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    # This machine has bleak but no D-Bus / BlueZ: starting a scan raises FileNotFoundError.
    drv, lines = await _run_without_radio(caplog, retry=300.0)
    assert len(lines) == 1 and "no usable Bluetooth stack" in lines[0]
    assert drv.counters.errors == 0 and "Bluetooth" in drv.counters.last_error


async def test_no_bluetooth_stack_is_not_logged_again_on_retries(caplog: pytest.LogCaptureFixture) -> None:
    _, lines = await _run_without_radio(caplog, retry=0.05)
    assert len(lines) == 1


async def test_simulator_source_absent_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge does not import simulators: without the command layer's source the driver is unavailable."""
    from carbonlink.edge.drivers import ble
    from carbonlink.edge.drivers.base import DriverUnavailable

    monkeypatch.setattr(ble, "ADVERT_SOURCES", {})
    d = driver(source="simulator")
    with pytest.raises(DriverUnavailable, match=r"source 'simulator' is not installed.*\[sim\]"):
        async for _ in d.session():
            pass
