"""The gateway's MQTT connection: cuts and publishes outbox batches, applies the cloud's acks.

A reusable async service with an explicit state, reconnecting with jittered,
capped backoff. It uses a persistent session (clean_session=False) under a
fixed client id so acks sent while the gateway was away are still delivered.
A batch is removed from the outbox only on the cloud's ack, never on PUBACK.

Sending order on every turn of the loop (see edge/outbox.py for the lanes):
1. resends: cut batches whose ack did not come within ``ack_timeout`` (after a
   reconnect, every unacked batch), oldest seq first;
2. the live lane: a batch of recent readings once it is big or old enough;
3. the backlog lane: the oldest readings in big batches, under a token-bucket
   rate limit and its own inflight window, so a 24-hour backlog drains steadily
   while live data always finds a free slot.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt

from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.mqtturl import MqttConfigError, MqttUrl
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import now_ms

from .outbox import Outbox, Signer

log = logging.getLogger(__name__)

# Extra messages (shadow, commands) are handed to this; the uplink only knows acks.
MessageHandler = Callable[[str, bytes], Awaitable[None]]
OnConnect = Callable[[aiomqtt.Client], Awaitable[None]]


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass
class DeliveryPolicy:
    """How batches are cut and paced; mutable so a shadow update can change it live."""

    live_max_readings: int = 500
    live_max_age_s: float = 1.0
    live_window_s: float = 30.0  # readings waiting longer than this are backlog
    live_inflight: int = 4
    backlog_max_readings: int = 5000
    backlog_inflight: int = 8
    backlog_rate: float = 5000.0  # readings/s; 0 means no limit

    def live_after_ms(self, now: int | None = None) -> int:
        return (now_ms() if now is None else now) - int(self.live_window_s * 1000)


@dataclass
class UplinkCounters:
    batches_published: int = 0
    readings_published: int = 0  # first publication of each batch only
    resends: int = 0
    batches_acked: int = 0
    readings_acked: int = 0
    batches_refused: int = 0  # the cloud dead-lettered them
    unknown_acks: int = 0  # repeats (harmless) and acks for seqs never issued
    bogus_acks: int = 0  # acks for seqs never issued, or malformed
    connects: int = 0
    events_sent: int = 0
    last_error: str = ""
    highest_seq_published: int = 0
    lanes: dict[str, int] = field(default_factory=lambda: {"live": 0, "backlog": 0})


@dataclass
class _Bucket:
    rate: float
    tokens: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def refill(self) -> float:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)  # at most 1 s of burst
        self.stamp = now
        return self.tokens


class Uplink:
    def __init__(self, outbox: Outbox, topics: GatewayTopics, url: str, *, username: str | None = None,
                 password: str | None = None, keepalive: int = 30, ack_timeout: float = 15.0,
                 max_inflight: int = 8, sign: Signer | None = None, policy: DeliveryPolicy | None = None,
                 subscriptions: tuple[str, ...] = (), on_message: MessageHandler | None = None,
                 on_connect: OnConnect | None = None) -> None:
        self.outbox = outbox
        self.topics = topics
        self.url = MqttUrl.parse(url)
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.policy = policy or DeliveryPolicy(live_inflight=max(1, max_inflight // 2), backlog_inflight=max_inflight)
        self.sign = sign  # without a signer the uplink only sends batches cut by someone else
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_connect = on_connect
        self.state = LinkState.DISCONNECTED
        self.counters = UplinkCounters()
        self.backoff = Backoff(initial=0.5, cap=30.0)
        self.wakeup = asyncio.Event()  # new readings, an ack, a policy change
        self.flush = False  # cut live readings regardless of age (shutdown drain)
        self.client: aiomqtt.Client | None = None
        self._inflight: dict[int, tuple[float, str]] = {}
        self._bucket = _Bucket(self.policy.backlog_rate)
        self._failing_since: float | None = None

    async def run(self) -> None:
        while True:
            self.state = LinkState.CONNECTING
            try:
                await self._session()
            except asyncio.CancelledError:
                self.state = LinkState.STOPPED
                raise
            except (aiomqtt.MqttError, OSError, MqttConfigError) as exc:  # MqttConfigError: a TLS file gone
                self.counters.last_error = str(exc)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("broker %s unreachable: %s; buffering in the outbox", self.url, exc)
            self.client = None
            self.state = LinkState.BACKOFF
            self._inflight.clear()
            await asyncio.sleep(self.backoff.next_delay())

    def _client(self) -> aiomqtt.Client:
        conn = self.url.client_kwargs()  # host, port, TLS (cafile, client certificate) from the URL
        return aiomqtt.Client(
            conn["hostname"], conn["port"],
            identifier=f"{self.topics.site}.{self.topics.gateway}",
            username=self.username or self.url.username, password=self.password or self.url.password,
            keepalive=self.keepalive, clean_session=False, tls_context=conn["tls_context"],
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            max_queued_outgoing_messages=10_000,
        )

    async def _session(self) -> None:
        async with self._client() as client:
            await client.subscribe(self.topics.ack, qos=1)
            for t in self.subscriptions:
                await client.subscribe(t, qos=1)
            await client.publish(self.topics.status, b"online", qos=1, retain=True)
            self.client = client
            self.state = LinkState.CONNECTED
            self.counters.connects += 1
            if self._failing_since is not None:
                log.info("broker %s reachable again after %.1f s", self.url, time.monotonic() - self._failing_since)
            self._failing_since = None
            self.backoff.reset()
            receiver = asyncio.create_task(self._receive(client))
            try:
                if self.on_connect is not None:
                    await self.on_connect(client)
                await self._send_loop(client, receiver)
            finally:
                self.client = None
                receiver.cancel()
                try:
                    await receiver
                except (asyncio.CancelledError, aiomqtt.MqttError):
                    pass
                # Say goodbye cleanly when we are being stopped: the last will is for crashes.
                try:
                    await asyncio.wait_for(client.publish(self.topics.status, b"offline", qos=1, retain=True), 1)
                except (aiomqtt.MqttError, TimeoutError, asyncio.CancelledError):
                    pass

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
            topic = str(message.topic)
            if topic == self.topics.ack:
                self.handle_ack(payload)
            elif self.on_message is not None:
                try:
                    await self.on_message(topic, payload)
                except Exception:  # a control-message bug must not stop acks from being applied
                    log.exception("handling %s failed", topic)

    def handle_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            seq, status = int(ack["seq"]), str(ack["status"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed ack %r", payload[:200])
            self.counters.unknown_acks += 1
            self.counters.bogus_acks += 1
            return
        n = self.outbox.ack(seq)
        self._inflight.pop(seq, None)
        if n == 0:
            self.counters.unknown_acks += 1
            if seq >= self.outbox.next_seq():
                # Never issued: someone else is acking for us, or the cloud mixed gateways up.
                self.counters.bogus_acks += 1
                log.warning("ack for seq %d, which this gateway never issued (next is %d); ignored",
                            seq, self.outbox.next_seq())
                self.outbox.add_event({"type": "unknown_ack", "seq": seq, "next_seq": self.outbox.next_seq()})
            return  # otherwise a repeat ack (the batch was delivered twice): nothing to do
        if status == "rejected":
            self.counters.batches_refused += 1
            log.error("cloud refused batch %d: %s", seq, ack.get("reason", "no reason given"))
        else:
            self.counters.batches_acked += 1
            self.counters.readings_acked += n
        self.wakeup.set()

    def _lane_load(self, lane: str) -> int:
        return sum(1 for _, ln in self._inflight.values() if ln == lane)

    def _cut(self, now_wall: int) -> list[tuple[int, int, bytes, str]]:
        """Cut what the windows allow: live first, then backlog under the rate limit."""
        if self.sign is None:
            return []
        p = self.policy
        out: list[tuple[int, int, bytes, str]] = []
        live_after = p.live_after_ms(now_wall)
        while self._lane_load("live") + sum(1 for b in out if b[3] == "live") < p.live_inflight:
            n = self.outbox.pending_count("live", live_after)
            if n == 0:
                break
            oldest = self.outbox.oldest_pending_ms("live", live_after) or now_wall
            if not (self.flush or n >= p.live_max_readings or now_wall - oldest >= p.live_max_age_s * 1000):
                break
            b = self.outbox.cut_batch(p.live_max_readings, self.sign, lane="live", live_after_ms=live_after)
            if b is None:
                break
            out.append((b.seq, b.n, b.payload, "live"))
        if self._bucket.rate != p.backlog_rate:
            self._bucket = _Bucket(p.backlog_rate)
        while self._lane_load("backlog") + sum(1 for b in out if b[3] == "backlog") < p.backlog_inflight:
            size = p.backlog_max_readings
            if p.backlog_rate > 0:
                tokens = self._bucket.refill()
                if tokens < min(size, p.backlog_rate) * 0.5:
                    break
                size = max(1, min(size, int(tokens)))
            b = self.outbox.cut_batch(size, self.sign, lane="backlog", live_after_ms=live_after)
            if b is None:
                break
            if p.backlog_rate > 0:
                self._bucket.tokens -= b.n
            out.append((b.seq, b.n, b.payload, "backlog"))
        return out

    async def _send_loop(self, client: aiomqtt.Client, receiver: asyncio.Task[None]) -> None:
        while True:
            if receiver.done():  # the connection died under the receiver: let run() reconnect
                receiver.result()
                raise aiomqtt.MqttError("message stream ended")
            now = time.monotonic()
            window = self.policy.live_inflight + self.policy.backlog_inflight
            due = [(b.seq, b.n, b.payload, b.lane) for b in self.outbox.unacked(limit=window)
                   if b.seq not in self._inflight or now - self._inflight[b.seq][0] > self.ack_timeout]
            fresh = self._cut(now_ms()) if len(self._inflight) + len(due) < window else []
            batch = due + fresh
            if batch:
                await asyncio.gather(*(client.publish(self.topics.telemetry, payload, qos=1)
                                       for _, _, payload, _ in batch))
                for seq, n, _, lane in batch:
                    if seq <= self.counters.highest_seq_published:
                        self.counters.resends += 1
                    else:
                        self.counters.highest_seq_published = seq
                        self.counters.batches_published += 1
                        self.counters.readings_published += n
                        self.counters.lanes[lane] = self.counters.lanes.get(lane, 0) + n
                    self._inflight[seq] = (now, lane)
            await self._send_events(client)
            if batch:
                continue
            self.wakeup.clear()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation that
                # coincides with the wakeup, and the agent then never stops.
                async with asyncio.timeout(min(0.2, self.ack_timeout)):
                    await self.wakeup.wait()
            except TimeoutError:
                pass

    async def _send_events(self, client: aiomqtt.Client) -> None:
        for event_id, body in self.outbox.events():
            await client.publish(self.topics.events, body, qos=1)
            self.outbox.event_sent(event_id)
            self.counters.events_sent += 1
