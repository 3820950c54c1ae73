"""The cloud's side of rules at run time: gateways' alert events, the cloud's own evaluation, alerts on MQTT.

- **Gateway events** (an ingest event listener): ``alert.raised`` / ``alert.cleared`` update the alerts
  table with their original times (a gateway may speak only of its own subjects, and an alert id must
  be the one its rule, subject and start give); ``rule.derivation`` records which rule version produces
  a derived point from when on.
- **Cloud evaluation** (a tail of what every ingest worker committed): each newly committed batch is
  queued by the commit itself (``rules_pending``, same transaction); one evaluator at a time — the
  holder of the ``rules-eval`` lease, any cloud process — takes the queue in order and feeds each batch
  to the tenant's cloud rule set (``rules_eval.CloudRules``), so N ingest workers on a shared
  subscription still give one evaluation over each gateway's whole stream, and a worker that dies
  after its commit loses no evaluation; the ingest's batch listener only wakes the tail. Its alert
  changes go to the same alerts table (same ids as the gateway's, so they merge) and its derived
  readings to ``derived_readings``, never to ``readings``: what is in ``readings`` was signed by a
  device. What it produces is handed to a bounded queue and written by one task, so a slow store never
  holds up the tail (if the queue overflows, outputs are dropped, counted and logged).
- **Rule sets**: each tenant's newest cloud set is loaded at start, every ``refresh_s`` and at once when
  the API changed it in this process (``poke``); a set that does not compile leaves the last one running.
- **Notifications** of cloud-placed rules: webhooks through the SSRF guard (cloud/webhook_guard.py) with
  the tenant's secrets from ``{rules_secrets_dir}/{tenant}/{name}``, republish under the gateway's
  ``cl/{site}/{gateway}/rules/…``, e-mail when an SMTP relay is configured.
- **Alerts on MQTT**: every change of an alert (raised, acknowledged, cleared, a second source) is
  published on ``cl/{site}/{gateway}/alerts`` (docs/topics.md) for other consumers.

If the lease holder dies, another process takes the lease after ``LEASE_MS``; window state that was
only in the dead process's memory starts again (alerts merge by id, derived readings by key, so an
evaluation repeated after a crash changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from carbonlink.kernel import topics
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.events import Event
from carbonlink.kernel.tasks import cancel_and_wait, failure
from carbonlink.kernel.wire import Quality, Reading, WireError, now_ms, parse_batch
from carbonlink.rules import AlertChange as EngineAlertChange
from carbonlink.rules.actions import (
    DirSecrets,
    EmailExecutor,
    Executor,
    Job,
    Permanent,
    RepublishExecutor,
    SmtpSettings,
    WebhookExecutor,
)
from carbonlink.rules.alerts import alert_id
from carbonlink.rules.compiler import DERIVED_PREFIX
from carbonlink.rules.document import RULE_ID

from .batchparse import FastParser
from .rules_eval import CloudRules, DerivedOut
from .settings import CloudSettings
from .store import GatewayRecord, PendingBatch, Store
from .store.alerts import AlertChange
from .store.rules_model import AlertRecord
from .webhook_guard import TargetPolicy, guarded_client, parse_networks

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], Awaitable[None]]  # topic, payload, retain (ControlLink.publish)
ALERTS = topics.ALERTS  # cl/{site}/{gateway}/alerts
LEASE = "rules-eval"  # one evaluator of the committed-batch queue at a time
LEASE_MS = 15_000
TAIL_IDLE_S = 1.0  # the tail looks at the queue at least this often (other workers' commits)
_SAFE_DIR = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


class _AlertBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    alert: str = Field(pattern=r"^[0-9a-f]{32}$")
    rule: str = Field(pattern=RULE_ID)
    version: int = Field(default=0, ge=0, le=2**31 - 1)
    subject: str = Field(min_length=3, max_length=400)
    since: int = Field(ge=0, lt=253402300800000)
    values: dict[str, Any] = Field(default_factory=dict)
    evidence: list[dict[str, Any]] = Field(default_factory=list, max_length=5)
    silenced_by: str | None = Field(default=None, max_length=64)


class _DerivationBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    rule: str = Field(pattern=RULE_ID)
    version: int = Field(ge=0, le=2**31 - 1)
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    unit: str = Field(default="", max_length=32)
    text: str = Field(default="", max_length=2000)
    inputs: list[str] = Field(default_factory=list, max_length=100)
    from_: int = Field(alias="from", ge=0, lt=253402300800000)


@dataclass
class RulesCounters:
    gateway_alerts: int = 0  # alert events from gateways that changed an alert
    cloud_alerts: int = 0
    derived_stored: int = 0
    derivations: int = 0
    refused_events: int = 0  # alert/derivation events that were stored but not believed (see the log)
    dropped: int = 0  # cloud outputs lost to a full queue
    published: int = 0
    publish_failed: int = 0


class _Publisher:
    def __init__(self, publish: Publish) -> None:
        self._publish = publish

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        try:
            await self._publish(topic, payload, False)
        except aiomqtt.MqttError as exc:
            raise ConnectionError(str(exc)) from None  # retried with backoff by the executor


class CloudRepublish(RepublishExecutor):
    """Republish under the gateway the row or alert belongs to: ``cl/{site}/{gateway}/rules/{topic}``."""

    def __init__(self, *, site_of: Callable[[str], str | None], **kw: Any) -> None:
        super().__init__(prefix=f"{topics.ROOT}/", **kw)
        self.site_of = site_of

    def topic(self, job: Job) -> str:
        gateway = job.subject.split("/", 1)[0]
        site = self.site_of(gateway)
        if site is None:
            raise Permanent(f"the site of gateway {gateway!r} is not known")
        return f"{topics.ROOT}/{site}/{gateway}/rules/" + super().topic(job)[len(self.prefix):]


class RulesService:
    def __init__(self, store: Store, settings: CloudSettings | None = None, *, publish: Publish | None = None,
                 clock: Callable[[], int] = now_ms, refresh_s: float = 5.0, queue_size: int = 10_000) -> None:
        self.store = store
        self.settings = settings = settings or CloudSettings()
        self.publish = publish
        self.clock = clock
        self.refresh_s = refresh_s
        self.counters = RulesCounters()
        self.policy = TargetPolicy(parse_networks(settings.webhook_allow), settings.webhook_allow_private)
        self.cloud: CloudRules | None = CloudRules(lateness_ms=settings.rules_lateness_s * 1000,
                                                   executors_for=self._executors_of) if settings.rules_cloud else None
        self.queue: asyncio.Queue[tuple[str, list[EngineAlertChange], list[DerivedOut]]] = \
            asyncio.Queue(maxsize=queue_size)
        self.versions: dict[str, int] = {}  # tenant -> the set version its cloud host runs
        self._executors: dict[str, dict[str, Executor]] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._sites: dict[str, str] = {}
        self._poke = asyncio.Event()
        self._publish_failing = False
        self._committed = asyncio.Event()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease_until = 0
        self._parser = FastParser()

    # --- the ingest's hooks -----------------------------------------------------------------------------

    def on_batch(self, rec: GatewayRecord, batch: PendingBatch) -> None:
        """A batch this process committed (the ingest's listener): wake the tail, which evaluates what every
        worker committed, in queue order."""
        if self.cloud is not None:
            self._committed.set()

    # --- the tail of committed batches --------------------------------------------------------------------

    async def _lead(self) -> bool:
        now = self.clock()
        if self._lease_until - now > LEASE_MS // 2:
            return True
        if await self.store.rules.take_lease(LEASE, self.owner, now, LEASE_MS):
            self._lease_until = now + LEASE_MS
            return True
        self._lease_until = 0
        return False

    async def evaluate_pending(self, limit: int = 200) -> int:
        """Evaluate the oldest queued committed batches if this process holds the lease; how many it took."""
        if self.cloud is None or not await self._lead():
            return 0
        rows = await self.store.rules.pending_batches(limit)
        records: dict[str, GatewayRecord | None] = {}
        for row in rows:
            gw = row["gateway"]
            if gw not in records:
                records[gw] = await self.store.registry.get_gateway(gw)
            rec = records[gw]
            if rec is None or rec.tenant is None or rec.tenant not in self.cloud.hosts or row["payload"] is None:
                continue
            readings = self._readings(bytes(row["payload"]))
            if not readings:
                log.warning("cloud rules: stored batch %s/%s could not be read again; not evaluated", gw, row["seq"])
                continue
            self._remember_site(rec.id, rec.site)
            alerts, derived = self.cloud.on_commit(rec.tenant, rec.id, readings)
            self.hand_over(rec.tenant, alerts, derived)
        await self.store.rules.done_batches((r["gateway"], int(r["seq"])) for r in rows)
        return len(rows)

    def _readings(self, raw: bytes) -> list[Reading]:
        fast = self._parser.parse(raw)
        if fast is not None:
            return [Reading(d, p, ts, v, u, Quality(q)) for d, p, ts, v, u, q in fast.rows]
        try:
            return list(parse_batch(raw).readings)
        except WireError:
            return []

    async def _tail(self) -> None:
        failing = False
        while True:
            try:
                took = await self.evaluate_pending()
                if failing:
                    log.info("cloud rules evaluate committed batches again")
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("cloud rules cannot read the committed-batch queue (%s: %s); retrying",
                                type(exc).__name__, exc)
                failing = True
                took = 0
                await asyncio.sleep(1.0)
            if took:
                await asyncio.sleep(0)  # more may be queued: go on, letting others run
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._committed.wait(), TAIL_IDLE_S)
            self._committed.clear()

    def hand_over(self, tenant: str, alerts: list[EngineAlertChange], derived: list[DerivedOut]) -> None:
        if not alerts and not derived:
            return
        try:
            self.queue.put_nowait((tenant, alerts, derived))
        except asyncio.QueueFull:
            self.counters.dropped += len(alerts) + len(derived)
            log.error("cloud rules: output queue full (%d); %d alert change(s) and %d derived reading(s) of %s"
                      " dropped", self.queue.maxsize, len(alerts), len(derived), tenant)

    async def on_event(self, rec: GatewayRecord, event: Event) -> None:
        """A gateway's event, stored by the ingest: alerts into the alerts table, derivations recorded."""
        if rec.tenant is None:
            return
        self._remember_site(rec.id, rec.site)
        if event.kind in ("alert.raised", "alert.cleared"):
            change = self._gateway_alert(event)
            if change is None:
                self.counters.refused_events += 1
                return
            try:
                got = await self.record(rec.tenant, change, "gateway")
            except PermissionError as exc:
                self.counters.refused_events += 1
                log.warning("alert event %s/%s refused: %s", event.gateway, event.id, exc)
                return
            self.counters.gateway_alerts += int(got is not None)
        elif event.kind == "rule.derivation":
            await self._derivation(event)

    def _gateway_alert(self, event: Event) -> AlertChange | None:
        try:
            b = _AlertBody.model_validate(event.body)
        except ValidationError as exc:
            log.warning("alert event %s/%s has a body the cloud cannot use: %s", event.gateway, event.id,
                        exc.errors()[0]["msg"] if exc.errors() else exc)
            return None
        if not b.subject.startswith(event.gateway + "/"):
            log.warning("alert event %s/%s speaks of subject %r, not one of its own", event.gateway, event.id,
                        b.subject[:100])
            return None
        if alert_id(b.rule, b.subject, b.since) != b.alert:
            log.warning("alert event %s/%s: id %s is not the one its rule, subject and start give", event.gateway,
                        event.id, b.alert)
            return None
        return AlertChange(event.kind.removeprefix("alert."), b.alert, b.rule, b.subject, event.gateway, event.ts_ms,
                           b.since, b.version, event.severity.value, event.device, event.point, b.values,
                           tuple(b.evidence), b.silenced_by)

    async def _derivation(self, event: Event) -> None:
        try:
            b = _DerivationBody.model_validate(event.body)
        except ValidationError:
            self.counters.refused_events += 1
            log.warning("rule.derivation event %s/%s has a body the cloud cannot use", event.gateway, event.id)
            return
        if event.device is None or event.point is None or not event.point.startswith(f"{DERIVED_PREFIX}{b.rule}:"):
            self.counters.refused_events += 1
            log.warning("rule.derivation event %s/%s does not name a point of rule %s", event.gateway, event.id, b.rule)
            return
        self.counters.derivations += int(await self.store.rules.add_derivation(
            event.gateway, event.device, event.point, b.from_, rule=b.rule, version=b.version, hash_=b.hash,
            unit=b.unit, text=b.text, inputs=b.inputs, event=event.id, received_ms=self.clock()))

    # --- alerts: one path for gateways, the cloud and the API ----------------------------------------------

    async def record(self, tenant: str, change: AlertChange, source: str) -> AlertRecord | None:
        """Merge a change into the alerts table; publish it when it changed anything. None when nothing changed."""
        if change.kind == "raised" and change.silenced_by is None:
            s = await self.store.rules.silence_covering(tenant, change.rule, change.gateway, change.device,
                                                        change.point, change.ts_ms)
            if s is not None:
                change = replace(change, silenced_by=s.id)
        rec, changed = await self.store.rules.alerts.merge(tenant, change, source, self.clock())
        if not changed:
            return None
        await self.publish_alert(rec)
        return rec

    async def publish_alert(self, rec: AlertRecord) -> None:
        if self.publish is None:
            return
        gateway = rec.alert.gateway
        site = await self._site(gateway)
        if site is None:
            return
        body = {"kind": f"alert.{rec.alert.state.value}", "tenant": rec.tenant, "alert": rec.public()}
        try:
            await self.publish(f"{topics.ROOT}/{site}/{gateway}/{ALERTS}",
                               json.dumps(body, separators=(",", ":"), default=str).encode(), False)
            self.counters.published += 1
            if self._publish_failing:
                self._publish_failing = False
                log.info("alerts are published on MQTT again")
        except aiomqtt.MqttError as exc:  # stored already; consumers read the API meanwhile
            self.counters.publish_failed += 1
            if not self._publish_failing:
                self._publish_failing = True
                log.warning("alert changes are stored but not published (broker: %s)", exc)

    def _remember_site(self, gateway: str, site: str) -> None:
        if len(self._sites) > 100_000:
            self._sites.clear()
        self._sites[gateway] = site

    async def _site(self, gateway: str) -> str | None:
        site = self._sites.get(gateway)
        if site is None:
            rec = await self.store.registry.get_gateway(gateway)
            if rec is None:
                return None
            site = rec.site
            self._remember_site(gateway, site)
        return site

    # --- rule sets and executors ----------------------------------------------------------------------------

    def poke(self) -> None:
        """A set changed in this process: load it now rather than at the next refresh."""
        self._poke.set()

    async def refresh(self) -> None:
        if self.cloud is None:
            return
        for tenant, (version, cloud_hash) in (await self.store.rules.latest_versions()).items():
            if self.versions.get(tenant) == version:
                if tenant in self.cloud.hosts:
                    await self._start_executors(tenant)  # loaded before the service ran: executors now
                continue
            text = await self.store.rules.blob(tenant, cloud_hash)
            if text is None:
                log.error("cloud rule set %s of %s is missing; keeping the last one", cloud_hash[:12], tenant)
                continue
            doc = json.loads(text)
            if doc.get("rules") or tenant in self.cloud.hosts:
                await self._start_executors(tenant)
                result = self.cloud.apply(tenant, doc)
                if not result["ok"]:
                    log.error("cloud rule set v%d of %s does not compile; keeping %s: %s", version, tenant,
                              result["hash"][:12] or "none", result["errors"][:3])
            self.versions[tenant] = version
        # Queue committed batches only while some tenant has cloud rules (a set loaded here within
        # ``refresh_s`` of its creation; until then, as before it existed, nothing is evaluated).
        self.store.data.queue_for_rules = bool(self.cloud.hosts)

    def _executors_of(self, tenant: str) -> dict[str, Executor]:
        return self._executors.setdefault(tenant, {})

    async def _start_executors(self, tenant: str) -> None:
        ex = self._executors_of(tenant)
        if ex or self._stack is None:
            return
        s = self.settings
        on_dead = self._dead_letter(tenant)  # the tenant's host reports it as an action.dead_letter
        folder = s.rules_secrets_dir / (tenant if _SAFE_DIR.fullmatch(tenant) else "-invalid-")
        client = guarded_client(self.policy)
        self._stack.push_async_callback(client.aclose)
        made: dict[str, Executor] = {"webhook": WebhookExecutor(secrets=DirSecrets(folder), client=client,
                                                                 on_dead_letter=on_dead)}
        if self.publish is not None:
            made["republish"] = CloudRepublish(publisher=_Publisher(self.publish), site_of=self._sites.get,
                                               on_dead_letter=on_dead)
        if s.smtp_host:
            made["email"] = EmailExecutor(smtp=SmtpSettings(s.smtp_host, s.smtp_port, s.smtp_sender, s.smtp_starttls),
                                          on_dead_letter=on_dead)
        for e in made.values():
            await self._stack.enter_async_context(e)
        ex.update(made)
        host = self.cloud.hosts.get(tenant) if self.cloud is not None else None
        if host is not None:
            host.executors.update(made)  # a host keeps its own copy of the mapping

    def _dead_letter(self, tenant: str) -> Callable[[Any], None]:
        def report(letter: Any) -> None:
            host = self.cloud.hosts.get(tenant) if self.cloud is not None else None
            if host is not None:
                host.dead_letter(letter)
            else:
                log.warning("cloud rules of %s: %s dead-lettered: %s", tenant, letter.action, letter.reason)
        return report

    # --- running ---------------------------------------------------------------------------------------------

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            writer = asyncio.create_task(self._writer(), name="rules-writer")
            tail = asyncio.create_task(self._tail(), name="rules-tail") if self.cloud is not None else None
            try:
                while True:
                    try:
                        await self.refresh()
                    except Exception as exc:
                        if not self.store.db.is_unavailable(exc):
                            raise
                        log.warning("rule sets not refreshed: the store is unavailable (%s)", exc)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._poke.wait(), self.refresh_s)
                    self._poke.clear()
            finally:
                # Until they end (a cancellation can be lost, as in kernel.tasks); one that failed raises here.
                ended = [t for t in (writer, tail) if t is not None]
                await cancel_and_wait(ended, what="rules")
                for task in ended:
                    if (failed := failure(task)) is not None:
                        raise failed
                if self._lease_until:
                    with contextlib.suppress(Exception):
                        await self.store.rules.release_lease(LEASE, self.owner)
                    self._lease_until = 0
                self._stack = None

    async def _writer(self) -> None:
        while True:
            tenant, alerts, derived = await self.queue.get()
            backoff = Backoff(initial=0.2, cap=10.0)
            while True:
                try:
                    await self.write(tenant, alerts, derived)
                    break
                except Exception as exc:
                    if not self.store.db.is_unavailable(exc):
                        log.exception("cloud rule outputs of %s could not be stored; dropped", tenant)
                        self.counters.dropped += len(alerts) + len(derived)
                        break
                    await asyncio.sleep(backoff.next_delay())  # the store is down: hold on, nothing is dropped
            self.queue.task_done()

    async def write(self, tenant: str, alerts: list[EngineAlertChange], derived: list[DerivedOut]) -> None:
        if derived:
            await self.store.rules.add_derived(tenant, [d.row() for d in derived], self.clock())
            self.counters.derived_stored += len(derived)
        for a in alerts:
            body = a.body()
            change = AlertChange(a.kind, a.alert_id, a.rule, a.subject, a.source, a.ts_ms, a.since_ms, a.version,
                                 a.severity, a.device, a.point, body["values"], tuple(body["evidence"]),
                                 a.silenced_by)
            try:
                got = await self.record(tenant, change, "cloud")
            except PermissionError as exc:  # pragma: no cover - the cloud's subjects are its gateways'
                log.warning("cloud alert %s not recorded: %s", a.alert_id, exc)
                continue
            self.counters.cloud_alerts += int(got is not None)

    async def drain(self) -> None:
        """Until the committed-batch queue is evaluated (if this process leads) and every output is
        written (tests, orderly shutdown)."""
        while await self.evaluate_pending():
            pass
        if self._stack is None:  # not running: write what is queued here
            while not self.queue.empty():
                tenant, alerts, derived = self.queue.get_nowait()
                await self.write(tenant, alerts, derived)
                self.queue.task_done()
        await self.queue.join()

    def state(self, tenant: str) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.cloud is not None, "set_version": self.versions.get(tenant)}
        if self.cloud is not None:
            out |= self.cloud.state(tenant)
        return out
