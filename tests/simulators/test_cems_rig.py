"""One CEMS stack over Modbus TCP, OPC-UA and HJ 212 at once: a fault applied once shows on every protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest
from asyncua import ua

from carbonlink.edge.drivers.hj212 import Hj212ServerDevice, Hj212ServerDriver
from carbonlink.edge.drivers.modbus import ModbusTcpDevice, ModbusTcpDriver
from carbonlink.edge.drivers.opcua import OpcUaDevice, OpcUaDriver, quality_for
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import LAYOUT, CemsStack, Mode
from carbonlink.simulators.cems_cli import CemsRig, apply_command
from carbonlink.simulators.cems_opcua import MODE_STATUS, UNITS
from carbonlink.simulators.hj212_client import DEFAULT_MN, DEFAULT_PW, SENT
from tests.services import free_port
from tests.simulators.clocks import Paced


class Feed:
    """A driver under its real supervisor; keeps the last batch per point group."""

    def __init__(self, driver: ModbusTcpDriver | OpcUaDriver | Hj212ServerDriver) -> None:
        self.driver = driver
        self.batches: list[list[Reading]] = []
        self.sup = DeviceSupervisor(driver, self._sink)
        self.sup.backoff.initial, self.sup.backoff.cap = 0.05, 0.2

    async def _sink(self, rs: list[Reading]) -> None:
        self.batches.append(rs)

    async def until(self, pred: Callable[[list[Reading]], bool], within: float = 8.0) -> list[Reading]:
        """The first batch arriving from now on that satisfies ``pred``."""
        seen = len(self.batches)
        async with asyncio.timeout(within):
            while True:
                for b in self.batches[seen:]:
                    if pred(b):
                        return b
                seen = len(self.batches)
                await asyncio.sleep(0.02)


def flags(batch: list[Reading], names: tuple[str, ...] | list[str]) -> set[str]:
    return {r.quality.value for r in batch if r.point in names}


@contextlib.asynccontextmanager
async def everything() -> AsyncIterator[tuple[CemsRig, Feed, Feed, Feed]]:
    hj = Hj212ServerDriver("hj", Hj212ServerDevice.model_validate(
        {"id": "hj", "driver": "hj212_server", "port": 0, "stations": {DEFAULT_MN: {"pw": DEFAULT_PW}}}))
    hj_feed = Feed(hj)
    hj_feed.sup.start()
    async with asyncio.timeout(5):
        while hj.port is None:
            await asyncio.sleep(0.01)
    rig = CemsRig(CemsStack(clock=Paced()), modbus_port=free_port(), opcua_port=free_port(), opcua_interval_s=0.1,
                  hj212_to=("127.0.0.1", hj.port), hj212_interval_s=0.1)
    async with rig:
        mb = Feed(ModbusTcpDriver("mb", ModbusTcpDevice.model_validate(
            {"id": "mb", "driver": "modbus_tcp", "host": "127.0.0.1", "port": rig.modbus.port,  # type: ignore[union-attr]
             "pointmap": "cems", "poll_interval_s": 0.05, "timeout_s": 0.5})))
        nodes = [{"name": k, "node_id": v, "unit": UNITS[k]} for k, v in rig.opcua.node_ids.items()]
        ua_feed = Feed(OpcUaDriver("ua", OpcUaDevice.model_validate(
            {"id": "ua", "driver": "opcua", "endpoint": rig.opcua.url, "mode": "poll", "poll_interval_s": 0.1,
             "keepalive_s": 1.0, "watchdog_s": 1.0, "timeout_s": 2.0, "nodes": nodes})))
        mb.sup.start()
        ua_feed.sup.start()
        try:
            yield rig, mb, ua_feed, hj_feed
        finally:
            for f in (mb, ua_feed, hj_feed):
                await f.sup.stop()


SENT_POINTS = tuple(SENT)


async def test_one_fault_shows_on_every_protocol() -> None:
    async with everything() as (rig, mb, ua_feed, hj):
        for feed, names in ((mb, LAYOUT), (ua_feed, LAYOUT), (hj, SENT_POINTS)):
            await feed.until(lambda b, n=names: flags(b, n) == {"N"})
        for cmd, mode, flag in (("calibration on", Mode.CALIBRATION, "C"), ("maintenance on", Mode.MAINTENANCE, "M"),
                                ("fault on", Mode.FAULT, "D")):
            assert rig.apply(cmd).startswith("applied")
            b = await mb.until(lambda b, f=flag: flags(b, LAYOUT) == {f})
            assert {r.value for r in b if r.point == "status"} == {int(mode)}
            # OPC-UA: the nearest standard status code, turned into a flag by the driver's table.
            opcua_flag = quality_for(ua.StatusCode(MODE_STATUS[mode])).value
            assert opcua_flag != "N"
            await ua_feed.until(lambda b, f=opcua_flag: flags(b, LAYOUT) == {f})
            await hj.until(lambda b, f=flag: flags(b, SENT_POINTS) == {f})  # the HJ 212 data flag
        rig.apply("clear")
        for feed, names in ((mb, LAYOUT), (ua_feed, LAYOUT), (hj, SENT_POINTS)):
            await feed.until(lambda b, n=names: flags(b, n) == {"N"})
        # Communication loss: Modbus stops answering, OPC-UA says BadNoCommunication, HJ 212 goes silent.
        rig.apply("comm-loss on")
        await ua_feed.until(lambda b: flags(b, LAYOUT) == {"B"})
        sent = rig.hj212_stats.realtime_sent
        await asyncio.sleep(0.6)
        assert rig.hj212_stats.realtime_sent == sent and rig.hj212_stats.silent > 0
        assert mb.sup.state.value in ("backoff", "connecting") and mb.driver.counters.errors >= 1
        rig.apply("comm-loss off")
        await mb.until(lambda b: flags(b, LAYOUT) == {"N"})


async def test_restart_drops_every_link_and_all_come_back() -> None:
    async with everything() as (rig, mb, ua_feed, hj):
        for feed in (mb, ua_feed, hj):
            await feed.until(lambda b: True)
        connects = rig.hj212_stats.connects
        restart = asyncio.create_task(rig.restart(down_s=1.0))
        await asyncio.sleep(0.4)
        assert not rig.modbus.running and rig.opcua.server is None  # type: ignore[union-attr]
        assert rig.stack.faults.down
        await restart
        for feed in (mb, ua_feed, hj):
            await feed.until(lambda b: True)
        assert rig.hj212_stats.restarts == 1 and rig.hj212_stats.connects == connects + 1
        assert mb.driver.counters.reconnects >= 1 and ua_feed.driver.counters.reconnects >= 1


async def test_wrong_map_puts_each_value_under_its_neighbour() -> None:
    async with everything() as (rig, mb, ua_feed, hj):
        await ua_feed.until(lambda b: True)
        rig.apply("wrong-map on")
        # The flue gas temperature (48-60 °C) now carries the pressure (about 101.7 kPa) on OPC-UA and HJ 212.
        b = await ua_feed.until(lambda b: any(r.point == "temp" and r.value > 100 for r in b))
        assert 100 < {r.point: r.value for r in b}["temp"] < 103
        b = await hj.until(lambda b: any(r.point == "temp" and r.value > 100 for r in b))
        assert 100 < {r.point: r.value for r in b}["temp"] < 103
        # Modbus: one register off, so SO2 decodes from (0, its own high word): a denormal.
        await mb.until(lambda b: any(r.point == "so2" and abs(r.value) < 1e-30 for r in b))


async def test_commands_change_nothing_when_malformed_and_timed_modes_end() -> None:
    rig = CemsRig(CemsStack(clock=Paced()))  # no transport: the model alone
    assert "calibration" in rig.apply("help")
    before = vars(rig.stack.faults).copy()
    for bad in ("exception 9", "spikes 2", "drift x", "spikes", "wrong-map on 99"):
        with pytest.raises((ValueError, IndexError)):
            rig.apply(bad)
        assert vars(rig.stack.faults) == before, bad
    assert "cannot apply" in apply_command("exception 9", [rig])
    rig.apply("calibration 0.2")
    assert rig.stack.flag() == "C" and "calibration" in rig.apply("status")
    await asyncio.sleep(0.4)
    assert rig.stack.flag() == "N"
    rig.apply("maintenance on")
    rig.apply("drift 0.1")
    rig.apply("spikes 0.5 4")
    assert rig.apply("status") == "mode maintenance (flag M), drift 0.1/h, spikes 0.5x4"
    rig.apply("maintenance off")
    assert rig.stack.flag() == "N"


async def test_minute_record_keeps_a_calibration_seen_inside_its_window() -> None:
    hj = Feed(Hj212ServerDriver("hj", Hj212ServerDevice.model_validate(
        {"id": "hj", "driver": "hj212_server", "port": 0, "stations": {DEFAULT_MN: {"pw": DEFAULT_PW}}})))
    hj.sup.start()
    try:
        async with asyncio.timeout(5):
            while hj.driver.port is None:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        rig = CemsRig(CemsStack(clock=Paced()), hj212_to=("127.0.0.1", hj.driver.port), hj212_interval_s=0.1,  # type: ignore[union-attr]
                      hj212_minute_s=2.0)  # the first window holds the whole calibration
        async with rig:
            await hj.until(lambda b: flags(b, SENT_POINTS) == {"N"})
            rig.apply("calibration 0.3")  # a short calibration, over before the minute record is cut
            await hj.until(lambda b: flags(b, SENT_POINTS) == {"C"})
            await hj.until(lambda b: flags(b, SENT_POINTS) == {"N"})
            minute = await hj.until(lambda b: any(r.point.endswith("_1m") for r in b), within=5)
        assert {r.quality.value for r in minute if r.point.startswith("so2_")} == {"C"}
    finally:
        await hj.sup.stop()
