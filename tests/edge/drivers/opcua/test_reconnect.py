"""Reconnects through the supervisor: a server restart, and a link that goes silent without closing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from carbonlink.edge.drivers.base import ConnectionState
from carbonlink.edge.drivers.opcua import OpcUaDevice, OpcUaDriver
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.wire import Reading
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.cems_opcua import CemsOpcUaServer
from tests.services import until
from tests.simulators.clocks import Paced

from .helpers import device, settle_tasks

pytestmark = pytest.mark.asyncio(loop_scope="module")


class SilentLink:
    """A TCP relay that can stop forwarding without closing anything: a dead link as a cut cable makes it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        for t in list(self._pumps):
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_w]
        for src, dst in ((reader, up_w), (up_r, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await self.flowing.wait()  # while cut, bytes pile up here and nothing is closed
                dst.write(data)
                await dst.drain()
        dst.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[CemsOpcUaServer]:
    async with CemsOpcUaServer(interval_s=0.1, stack=CemsStack(clock=Paced())) as server:
        yield server


def supervised(settings: OpcUaDevice) -> tuple[DeviceSupervisor, list[list[Reading]]]:
    batches: list[list[Reading]] = []

    async def sink(readings: list[Reading]) -> None:
        batches.append(readings)

    driver = OpcUaDriver(settings.id, settings)
    return DeviceSupervisor(driver, sink, backoff=Backoff(initial=0.2, cap=0.5)), batches


async def test_subscription_is_recreated_after_the_server_restarts(
        sim: CemsOpcUaServer, caplog: pytest.LogCaptureFixture) -> None:
    before = set(asyncio.all_tasks())
    sup, batches = supervised(device(sim, points=["so2", "o2"], watchdog_s=0.5))
    sup.start()
    try:
        await until(lambda: len(batches) >= 3, 10)
        first_server = sim.server
        await sim.stop()  # the whole server goes: sessions and subscriptions with it
        await until(lambda: sup.state is not ConnectionState.ONLINE, 5)
        await asyncio.sleep(0.5)  # a few failed reconnects against a closed port
        assert sup.counters.errors >= 2 and "ConnectionRefused" in sup.counters.last_error
        seen = len(batches)
        await sim.start()
        assert sim.server is not first_server
        await until(lambda: len(batches) >= seen + 3, 10)
        assert sup.state is ConnectionState.ONLINE and sup.counters.reconnects == 1
        # pushed again, not degraded to polling
        assert isinstance(sup.driver, OpcUaDriver) and sup.driver.active_mode == "subscribe"
        assert sim.server is not None and len(sim.server.iserver.subscription_service.subscriptions) == 1
        fresh = batches[-1]
        assert [r.point for r in fresh] == ["so2", "o2"] and all(r.quality.value == "N" for r in fresh)
    finally:
        await sup.stop()
        await sim.start()  # no-op when running; keeps the module's server up if an assertion failed
    assert await settle_tasks(before) == []
    failures = [r for r in caplog.records if r.name == "carbonlink.edge.supervisor" and "failed" in r.getMessage()]
    assert len(failures) == 1 and "connection lost" in failures[0].getMessage()  # logged once, not per retry


@pytest.mark.parametrize("detector", ["watchdog", "keepalive"])
async def test_a_silent_link_is_detected_and_the_session_restarts(
        sim: CemsOpcUaServer, detector: str) -> None:
    link = SilentLink(sim.port)
    await link.start()
    url = sim.url.replace(f":{sim.port}/", f":{link.port}/")
    # "watchdog": asyncua probes the server every 0.3 s and reports BadShutdown to the subscription;
    # "keepalive": no probe, so only the driver's keep-alive deadline can notice (3 x 0.5 s + 1 s).
    probe = 0.3 if detector == "watchdog" else 600.0
    sup, batches = supervised(device(sim, points=["so2"], endpoint=url, keepalive_s=0.5, timeout_s=1.0,
                                     watchdog_s=probe))
    sup.start()
    try:
        await until(lambda: len(batches) >= 3, 10)
        link.flowing.clear()
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        await until(lambda: sup.state is not ConnectionState.ONLINE, 8)
        detected_after = loop.time() - cut_at
        # measured here: 0.6 s (watchdog) and 2.7 s (keep-alive deadline, then a 0.2 s goodbye)
        assert detected_after < (2.0 if detector == "watchdog" else 4.0), sup.counters.last_error
        link.flowing.set()
        seen = len(batches)
        await until(lambda: len(batches) >= seen + 2, 10)
        assert sup.counters.reconnects == 1
    finally:
        await sup.stop()
        await link.close()
