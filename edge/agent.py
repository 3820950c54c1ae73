"""The edge agent: device supervisors → outbox → batches → uplink."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from carbonlink.topics import GatewayTopics
from carbonlink.wire import Batch, Reading, sign_batch

from .config import GatewayConfig
from .drivers.registry import build_driver
from .identity import load_or_create_key
from .outbox import Outbox
from .supervisor import DeviceSupervisor
from .uplink import Uplink

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    produced: int
    published: int
    acked: int
    refused_batches: int
    pending: int
    unacked_batches: int
    link: str
    devices: dict[str, dict[str, Any]]


class EdgeAgent:
    def __init__(self, cfg: GatewayConfig, *, mqtt_url: str | None = None) -> None:
        self.cfg = cfg
        self.key = load_or_create_key(cfg.gateway.key_file)
        self.topics = GatewayTopics(cfg.gateway.site, cfg.gateway.id)
        self.outbox = Outbox(cfg.gateway.data_dir / "outbox.sqlite", cfg.gateway.id,
                             synchronous=cfg.outbox.synchronous)
        m = cfg.mqtt
        self.uplink = Uplink(self.outbox, self.topics, mqtt_url or m.url, username=m.username,
                             password=m.password, keepalive=m.keepalive_s, ack_timeout=m.ack_timeout_s,
                             max_inflight=m.max_inflight)
        self.supervisors = [DeviceSupervisor(build_driver(d), self._accept)
                            for d in cfg.devices if d.enabled]
        self.produced = 0
        self._tasks: list[asyncio.Task[Any]] = []

    async def _accept(self, readings: list[Reading]) -> None:
        self.outbox.append(readings)
        self.produced += len(readings)

    def _sign(self, batch: Batch) -> Batch:
        return sign_batch(replace(batch, gateway=self.cfg.gateway.id), self.key)

    def cut_due_batches(self, *, force: bool = False) -> int:
        """Cut batches when enough readings wait or the oldest waited long enough."""
        cut = 0
        b = self.cfg.batch
        while True:
            n = self.outbox.pending_count()
            if n == 0:
                break
            oldest = self.outbox.oldest_pending_ms() or 0
            aged = time.time() * 1000 - oldest >= b.max_age_s * 1000
            if not (force or aged or n >= b.max_readings):
                break
            if self.outbox.cut_batch(b.max_readings, self._sign) is None:
                break
            cut += 1
        if cut:
            self.uplink.wakeup.set()
        return cut

    async def _batcher(self) -> None:
        tick = min(0.2, self.cfg.batch.max_age_s / 2)
        while True:
            self.cut_due_batches()
            await asyncio.sleep(tick)

    async def start(self) -> None:
        log.info("gateway %s (site %s): %d device(s), broker %s", self.cfg.gateway.id,
                 self.cfg.gateway.site, len(self.supervisors), self.uplink.url)
        for s in self.supervisors:
            self._tasks.append(s.start())
        self._tasks.append(asyncio.create_task(self._batcher(), name="batcher"))
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))

    async def stop_devices(self) -> None:
        for s in self.supervisors:
            await s.stop()

    async def drain(self, within: float) -> bool:
        """Cut what is pending and wait for the cloud to ack everything; True if it did."""
        self.cut_due_batches(force=True)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.outbox.unacked_count()[0] == 0 and self.outbox.pending_count() == 0:
                return True
            await asyncio.sleep(0.1)
        return False

    async def stop(self) -> None:
        await self.stop_devices()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.outbox.close()

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    def stats(self) -> AgentStats:
        c = self.uplink.counters
        batches, _ = self.outbox.unacked_count()
        return AgentStats(
            produced=self.produced, published=c.readings_published, acked=c.readings_acked,
            refused_batches=c.batches_refused, pending=self.outbox.pending_count(),
            unacked_batches=batches, link=self.uplink.state.value,
            devices={s.driver.device_id: {"state": s.state.value, "readings": s.counters.readings,
                                          "errors": s.counters.errors, "last_error": s.counters.last_error}
                     for s in self.supervisors},
        )
