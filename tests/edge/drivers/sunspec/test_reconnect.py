"""The supervisor and the SunSpec driver through simulator restarts and outages."""

from __future__ import annotations

import asyncio

from carbonlink.edge.drivers.base import ConnectionState
from carbonlink.edge.supervisor import DeviceSupervisor
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.wire import Quality, Reading
from carbonlink.simulators.sunspec import SunSpecInverter

from .conftest import make_driver, noon_inverter


class Sink:
    def __init__(self) -> None:
        self.polls: list[list[Reading]] = []
        self.new = asyncio.Event()

    async def __call__(self, readings: list[Reading]) -> None:
        self.polls.append(readings)
        self.new.set()

    async def next_poll(self, within_s: float = 5.0) -> list[Reading]:
        n = len(self.polls)
        while len(self.polls) == n:
            self.new.clear()
            await asyncio.wait_for(self.new.wait(), within_s)
        return self.polls[-1]

    def energy(self) -> list[float]:
        return [r.value for poll in self.polls for r in poll
                if r.point == "energy" and r.quality is Quality.NORMAL]


async def test_reconnects_and_rediscovers_after_the_device_restarts(port: int) -> None:
    sim = SunSpecInverter(port=port, inverter=noon_inverter())
    drv = make_driver(port, timeout_s=0.3)
    sink = Sink()
    sup = DeviceSupervisor(drv, sink, backoff=Backoff(initial=0.05, cap=0.2))
    await sim.start()
    sup.start()
    try:
        await sink.next_poll()
        # Restart: connections drop, the counter restarts at zero and the chain is absent while it boots.
        await sim.restart(downtime_s=0.4, reset_energy=True, chain_absent_s=0.4)
        await sink.next_poll()
        await sink.next_poll()
        assert sup.state is ConnectionState.ONLINE
        assert drv.counters.reconnects >= 1 and drv.counters.errors >= 1
        assert drv.counters.extra["discoveries"] >= 2
        assert drv.energy.resets == 1  # the device counter fell back to zero…
        energy = sink.energy()
        assert energy == sorted(energy)  # …but the published total never goes down

        # Now the device comes back with another map: common model L=65, base 0, float model.
        await sim.stop()
        sim = SunSpecInverter(port=port, base=0, common_len=65, model=113, inverter=noon_inverter(),
                              energy_start_wh=energy[-1])
        await sim.start()
        poll = await sink.next_poll()
        while drv.chain is None or drv.chain.base != 0:
            poll = await sink.next_poll()
        assert [m.id for m in drv.chain.models] == [1, 113]
        assert drv.chain.models[1].addr == 0 + 2 + 2 + 65
        assert all(r.quality is Quality.NORMAL for r in poll)
    finally:
        await sup.stop()
        await sim.stop()


async def test_recovers_after_communication_loss(port: int) -> None:
    sim = SunSpecInverter(port=port, inverter=noon_inverter())
    drv = make_driver(port, timeout_s=0.2)
    sink = Sink()
    sup = DeviceSupervisor(drv, sink, backoff=Backoff(initial=0.05, cap=0.2))
    async with sim:
        sup.start()
        try:
            await sink.next_poll()
            sim.lose_comm()
            for _ in range(50):
                await asyncio.sleep(0.05)
                if sup.state is ConnectionState.BACKOFF:
                    break
            assert sup.state is ConnectionState.BACKOFF
            assert "No response received" in drv.counters.last_error
            sim.lose_comm(False)
            await sink.next_poll()
            assert sup.state is ConnectionState.ONLINE and drv.counters.reconnects == 1
        finally:
            await sup.stop()
