"""OPC-UA client driver (asyncua): monitored items by default, polling as the fallback.

One session = one OPC-UA connection. Nodes come from the config as node ids
(``ns=2;i=10``) or browse paths from the Root folder (``0:Objects/2:CEMS/2:Stack1/2:SO2``),
resolved on every connect so a restarted server that renumbered its nodes is found again.

In ``subscribe`` mode the driver creates one subscription whose monitored items use the
StatusValueTimestamp trigger (Part 4, 7.22.2), so every new sample is reported, even a
repeated (stuck) value; notifications arrive through an asyncio.Queue and are yielded
in batches, one per publish response. If the server refuses subscriptions the session
polls with Read instead. A dead connection ends the session (DriverError) when the
transport closes, when asyncua's watchdog probe fails (it then sends BadShutdown as a
subscription status change), or when no publish response, not even a keep-alive, has
arrived for three keep-alive periods. The supervisor then reconnects and a fresh
subscription is created; the driver never reuses a server-side session.

Status codes become quality flags (HJ 212-2017 data flags), never numbers that look valid:

=====================================================  =====  =====================
OPC-UA status (Part 4, 7.34; Part 8, A.4.3)            flag   value
=====================================================  =====  =====================
Good*                                                  N      the value
GoodLocalOverride                                      S      the value (set by hand)
Uncertain: EngineeringUnitsExceeded                    T      the value (over range)
Uncertain: SubstituteValue                             S      the value
Uncertain: LastUsableValue                             B      the value (stale: source lost)
Uncertain: SensorCalibration                           C      the value (calibration gas)
other Uncertain*                                       D      the value, marked invalid
Bad: OutOfService                                      F      0 (instrument stopped)
Bad: communication (NoCommunication, NotConnected,     B      0
     CommunicationError, WaitingForInitialData, ...)
other Bad*                                             D      0 (fault)
=====================================================  =====  =====================

Uncertain values keep the server's number (it is its best estimate) but never carry N:
HJ 212 has no "uncertain" flag, and counting them as valid in emission totals would be
silently wrong, so the conservative flag is D unless a more specific one applies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Literal

from asyncua import Client, Node, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import security_policies

from carbonlink.kernel.wire import Quality, Reading, WireError, now_ms

from .base import Driver, DriverError, ticks
from .opcua_settings import OpcUaDevice, OpcUaNode

__all__ = ["OpcUaDevice", "OpcUaDriver", "OpcUaNode", "quality_for"]

log = logging.getLogger(__name__)
logging.getLogger("asyncua").setLevel(logging.CRITICAL)  # it logs every request; we log failures once

POLICIES: dict[str, Any] = {"Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
            "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
            "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss}

S = ua.StatusCodes
_SPECIFIC_QUALITY = {
    S.GoodLocalOverride: Quality.MANUAL,
    S.UncertainEngineeringUnitsExceeded: Quality.OVER_RANGE,
    S.UncertainSubstituteValue: Quality.MANUAL,
    S.UncertainLastUsableValue: Quality.COMM_FAILURE,
    S.UncertainSensorCalibration: Quality.CALIBRATION,  # the analyser reads span gas: HJ 212 flag C
    S.BadOutOfService: Quality.STOPPED,
    S.BadNoCommunication: Quality.COMM_FAILURE,
    S.BadNotConnected: Quality.COMM_FAILURE,
    S.BadCommunicationError: Quality.COMM_FAILURE,
    S.BadWaitingForInitialData: Quality.COMM_FAILURE,
    S.BadServerNotConnected: Quality.COMM_FAILURE,
    S.BadTimeout: Quality.COMM_FAILURE,
}
# CreateSubscription answers meaning "this server does not do subscriptions (for us)": poll instead.
_REFUSED = {S.BadTooManySubscriptions, S.BadServiceUnsupported, S.BadNotSupported, S.BadNotImplemented,
            S.BadTooManyMonitoredItems}


def quality_for(status: ua.StatusCode) -> Quality:
    """The HJ 212 flag for an OPC-UA status code (table in the module docstring)."""
    code = int(status.value) & 0xFFFF0000  # the low 16 bits are info bits (limits, overflow)
    specific = _SPECIFIC_QUALITY.get(code)
    if specific is not None:
        return specific
    if status.is_good():
        return Quality.NORMAL
    return Quality.FAULT


@dataclass(frozen=True)
class _Status:
    """A subscription status change, queued alongside data changes."""

    status: ua.StatusCode


class _Handler:
    """asyncua subscription handler: hands notifications to the session through a bounded queue."""

    def __init__(self, queue: asyncio.Queue[tuple[int, ua.DataValue] | _Status], driver: OpcUaDriver) -> None:
        self.queue = queue
        self.driver = driver

    def _put(self, item: tuple[int, ua.DataValue] | _Status) -> None:
        if self.queue.full():  # the sink is slower than the server: keep the newest samples
            self.queue.get_nowait()
            self.driver.counters.bump("dropped")
        self.queue.put_nowait(item)

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        item = data.monitored_item
        self._put((int(item.ClientHandle), item.Value))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self._put(_Status(status.Status))


class OpcUaDriver(Driver):
    kind = "opcua"
    settings: OpcUaDevice

    def __init__(self, device_id: str, settings: OpcUaDevice) -> None:
        super().__init__(device_id, settings)
        self.points = list(settings.nodes)
        self.active_mode: Literal["subscribe", "poll"] | None = None  # what the current session does
        self._link_dead = False  # set when the session ends on a dead link: skip the polite goodbye

    # --- session ------------------------------------------------------------------------

    async def session(self) -> AsyncGenerator[list[Reading], None]:
        s = self.settings
        client = Client(s.endpoint, timeout=s.timeout_s, watchdog_intervall=s.watchdog_s)
        client.application_uri = s.application_uri
        # A session we abandon (dead link) is dropped by the server after this long.
        client.session_timeout = max(30_000, int(3 * s.keepalive_s * 1000))
        self._link_dead = False
        try:
            try:
                await self._connect(client)
                nodes = await self._resolve(client)
                sub = await self._subscribe(client, nodes) if s.mode == "subscribe" else None
            except (ua.UaError, OSError, TimeoutError) as exc:
                raise DriverError(f"{self.describe()} {s.endpoint}: {_describe(exc)}") from exc
            if sub is not None:
                self.active_mode = "subscribe"
                async for batch in self._pushed(client, *sub):
                    yield batch
            else:
                self.active_mode = "poll"
                async for batch in self._polled(client, nodes):
                    yield batch
        finally:
            self.active_mode = None
            await self._close(client)

    async def _connect(self, client: Client) -> None:
        s = self.settings
        if s.certificate is not None and s.private_key is not None:
            await client.set_security(
                POLICIES[s.security_policy], str(s.certificate), str(s.private_key),
                s.private_key_password.get_secret_value() if s.private_key_password else None,
                str(s.server_certificate) if s.server_certificate else None,
                getattr(ua.MessageSecurityMode, s.security_mode))
        if s.username is not None and s.password is not None:
            client.set_user(s.username)
            client.set_password(s.password.get_secret_value())
        await client.connect()

    async def _resolve(self, client: Client) -> list[tuple[int, OpcUaNode, Node]]:
        """(client handle, point, node) for every point that exists on this server."""
        out: list[tuple[int, OpcUaNode, Node]] = []
        by_path = [(h, p) for h, p in enumerate(self.points, 1) if p.browse_path is not None]
        found: dict[int, Node] = {}
        if by_path:
            results = await client.nodes.root.get_children_by_path(
                [p.browse_names() for _, p in by_path], raise_on_partial_error=False)
            for (h, _p), targets in zip(by_path, results, strict=True):
                if targets and targets[0] is not None:
                    found[h] = targets[0]
        missing = []
        for h, p in enumerate(self.points, 1):
            if p.node_id is not None:
                out.append((h, p, client.get_node(p.node_id)))
            elif h in found:
                out.append((h, p, found[h]))
            else:
                missing.append(p)
        if missing:
            self._missing(missing, "browse path not found")
        if not out:
            raise DriverError(f"{self.describe()}: none of the configured nodes exists on the server")
        return out

    def _missing(self, points: Sequence[OpcUaNode], why: str) -> None:
        # The rest of the device is still read; the next session tries these again.
        self.counters.bump("unresolved_nodes", len(points))
        self.counters.last_error = f"{why}: {', '.join(p.browse_path or p.node_id or p.name for p in points)}"
        log.warning("%s: %s", self.describe(), self.counters.last_error)

    # --- subscribe mode -------------------------------------------------------------------

    async def _subscribe(self, client: Client, nodes: list[tuple[int, OpcUaNode, Node]]
                         ) -> tuple[Any, asyncio.Queue[tuple[int, ua.DataValue] | _Status],
                                    dict[int, OpcUaNode]] | None:
        s = self.settings
        interval_ms = s.publishing_s * 1000
        keepalive = max(1, math.ceil(s.keepalive_s / s.publishing_s))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval_ms,
            RequestedMaxKeepAliveCount=keepalive,
            RequestedLifetimeCount=keepalive * 3,  # Part 4, 5.13.2: at least three keep-alives
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        queue: asyncio.Queue[tuple[int, ua.DataValue] | _Status] = asyncio.Queue(
            maxsize=max(1000, 20 * len(nodes)))
        try:
            sub = await client.create_subscription(params, _Handler(queue, self))
        except ua.UaStatusCodeError as exc:
            if exc.code not in _REFUSED:
                raise
            self.counters.bump("subscribe_refused")
            log.info("%s: server refused a subscription (%s); polling instead",
                     self.describe(), _describe(exc))
            return None
        trigger = ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)
        requests = [ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=h, SamplingInterval=interval_ms, Filter=trigger,
                QueueSize=s.queue_size, DiscardOldest=True),
        ) for h, _, node in nodes]
        results = await sub.create_monitored_items(requests)
        handles: dict[int, OpcUaNode] = {}
        failed = []
        for (h, p, _), r in zip(nodes, results, strict=True):
            if isinstance(r, ua.StatusCode):
                failed.append(p)
            else:
                handles[h] = p
        if failed:
            self._missing(failed, "monitored item refused")
        if not handles:
            raise DriverError(f"{self.describe()}: the server accepted none of the monitored items")
        return sub, queue, handles

    async def _pushed(self, client: Client, sub: Any,
                      queue: asyncio.Queue[tuple[int, ua.DataValue] | _Status],
                      handles: dict[int, OpcUaNode]) -> AsyncIterator[list[Reading]]:
        s = self.settings
        check_every = min(1.0, s.keepalive_s / 2, s.publishing_s)
        # No publish response at all (data or keep-alive) for this long means the link is dead.
        silence_limit = 3 * max(s.keepalive_s, s.publishing_s) + s.timeout_s
        heard = time.monotonic()
        # asyncua stamps every publish response (keep-alives too) in last_publish_at, but also resets it
        # when it re-creates a stale subscription itself; a reset is no sign of life, so skip those.
        seen_stamp, seen_id = sub.last_publish_at, sub.subscription_id
        while True:
            try:
                first = await asyncio.wait_for(queue.get(), check_every)
            except TimeoutError:
                first = None
            now = time.monotonic()
            if first is not None:
                heard = now
            if sub.subscription_id != seen_id:
                seen_stamp, seen_id = sub.last_publish_at, sub.subscription_id
            elif sub.last_publish_at is not None and sub.last_publish_at != seen_stamp:
                seen_stamp = sub.last_publish_at
                heard = max(heard, seen_stamp)
            if client.state is not UaClientState.CONNECTED:
                self._link_dead = True
                raise DriverError(f"{self.describe()}: connection lost ({client.state.value})")
            if now - heard > silence_limit:
                self._link_dead = True
                raise DriverError(
                    f"{self.describe()}: no publish response or keep-alive for {now - heard:.1f} s")
            if first is None:
                continue
            items = [first]
            while not queue.empty():  # the rest of this publish response
                items.append(queue.get_nowait())
            out: list[Reading] = []
            for item in items:
                if isinstance(item, _Status):
                    if item.status.is_good():
                        continue
                    raise DriverError(f"{self.describe()}: subscription status {item.status.name}")
                handle, dv = item
                point = handles.get(handle)
                if point is not None:
                    out.append(self._reading(point, dv))
            if out:
                yield out

    # --- poll mode -----------------------------------------------------------------------

    async def _polled(self, client: Client, nodes: list[tuple[int, OpcUaNode, Node]]
                      ) -> AsyncIterator[list[Reading]]:
        s = self.settings
        points = [p for _, p, _ in nodes]
        targets = [n for _, _, n in nodes]
        async with aclosing(ticks(s.poll_interval_s)) as tick:
            async for _ in tick:
                yield await self._poll_once(client, points, targets)

    async def _poll_once(self, client: Client, points: list[OpcUaNode], targets: list[Node]) -> list[Reading]:
        if client.state is not UaClientState.CONNECTED:
            self._link_dead = True
            raise DriverError(f"{self.describe()}: connection lost ({client.state.value})")
        try:
            values = await client.read_attributes(targets)
        except (ua.UaError, OSError, TimeoutError) as exc:
            # a status code in reply means the link itself is alive
            self._link_dead = not isinstance(exc, ua.UaStatusCodeError)
            raise DriverError(f"{self.describe()} read: {_describe(exc)}") from exc
        return [self._reading(p, dv) for p, dv in zip(points, values, strict=True)]

    # --- values ---------------------------------------------------------------------------

    def _reading(self, p: OpcUaNode, dv: ua.DataValue) -> Reading:
        status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode(ua.UInt32(S.Good))
        ts = self._timestamp(dv)
        q = quality_for(status)
        if not status.is_good():
            self.counters.bump(f"status_{status.name}")
        if status.is_bad():  # the value is unknown: flagged, never a plausible number
            return Reading.make(self.device_id, p.name, ts, 0.0, p.unit, q.value)
        raw = dv.Value.Value if dv.Value is not None else None
        try:
            if isinstance(raw, bool):
                value = 1.0 if raw else 0.0
            elif isinstance(raw, int | float):
                value = float(raw)
            else:
                raise WireError(f"not a number: {type(raw).__name__}")
            return Reading.make(self.device_id, p.name, ts, value, p.unit, q.value)
        except WireError as exc:  # NaN, infinity, out of range, a string or an array
            self.counters.rejected += 1
            self.counters.last_error = f"{p.name}: {exc}"
            return Reading.make(self.device_id, p.name, ts, 0.0, p.unit, Quality.FAULT.value)

    def _timestamp(self, dv: ua.DataValue) -> int:
        if self.settings.timestamps == "source":
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            if stamp is not None:
                if stamp.tzinfo is None:  # asyncua gives UTC; be explicit
                    stamp = stamp.replace(tzinfo=dt.UTC)
                ms = int(stamp.timestamp() * 1000)
                if 0 < ms < 253402300800000:
                    return ms
        return now_ms()

    # --- teardown --------------------------------------------------------------------------

    async def _close(self, client: Client) -> None:
        """Close session, channel and socket; asyncua cancels its watchdog, renew and publish tasks.

        On a dead link the CloseSession request cannot be answered: its tasks are cancelled first,
        so a short wait is enough before the socket is dropped (the server expires the session).
        """
        wait = 0.2 if self._link_dead else self.settings.timeout_s
        try:
            await asyncio.wait_for(client.disconnect(), wait)
        except (ua.UaError, OSError, TimeoutError) as exc:
            log.debug("%s: disconnect: %s", self.describe(), exc)
            client.disconnect_socket()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return ua.StatusCode(exc.code).name
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
