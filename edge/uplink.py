"""The gateway's MQTT connection: cuts and publishes outbox batches, applies the cloud's acks.

A reusable async service with an explicit state, reconnecting with jittered,
capped backoff. It uses a persistent session (clean_session=False) under a
fixed client id so acks sent while the gateway was away are still delivered.
A batch is removed from the outbox only on the cloud's ack, never on PUBACK.

Sending order on every turn of the loop (see edge/outbox.py for the lanes):
1. resends: cut batches whose ack did not come within ``ack_timeout`` (after a
   reconnect, every unacked batch), oldest seq first. Each further resend of a
   batch waits twice as long (up to 8 ack timeouts, spread per seq), so a
   lagging ingest is not buried under copies of what it has not read yet
   (a reconnect starts the waits over);
2. the live lane: a batch of recent readings once it is big or old enough;
3. the backlog lane: the oldest readings in big batches, under a token-bucket
   rate limit and its own inflight window, so a 24-hour backlog drains steadily
   while live data always finds a free slot.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiomqtt

from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.events import Event
from carbonlink.kernel.mqtturl import MqttConfigError, MqttUrl
from carbonlink.kernel.tasks import failure
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import json_object, now_ms

from .backlog_cutter import BacklogCutter
from .outbox import KeySigner, Outbox, Signer

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
    # Live batches must be acked within this; while they are not, the backlog window halves (down to one
    # batch) and grows back one batch at a time (AIMD, as TCP does with its congestion window). 0: off.
    live_target_ms: float = 500.0

    def live_after_ms(self, now: int | None = None) -> int:
        return (now_ms() if now is None else now) - int(self.live_window_s * 1000)


@dataclass
class UplinkCounters:
    batches_published: int = 0
    readings_published: int = 0  # first publication of each batch only
    resends: int = 0
    batches_acked: int = 0
    readings_acked: int = 0
    batches_refused: int = 0  # the cloud dead-lettered them: quarantined (or dropped loudly when it is full)
    quarantine_overflow: int = 0  # refused batches the full quarantine could not keep
    unknown_acks: int = 0  # repeats (harmless) and acks for seqs never issued
    bogus_acks: int = 0  # acks for seqs never issued, or malformed
    connects: int = 0
    events_sent: int = 0
    events_acked: int = 0
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


# Backlog readings cut per turn of the send loop at most (tens of milliseconds), then the live lane is looked at
# again.
BACKLOG_READINGS_PER_TURN = 20_000
# Acks already queued are applied together, up to this many: one outbox transaction for a burst.
ACK_GROUP = 64
_ACK_STATUSES = ("committed", "duplicate", "rejected")  # the cloud's ingest outcomes, as the firmware reads them
ACK_MAX_BYTES = 4096  # the cloud's acks are small (a refusal's reason is cut at 500 characters)
RESEND_CAP = 8  # a batch waits at most this many ack timeouts (plus its spread) between resends


class Uplink:
    def __init__(self, outbox: Outbox, topics: GatewayTopics, url: str, *, username: str | None = None,
                 password: str | None = None, keepalive: int = 30, ack_timeout: float = 15.0,
                 max_inflight: int = 8, sign: Signer | None = None, policy: DeliveryPolicy | None = None,
                 subscriptions: tuple[str, ...] = (), on_message: MessageHandler | None = None,
                 on_connect: OnConnect | None = None, sign_event: Callable[[Event], Event] | None = None,
                 quarantine_max: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.topics = topics
        self.url = MqttUrl.parse(url)
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.policy = policy or DeliveryPolicy(live_inflight=max(1, max_inflight // 2), backlog_inflight=max_inflight)
        self.sign = sign  # without a signer the uplink only sends batches cut by someone else
        # Events are signed as they leave (deterministic signatures: a resend is the same bytes).
        self.sign_event = sign_event or (sign.event if isinstance(sign, KeySigner) else None)
        self.quarantine_max = quarantine_max
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
        self._resends: dict[int, int] = {}  # seq → times sent again on this connection; gone with the ack
        self._events_inflight: dict[str, float] = {}
        self.clock = clock  # monotonic seconds, for the backlog window's pacing
        self.on_store_error: Callable[[sqlite3.Error], None] | None = None  # the agent repairs the outbox
        self._publishing: set[asyncio.Task[None]] = set()
        self._publish_error: BaseException | None = None
        self._cutter: BacklogCutter | None = None  # the backlog's own connections, used from worker threads
        self.backlog_window = float(self.policy.backlog_inflight)  # adapted to the live lane's ack time
        self._window_cut_at = 0.0
        self._live_acked_at = 0.0
        self._live_rtt = 0.0  # the last live ack's round trip, seconds
        self._bucket = _Bucket(self.policy.backlog_rate)
        self._failing_since: float | None = None
        self._outbox_failing: str | None = None

    async def run(self) -> None:
        while True:
            self.state = LinkState.CONNECTING
            try:
                await self._session()
            except asyncio.CancelledError:
                self.state = LinkState.STOPPED
                self.close_cutter()
                raise
            except (aiomqtt.MqttError, OSError, MqttConfigError) as exc:  # MqttConfigError: a TLS file gone
                self.counters.last_error = str(exc)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("broker %s unreachable: %s; buffering in the outbox", self.url, exc)
            except sqlite3.Error as exc:  # the local store, not the link: the agent repairs or replaces it
                self.counters.last_error = f"outbox: {exc}"
                if self.on_store_error is not None:
                    self.on_store_error(exc)
                if self._outbox_failing is None:
                    self._outbox_failing = str(exc)
                    log.error("cannot read batches from the outbox %s (%s); sending pauses until it works",
                              self.outbox.path, exc)
            self.client = None
            self.state = LinkState.BACKOFF
            self._inflight.clear()
            self._resends.clear()  # a new session: what was sent may be gone, the waits start over
            self._events_inflight.clear()
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
            if self._outbox_failing is not None:
                self.outbox.next_seq()  # raises while it still fails
                log.info("the outbox %s can be read again; sending resumes", self.outbox.path)
                self._outbox_failing = None
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
                for task in list(self._publishing):
                    task.cancel()
                self._publish_error = None
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
        messages = client.messages
        acks: list[bytes] = []
        try:
            async for message in messages:
                payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
                topic = str(message.topic)
                if topic == self.topics.ack:
                    acks.append(payload)
                    if len(messages) and len(acks) < ACK_GROUP:
                        continue  # more messages already queued: their acks are applied together
                    burst, acks = acks, []
                    self.handle_acks(burst)
                elif self.on_message is not None:
                    if acks:  # in arrival order
                        burst, acks = acks, []
                        self.handle_acks(burst)
                    try:
                        await self.on_message(topic, payload)
                    except Exception:  # a control-message bug must not stop acks from being applied
                        log.exception("handling %s failed", topic)
        finally:
            if acks:  # the connection ended (or we are stopping) with acks still held: apply them
                try:
                    self.handle_acks(acks)
                except sqlite3.Error as exc:  # not applied: those batches are only sent again
                    log.warning("%d acks could not be applied (%s); their batches will be sent again",
                                len(acks), exc)

    def handle_ack(self, payload: bytes) -> None:
        self.handle_acks([payload])

    def handle_acks(self, payloads: list[bytes]) -> None:
        """Apply a burst of acks in arrival order; the batches the cloud committed are forgotten together.

        One outbox transaction for the burst's committed batches (``Outbox.ack_many``) rather than one per
        batch: all or nothing, so a crash before it commits only means those batches are sent again and
        the cloud acks them as duplicates. A refusal or an event ack first applies the committed acks that
        came before it, so the outcome is the same as applying the acks one by one.
        """
        committed: list[int] = []
        for payload in payloads:
            ack = json_object(payload, ACK_MAX_BYTES)
            try:
                if ack is None:
                    raise ValueError("not a JSON object")
                if "event" in ack and "seq" not in ack:
                    self._forget(committed)
                    self._event_ack(str(ack["event"]), str(ack["status"]), str(ack.get("reason", "")))
                    continue
                seq, status = ack["seq"], str(ack["status"])
                if type(seq) is not int:  # the cloud writes an integer: true, 1.9 or "1" would ack batch 1
                    raise TypeError("seq is not an integer")
                if status not in _ACK_STATUSES:  # an unknown word must not make the gateway forget a batch
                    raise ValueError(f"unknown ack status {status!r}")
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed ack %r", payload[:200])
                self.counters.unknown_acks += 1
                self.counters.bogus_acks += 1
                continue
            if status == "rejected":
                self._forget(committed)
                self._refused(seq, str(ack.get("reason", "no reason given"))[:2000])
                continue
            committed.append(seq)
        self._forget(committed)

    def _forget(self, seqs: list[int]) -> None:
        """The batches the cloud committed (in ack order, repeats included): out of the outbox, then out of flight.
        Empties ``seqs``, so the caller goes on collecting the acks after a refusal or an event ack."""
        if not seqs:
            return
        counts = self.outbox.ack_many(seqs)
        for seq in seqs:
            n = counts.pop(seq, 0)  # a seq twice in the burst: the second is a repeat
            sent = self._inflight.pop(seq, None)
            self._resends.pop(seq, None)
            if n == 0:
                self._unknown(seq)
                continue
            if sent is not None:
                self._adapt(sent[1], time.monotonic() - sent[0])
            self.counters.batches_acked += 1
            self.counters.readings_acked += n
            self.wakeup.set()
        seqs.clear()

    def _adapt(self, lane: str, rtt: float) -> None:
        """AIMD on the backlog window from the live lane's ack time: live data is never starved.

        While live acks come back in under a quarter of the target (no queue in front of them), every ack,
        backlog ones included, widens the window by a batch: it doubles each round trip, as TCP's slow start
        does, instead of growing by one batch per live ack (a live batch a second, by default).
        """
        p = self.policy
        now = self.clock()
        if p.live_target_ms <= 0:
            self.backlog_window = float(p.backlog_inflight)
            return
        if lane == "live":
            self._live_acked_at, self._live_rtt = now, rtt
            if rtt * 1000 > p.live_target_ms:
                if now - self._window_cut_at > rtt:  # once per round trip, not once per late ack
                    self.backlog_window = max(1.0, self.backlog_window / 2)
                    self._window_cut_at = now
                return
            if rtt * 1000 > p.live_target_ms / 2:
                return  # close to the target: hold
        elif now - self._live_acked_at < 2.0 and self._live_rtt * 1000 > p.live_target_ms / 4:
            return  # live data flows and queues a little: only its acks may widen the window
        self.backlog_window = min(float(p.backlog_inflight), self.backlog_window + 1)

    def _unknown(self, seq: int) -> None:
        self.counters.unknown_acks += 1
        next_seq = self.outbox.next_seq()
        if seq >= next_seq:
            # Never issued: someone else is acking for us, or the cloud mixed gateways up.
            self.counters.bogus_acks += 1
            log.warning("ack for seq %d, which this gateway never issued (next is %d); ignored", seq, next_seq)
            self.outbox.add_event("uplink.unknown_ack", severity="warning", body={"seq": seq, "next_seq": next_seq})
        # otherwise a repeat ack (the batch was delivered twice, or is already quarantined): nothing to do

    def _refused(self, seq: int, reason: str) -> None:
        """The cloud can never accept this batch: keep it in the quarantine for an operator, never delete it."""
        result = self.outbox.quarantine(seq, reason, max_entries=self.quarantine_max)
        self._inflight.pop(seq, None)
        self._resends.pop(seq, None)
        if result is None:
            self._unknown(seq)
            return
        self.counters.batches_refused += 1
        body = {"seq": seq, "readings": result.n, "reason": reason[:1000], "quarantine_id": result.id,
                "quarantined": result.size, "max": self.quarantine_max}
        if result.kept:
            log.error("cloud refused batch %d (%d readings): %s; kept in quarantine as #%s (list or resend with"
                      " `carbonlink edge quarantine list|resend`)", seq, result.n, reason, result.id)
            self.outbox.add_event("outbox.quarantined", severity="warning", body=body)
        else:
            self.counters.quarantine_overflow += 1
            log.error("cloud refused batch %d (%d readings): %s; the quarantine is FULL (%d batches, the oldest"
                      " are kept) so this batch is DROPPED (%d dropped so far). Resend or drop quarantined"
                      " batches (`carbonlink edge quarantine list`), or raise outbox.quarantine_max.",
                      seq, result.n, reason, result.size, result.overflow_total)
            self.outbox.add_event("outbox.quarantine_full", severity="critical",
                                  body={**body, "dropped_total": result.overflow_total})
        self.wakeup.set()

    def _event_ack(self, event_id: str, status: str, reason: str) -> None:
        self._events_inflight.pop(event_id, None)
        if not self.outbox.event_done(event_id):
            return  # a repeat
        if status == "rejected":  # only a bug of ours: an event is checked when it is made
            log.error("cloud refused event %s: %s; dropped", event_id, reason)
        else:
            self.counters.events_acked += 1

    def forget_inflight(self) -> None:
        """The outbox was replaced: what was in flight is the old file's; the new one is sent afresh."""
        self._inflight.clear()
        self._resends.clear()
        self._events_inflight.clear()
        self.wakeup.set()

    def _lane_load(self, lane: str) -> int:
        return sum(1 for _, ln in self._inflight.values() if ln == lane)

    async def _cut(self, now_wall: int) -> list[tuple[int, int, bytes, str]]:
        """Cut what the windows allow: live first, then backlog under the rate limit.

        Backlog batches are cut in a worker thread: the event loop keeps running device sessions, so
        polling and live readings keep their pace during a drain.
        """
        if self.sign is None:
            return []
        p = self.policy
        out: list[tuple[int, int, bytes, str]] = []
        live_after = p.live_after_ms(now_wall)
        while self._lane_load("live") + sum(1 for b in out if b[3] == "live") < p.live_inflight:
            n, oldest_added = self.outbox.pending_summary("live", live_after)
            if n == 0:
                break
            oldest = oldest_added or now_wall
            if not (self.flush or n >= p.live_max_readings or now_wall - oldest >= p.live_max_age_s * 1000):
                break
            b = self.outbox.cut_batch(p.live_max_readings, self.sign, lane="live", live_after_ms=live_after)
            if b is None:
                break
            out.append((b.seq, b.n, b.payload, "live"))
        if self._bucket.rate != p.backlog_rate:
            self._bucket = _Bucket(p.backlog_rate)
        window = min(p.backlog_inflight, int(self.backlog_window)) if p.live_target_ms > 0 else p.backlog_inflight
        free = window - self._lane_load("backlog")
        if free <= 0:
            return out
        size = p.backlog_max_readings
        count = max(1, min(free, BACKLOG_READINGS_PER_TURN // size))
        if p.backlog_rate > 0:
            tokens = self._bucket.refill()
            if tokens < min(size, p.backlog_rate) * 0.5:
                return out
            size = max(1, min(size, int(tokens)))
            count = max(1, min(count, int(tokens) // size))
        # Tens of milliseconds of reading, joining, signing and committing: in worker threads on connections of
        # their own (the next cut's reading overlaps this one's commit), so the event loop keeps polling
        # devices and cutting live batches meanwhile.
        for b in await asyncio.to_thread(self._backlog_cutter().cut, count, size, self.sign,
                                         live_after_ms=live_after):
            if p.backlog_rate > 0:
                self._bucket.tokens -= b.n
            out.append((b.seq, b.n, b.payload, "backlog"))
        return out

    def _backlog_cutter(self) -> BacklogCutter:
        if self._cutter is None or self._cutter.outbox is not self.outbox:  # first use, or the outbox was replaced
            self.close_cutter()
            self._cutter = BacklogCutter(self.outbox)
        return self._cutter

    def close_cutter(self) -> None:
        if self._cutter is not None:
            self._cutter.close()
            self._cutter = None

    async def _send_loop(self, client: aiomqtt.Client, receiver: asyncio.Task[None]) -> None:
        while True:
            if receiver.done():  # the connection died under the receiver: let run() reconnect
                receiver.result()
                raise aiomqtt.MqttError("message stream ended")
            if self._publish_error is not None:
                error, self._publish_error = self._publish_error, None
                raise error
            now = time.monotonic()
            window = self.policy.live_inflight + self.policy.backlog_inflight
            # Poll the heads only: reading every unacked payload on each turn cost more than cutting them.
            due = [(seq, n, payload, lane) for seq, n, lane in self._due(now, window)
                   if (payload := self.outbox.payload(seq)) is not None]
            fresh = await self._cut(now_ms()) if len(self._inflight) + len(due) < window else []
            batch = due + fresh
            for seq, n, payload, lane in batch:
                if seq <= self.counters.highest_seq_published:
                    self.counters.resends += 1
                    self._resends[seq] = self._resends.get(seq, 0) + 1
                else:
                    self.counters.highest_seq_published = seq
                    self.counters.batches_published += 1
                    self.counters.readings_published += n
                    self.counters.lanes[lane] = self.counters.lanes.get(lane, 0) + n
                # In flight before it is published: its ack may come back before the broker's PUBACK does.
                self._inflight[seq] = (now, lane)
                # Not awaited here: a big backlog batch on its way must not hold up the next live cut.
                task = asyncio.create_task(client.publish(self.topics.telemetry, payload, qos=1))
                self._publishing.add(task)
                task.add_done_callback(self._published)
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

    def resend_wait(self, seq: int) -> float:
        """Seconds an unacked batch waits for its ack before it is sent again.

        The ack timeout first; then doubling with each resend up to RESEND_CAP timeouts, spread by up to
        20 % per seq so a fleet's resends do not arrive in waves. A broker that dropped the batch (Mosquitto's
        queue limit drops silently) still gets it again; an ingest that is only slow is not sent copies faster
        than it can read them.
        """
        k = self._resends.get(seq, 0)
        if k == 0:
            return self.ack_timeout
        return self.ack_timeout * min(2 ** k, RESEND_CAP) * (1.0 + (seq * 2654435761 % 1000) / 5000)

    def _due(self, now: float, limit: int) -> list[tuple[int, int, str]]:
        """Unacked batches to send now: never sent on this connection, or past their resend wait."""
        heads = self.outbox.unacked_heads(limit=limit)
        if len(self._resends) > 4 * max(limit, 1000):  # batches gone another way (quarantine, a new outbox)
            live = {seq for seq, _, _ in heads} | self._inflight.keys()
            self._resends = {seq: k for seq, k in self._resends.items() if seq in live}
        return [(seq, n, lane) for seq, n, lane in heads
                if seq not in self._inflight or now - self._inflight[seq][0] > self.resend_wait(seq)]

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if (exc := failure(task)) is not None:
            self._publish_error = exc
            self.wakeup.set()

    async def _send_events(self, client: aiomqtt.Client) -> None:
        """Publish the events not in flight (or whose ack is overdue); the cloud's ack removes them."""
        if self.sign_event is None:
            return
        now = time.monotonic()
        for event in self.outbox.events():
            sent = self._events_inflight.get(event.id)
            if sent is not None and now - sent <= self.ack_timeout:
                continue
            await client.publish(self.topics.events, self.sign_event(event).to_bytes(), qos=1)
            self._events_inflight[event.id] = now
            self.counters.events_sent += 1
