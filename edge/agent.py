"""The edge agent: device supervisors → outbox → uplink, plus the shadow and commands from the cloud."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from carbonlink.kernel.tasks import cancel_and_wait
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import Reading, WireError

from .anomaly_runner import AnomalyRunner
from .commands import CommandRejected, CommandRunner
from .config import GatewayConfig, load_gateway_config
from .drivers.registry import build_driver
from .identity import load_or_create_key
from .outbox import KeySigner, Outbox, Spill, is_corruption
from .rules_runner import RulesRunner
from .shadow import EdgeShadow
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
    outbox: dict[str, int]


@dataclass
class StoreHealth:
    failing: str | None = None  # why the outbox refuses readings, while it does
    since: float = 0.0
    next_try: float = 0.0
    corrupt: bool = False
    spilled: int = 0
    refused: int = 0
    refusing: bool = False


class OutboxEvents:
    """The agent's EventSink: an event is kept in the outbox, signed when sent, removed on the cloud's ack."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        try:
            self.outbox.add_event(kind, severity=severity, body=body, device=device, point=point, ts_ms=ts_ms)
        except (sqlite3.Error, WireError) as exc:  # never lost silently: at least in the log
            log.error("event %s (device=%s point=%s) could not be kept (%s): %s", kind, device, point, exc,
                      json.dumps(body or {}, default=str)[:500])


class EdgeAgent:
    def __init__(self, cfg: GatewayConfig, *, mqtt_url: str | None = None, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.key = load_or_create_key(cfg.gateway.key_file)
        self.signer = KeySigner(self.key)
        self.topics = GatewayTopics(cfg.gateway.site, cfg.gateway.id)
        self.outbox = Outbox(cfg.gateway.data_dir / "outbox.sqlite", cfg.gateway.id,
                             synchronous=cfg.outbox.synchronous)  # a corrupt file is set aside here
        self.spill = Spill(cfg.gateway.data_dir / "outbox.spill.jsonl")
        self.store_health = StoreHealth()
        self.events = OutboxEvents(self.outbox)
        m = cfg.mqtt
        self.policy = self._policy(cfg)
        self.devices: dict[str, Any] = {d.id: d for d in cfg.devices}  # current settings, shadow applied
        self.supervisors: dict[str, DeviceSupervisor] = {}
        self.point_filter: dict[str, frozenset[str]] = {}
        # rules before the shadow: the shadow's saved desired state may carry a rule set
        self.rules = RulesRunner(gateway=cfg.gateway.id, site=cfg.gateway.site, data_dir=cfg.gateway.data_dir,
                                 sink=self.events, derived=self._store,
                                 publish=self._publish, tags={d.id: {"driver": d.driver} for d in cfg.devices})
        self.anomaly = AnomalyRunner(data_dir=cfg.gateway.data_dir, sink=self.events, enabled=cfg.anomaly.enabled)
        self.shadow = EdgeShadow(cfg.gateway.data_dir / "shadow.json", self.topics, self)
        self.commands = CommandRunner(self.topics, self)
        self.uploaders = [u.build() for u in cfg.hj212_upload]
        self.uplink = Uplink(self.outbox, self.topics, mqtt_url or m.url, username=m.username,
                             password=m.password, keepalive=m.keepalive_s, ack_timeout=m.ack_timeout_s,
                             max_inflight=m.max_inflight, sign=self.signer, policy=self.policy,
                             subscriptions=(*self.shadow.subscriptions, self.commands.subscription),
                             on_message=self._control, on_connect=self._connected,
                             quarantine_max=cfg.outbox.quarantine_max)
        self.uplink.on_store_error = self._sending_failed
        self.produced = 0
        self.filtered = 0
        self.housekeeping_interval = 5.0
        self._fresh: dict[str, asyncio.Event] = {}
        self._last: dict[str, list[Reading]] = {}
        self._started = False
        self._tasks: list[asyncio.Task[Any]] = []

    @staticmethod
    def _policy(cfg: GatewayConfig) -> DeliveryPolicy:
        d = cfg.delivery
        return DeliveryPolicy(live_max_readings=cfg.batch.max_readings, live_max_age_s=cfg.batch.max_age_s,
                              live_window_s=d.live_window_s, live_inflight=d.live_inflight,
                              backlog_max_readings=d.backlog_max_readings, backlog_inflight=d.backlog_inflight,
                              backlog_rate=d.backlog_rate, live_target_ms=d.live_target_ms)

    # --- readings in ----------------------------------------------------------------------

    async def _accept(self, readings: list[Reading]) -> None:
        if readings:
            keep = self.point_filter.get(readings[0].device)
            if keep is not None:
                n = len(readings)
                readings = [r for r in readings if r.point in keep]
                self.filtered += n - len(readings)
        if not readings:
            return
        readings = self.anomaly.feed(readings)  # flags only, never drops or changes a value; never raises
        self._store(readings)
        self.produced += len(readings)
        self.rules.feed(readings)  # never raises: a failing rule is disabled with an event
        for up in self.uploaders:  # bounded queues: a slow platform never holds up the outbox
            up.submit(readings)
        dev = readings[0].device
        self._last[dev] = readings
        if dev in self._fresh:
            self._fresh[dev].set()
        if len(readings) >= self.policy.live_max_readings:
            self.uplink.wakeup.set()

    # --- the local store failing at run time --------------------------------------------------

    def _store(self, readings: list[Reading]) -> None:
        """Into the outbox; while it fails, into the spill file; never dropped silently, never a driver's fault."""
        h = self.store_health
        if h.failing is None or self._store_recovered():
            try:
                self.outbox.append(readings)
                return
            except sqlite3.Error as exc:
                self._store_failed(exc)
        try:
            h.spilled += self.spill.append(readings, int(time.time() * 1000))
        except OSError as exc:
            h.refused += len(readings)
            if not h.refusing:
                h.refusing = True
                log.error("the spill file %s cannot be written either (%s): new readings are being REFUSED"
                          " and counted until the outbox works again", self.spill.path, exc)

    def _store_failed(self, exc: sqlite3.Error) -> None:
        h = self.store_health
        if h.failing is None:
            h.failing, h.since, h.corrupt = str(exc), time.monotonic(), is_corruption(exc)
            log.error("the outbox %s cannot store readings (%s: %s); this is the gateway's local store, not a"
                      " device: readings are kept in %s until it works again%s", self.outbox.path,
                      type(exc).__name__, exc, self.spill.path,
                      "; the file is damaged: it will be set aside and replaced" if h.corrupt else
                      "; check free disk space and the storage device")
        h.next_try = time.monotonic() + 1.0

    def _sending_failed(self, exc: sqlite3.Error) -> None:
        """A damaged file found while sending is set aside and replaced too (a busy one is just retried)."""
        if is_corruption(exc):
            self._store_failed(exc)
            self.store_health.corrupt = True

    def _store_recovered(self) -> bool:
        """Try the outbox again (at most once a second): import the spill file; True if the outbox works."""
        h = self.store_health
        if time.monotonic() < h.next_try:
            return False
        try:
            if h.corrupt:
                self._replace_outbox()
            self._import_spill()
        except sqlite3.Error as exc:
            h.next_try = time.monotonic() + 1.0
            h.corrupt = h.corrupt or is_corruption(exc)
            return False
        log.info("the outbox %s stores readings again after %.1f s; %d readings kept in %s meanwhile were moved"
                 " into it%s", self.outbox.path, time.monotonic() - h.since, h.spilled, self.spill.path,
                 f"; {h.refused} readings were refused" if h.refused else "")
        self.events.emit("outbox.store_failed", ts_ms=int(time.time() * 1000),
                         severity="critical" if h.refused else "warning",
                         body={"error": (h.failing or "")[:500], "seconds": round(time.monotonic() - h.since, 1),
                               "spilled": h.spilled, "refused": h.refused, "file": str(self.outbox.path)})
        self.store_health = StoreHealth()
        return True

    def _import_spill(self) -> None:
        rows, bad = self.spill.load()
        if rows:
            self.outbox.append_spilled(rows)
        if bad:
            log.error("%d unreadable line(s) in %s were skipped (a crash while writing)", bad, self.spill.path)
        self.spill.clear()

    def _replace_outbox(self) -> None:
        """Reopen the outbox: a damaged file fails its check and is set aside, salvaged and replaced."""
        old = self.outbox
        try:
            old.close()
        except sqlite3.Error:
            pass
        new = Outbox(old.path, old.gateway_id, synchronous=self.cfg.outbox.synchronous)
        self.outbox = self.uplink.outbox = self.events.outbox = new
        self.uplink.forget_inflight()
        self.store_health.corrupt = False

    async def _housekeeping(self) -> None:
        """Enforce the disk quota; an overflow is rolled up, logged and queued as an alert event."""
        quota = int(self.cfg.outbox.quota_mb * 1024 * 1024)
        while True:
            try:
                if self.store_health.failing is not None:
                    self._store_recovered()  # also when no reading comes in to try it
                report = self.outbox.enforce_quota(quota, self.policy.live_after_ms())
                if report is not None:
                    self.uplink.wakeup.set()
            except sqlite3.Error as exc:  # disk trouble: keep reading and retry later
                if self.store_health.failing is None:
                    self._store_failed(exc)
            await asyncio.sleep(self.housekeeping_interval)

    # --- control plane (shadow, commands) --------------------------------------------------

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self.uplink.client
        if client is None:
            raise aiomqtt.MqttError("not connected")
        await client.publish(topic, payload, qos=1)

    async def _connected(self, _: aiomqtt.Client) -> None:
        await self.shadow.on_connect(self._publish)

    async def _control(self, topic: str, payload: bytes) -> None:
        if await self.shadow.handle(topic, payload, self._publish):
            return
        if not await self.commands.handle(topic, payload, self._publish):
            log.debug("no handler for %s", topic)

    # ShadowTarget
    def device_points(self) -> dict[str, set[str] | None]:
        out: dict[str, set[str] | None] = {}
        for dev_id, settings in self.devices.items():
            resolve = getattr(settings, "resolved_points", None)
            out[dev_id] = {p.name for p in resolve()} if callable(resolve) else None
        return out

    def effective_state(self) -> dict[str, Any]:
        devices: dict[str, Any] = {}
        for dev_id, s in self.devices.items():
            d: dict[str, Any] = {"enabled": s.enabled, "poll_interval_s": float(s.poll_interval_s)}
            if dev_id in self.point_filter:
                d["points"] = sorted(self.point_filter[dev_id])
            devices[dev_id] = d
        return {"log_level": logging.getLevelName(logging.getLogger().level),
                "batch": {"max_readings": self.policy.live_max_readings,
                          "max_age_s": float(self.policy.live_max_age_s)},
                "devices": devices, "rules": self.rules.state(), "model": self.anomaly.state()}

    def set_rules(self, doc: Any) -> str | None:
        return self.rules.apply(doc)

    def set_model(self, doc: Any) -> str | None:
        return self.anomaly.apply(doc)

    def holds_model(self, sha256: str) -> bool:
        return self.anomaly.holds(sha256)

    def rules_hash(self) -> str:
        return self.rules.host.applied_hash

    def set_log_level(self, level: str) -> None:
        logging.getLogger().setLevel(level)

    def set_batch(self, max_readings: int | None, max_age_s: float | None) -> None:
        if max_readings is not None:
            self.policy.live_max_readings = max_readings
        if max_age_s is not None:
            self.policy.live_max_age_s = max_age_s
        self.uplink.wakeup.set()

    def set_device(self, device: str, *, enabled: bool | None, poll_interval_s: float | None,
                   points: list[str] | None) -> None:
        if points is not None:
            self.point_filter[device] = frozenset(points)
        update: dict[str, Any] = {}
        if enabled is not None:
            update["enabled"] = enabled
        if poll_interval_s is not None:
            update["poll_interval_s"] = poll_interval_s
        new = self.devices[device].model_copy(update=update)
        if new != self.devices[device]:
            self.devices[device] = new
            if self._started:
                self._restart(device)

    def _restart(self, device: str) -> None:
        self._retire(self.supervisors.pop(device, None))
        settings = self.devices[device]
        if settings.enabled:
            driver = build_driver(settings, events=self.events)  # signed, kept until the cloud acks
            sup = DeviceSupervisor(driver, self._accept)
            self.supervisors[device] = sup
            self._tasks.append(sup.start())

    def _retire(self, old: DeviceSupervisor | None) -> None:
        """Stop a replaced or removed device's supervisor for certain, in the background: one cancel can be
        lost (pymodbus swallows one mid-request), which left the old poller running beside its successor."""
        if old is not None and old._task is not None:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(old.stop(), name=f"retire {old.driver.describe()}"))

    # CommandTarget
    async def read_now(self, device: str | None, wait_s: float) -> dict[str, Any]:
        targets = [device] if device else [d for d in self.supervisors]
        for d in targets:
            if d not in self.supervisors:
                raise CommandRejected(f"device {d!r} is not running on this gateway")
        events = {d: self._fresh.setdefault(d, asyncio.Event()) for d in targets}
        for d, ev in events.items():
            ev.clear()
            self._restart(d)  # a new session connects and reads at once
        try:
            async with asyncio.timeout(wait_s):
                await asyncio.gather(*(ev.wait() for ev in events.values()))
        except TimeoutError:
            missing = [d for d, ev in events.items() if not ev.is_set()]
            raise TimeoutError(f"no fresh reading from {', '.join(missing)} within {wait_s:.1f} s") from None
        finally:
            for d in targets:
                self._fresh.pop(d, None)
        return {d: [{"point": r.point, "ts_ms": r.ts_ms, "value": r.value, "unit": r.unit,
                     "quality": r.quality.value} for r in self._last.get(d, [])] for d in targets}

    async def restart_driver(self, device: str) -> dict[str, Any]:
        if device not in self.devices:
            raise CommandRejected(f"no device {device!r} on this gateway")
        self._restart(device)
        return {"device": device, "running": device in self.supervisors}

    async def reload_config(self) -> dict[str, Any]:
        if self.config_path is None:
            raise CommandRejected("this agent was started without a config file to reload")
        try:
            cfg = load_gateway_config(self.config_path)
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"{self.config_path} is not valid; nothing changed: {exc}") from None
        if cfg.gateway != self.cfg.gateway or cfg.mqtt != self.cfg.mqtt:
            raise CommandRejected("gateway or mqtt sections changed: those need a restart of the agent")
        changed = sorted(d for d in {*self.devices, *(x.id for x in cfg.devices)}
                         if self.devices.get(d) != next((x for x in cfg.devices if x.id == d), None))
        self.cfg = cfg
        self.devices = {d.id: d for d in cfg.devices}
        self.set_batch(cfg.batch.max_readings, cfg.batch.max_age_s)
        self.set_log_level(cfg.log_level)
        for d in changed:
            if d not in self.devices:
                self._retire(self.supervisors.pop(d, None))
            else:
                self._restart(d)
        self.shadow.apply_saved()  # the operator's desired state still wins over the file
        return {"devices_changed": changed}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        log.info("gateway %s (site %s): %d device(s), broker %s", self.cfg.gateway.id,
                 self.cfg.gateway.site, len(self.devices), self.uplink.url)
        self.shadow.apply_saved()  # before any network: the last desired state received
        if self.spill.path.exists():  # readings kept while the outbox failed, before a crash or restart
            try:
                self._import_spill()
            except sqlite3.Error as exc:
                self._store_failed(exc)
        self._started = True
        for dev_id in self.devices:
            self._restart(dev_id)
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(asyncio.create_task(self.rules.run(), name="rules"))
        self._tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        for i, up in enumerate(self.uploaders):
            self._tasks.append(asyncio.create_task(up.run(), name=f"hj212 upload {i}"))

    async def stop_devices(self) -> None:
        for s in list(self.supervisors.values()):
            await s.stop()
        self.supervisors.clear()

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
        await cancel_and_wait(self._tasks, what="agent")
        self._tasks.clear()
        self._started = False
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
                     for s in self.supervisors.values()},
            outbox=self.outbox.metrics(),
        )
