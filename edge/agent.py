"""The edge agent: device supervisors → outbox → batches → uplink."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
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
from .uplink import DeliveryPolicy, Uplink

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
        self.policy = self._policy(cfg)
        self.uplink = Uplink(self.outbox, self.topics, mqtt_url or m.url, username=m.username,
                             password=m.password, keepalive=m.keepalive_s, ack_timeout=m.ack_timeout_s,
                             max_inflight=m.max_inflight, sign=self._sign, policy=self.policy)
        self.supervisors = [DeviceSupervisor(build_driver(d), self._accept)
                            for d in cfg.devices if d.enabled]
        self.produced = 0
        self.housekeeping_interval = 5.0
        self._tasks: list[asyncio.Task[Any]] = []

    @staticmethod
    def _policy(cfg: GatewayConfig) -> DeliveryPolicy:
        d = cfg.delivery
        return DeliveryPolicy(live_max_readings=cfg.batch.max_readings, live_max_age_s=cfg.batch.max_age_s,
                              live_window_s=d.live_window_s, live_inflight=d.live_inflight,
                              backlog_max_readings=d.backlog_max_readings, backlog_inflight=d.backlog_inflight,
                              backlog_rate=d.backlog_rate)

    async def _accept(self, readings: list[Reading]) -> None:
        self.outbox.append(readings)
        self.produced += len(readings)
        if len(readings) >= self.policy.live_max_readings:
            self.uplink.wakeup.set()

    def _sign(self, batch: Batch) -> Batch:
        return sign_batch(replace(batch, gateway=self.cfg.gateway.id), self.key)

    def cut_due_batches(self, *, force: bool = False) -> int:
        """Cut live batches now (the uplink normally cuts on demand, when it can send them)."""
        cut = 0
        p = self.policy
        while True:
            n = self.outbox.pending_count()
            if n == 0:
                break
            oldest = self.outbox.oldest_pending_ms() or 0
            aged = time.time() * 1000 - oldest >= p.live_max_age_s * 1000
            if not (force or aged or n >= p.live_max_readings):
                break
            if self.outbox.cut_batch(p.live_max_readings, self._sign) is None:
                break
            cut += 1
        if cut:
            self.uplink.wakeup.set()
        return cut

    async def _housekeeping(self) -> None:
        """Enforce the disk quota; an overflow is rolled up, logged and queued as an alert event."""
        quota = int(self.cfg.outbox.quota_mb * 1024 * 1024)
        while True:
            try:
                report = self.outbox.enforce_quota(quota, self.policy.live_after_ms())
                if report is not None:
                    self.uplink.wakeup.set()
            except sqlite3.OperationalError as exc:  # disk trouble: keep reading and retry later
                log.error("outbox quota check failed: %s", exc)
            await asyncio.sleep(self.housekeeping_interval)

    async def start(self) -> None:
        log.info("gateway %s (site %s): %d device(s), broker %s", self.cfg.gateway.id,
                 self.cfg.gateway.site, len(self.supervisors), self.uplink.url)
        for s in self.supervisors:
            self._tasks.append(s.start())
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))

    async def stop_devices(self) -> None:
        for s in self.supervisors:
            await s.stop()

    async def drain(self, within: float) -> bool:
        """Send what is pending, whatever its age, and wait for the cloud to ack everything; True if it did."""
        self.uplink.flush = True
        self.uplink.wakeup.set()
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
