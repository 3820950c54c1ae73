"""The gateway's MQTT connection: publishes outbox batches, applies the cloud's acks.

A reusable async service with an explicit state, reconnecting with jittered,
capped backoff. It uses a persistent session (clean_session=False) under a
fixed client id so acks sent while the gateway was away are still delivered.
A batch is removed from the outbox only on the cloud's ack, never on PUBACK.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import ssl
import time
from dataclasses import dataclass

import aiomqtt

from carbonlink.backoff import Backoff
from carbonlink.mqtturl import MqttUrl
from carbonlink.topics import GatewayTopics

from .outbox import Outbox

log = logging.getLogger(__name__)


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass
class UplinkCounters:
    batches_published: int = 0
    readings_published: int = 0  # first publication of each batch only
    resends: int = 0
    batches_acked: int = 0
    readings_acked: int = 0
    batches_refused: int = 0  # the cloud dead-lettered them
    unknown_acks: int = 0
    connects: int = 0
    last_error: str = ""
    highest_seq_published: int = 0  # seqs only increase, so this tells a first send from a resend


class Uplink:
    def __init__(self, outbox: Outbox, topics: GatewayTopics, url: str, *, username: str | None = None,
                 password: str | None = None, keepalive: int = 30, ack_timeout: float = 15.0,
                 max_inflight: int = 8) -> None:
        self.outbox = outbox
        self.topics = topics
        self.url = MqttUrl.parse(url)
        self.username, self.password = username, password
        self.keepalive = keepalive
        self.ack_timeout = ack_timeout
        self.max_inflight = max_inflight
        self.state = LinkState.DISCONNECTED
        self.counters = UplinkCounters()
        self.backoff = Backoff(initial=0.5, cap=30.0)
        self.wakeup = asyncio.Event()  # set when a new batch is cut
        self._inflight: dict[int, float] = {}
        self._failing_since: float | None = None

    async def run(self) -> None:
        while True:
            self.state = LinkState.CONNECTING
            try:
                await self._session()
            except asyncio.CancelledError:
                self.state = LinkState.STOPPED
                raise
            except (aiomqtt.MqttError, OSError) as exc:
                self.counters.last_error = str(exc)
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("broker %s unreachable: %s; buffering in the outbox", self.url, exc)
            self.state = LinkState.BACKOFF
            self._inflight.clear()
            await asyncio.sleep(self.backoff.next_delay())

    def _client(self) -> aiomqtt.Client:
        tls = ssl.create_default_context() if self.url.tls else None
        return aiomqtt.Client(
            self.url.host, self.url.port,
            identifier=f"{self.topics.site}.{self.topics.gateway}",
            username=self.username, password=self.password,
            keepalive=self.keepalive, clean_session=False, tls_context=tls,
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            max_queued_outgoing_messages=10_000,
        )

    async def _session(self) -> None:
        async with self._client() as client:
            await client.subscribe(self.topics.ack, qos=1)
            await client.publish(self.topics.status, b"online", qos=1, retain=True)
            self.state = LinkState.CONNECTED
            self.counters.connects += 1
            if self._failing_since is not None:
                log.info("broker %s reachable again after %.1f s", self.url, time.monotonic() - self._failing_since)
            self._failing_since = None
            self.backoff.reset()
            receiver = asyncio.create_task(self._receive(client))
            try:
                await self._send_loop(client)
            finally:
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
            self.handle_ack(bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b"")

    def handle_ack(self, payload: bytes) -> None:
        try:
            ack = json.loads(payload)
            seq, status = int(ack["seq"]), str(ack["status"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed ack %r", payload[:200])
            self.counters.unknown_acks += 1
            return
        n = self.outbox.ack(seq)
        self._inflight.pop(seq, None)
        if n == 0:
            self.counters.unknown_acks += 1  # a repeat ack, or one for a batch we never sent
            return
        if status == "rejected":
            self.counters.batches_refused += 1
            log.error("cloud refused batch %d: %s", seq, ack.get("reason", "no reason given"))
        else:
            self.counters.batches_acked += 1
            self.counters.readings_acked += n
        self.wakeup.set()

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        while True:
            now = time.monotonic()
            due = [b for b in self.outbox.unacked(limit=self.max_inflight)
                   if b.seq not in self._inflight or now - self._inflight[b.seq] > self.ack_timeout]
            if due:
                await asyncio.gather(*(client.publish(self.topics.telemetry, b.payload, qos=1) for b in due))
                for b in due:
                    if b.seq <= self.counters.highest_seq_published:
                        self.counters.resends += 1
                    else:
                        self.counters.highest_seq_published = b.seq
                        self.counters.batches_published += 1
                        self.counters.readings_published += b.n
                    self._inflight[b.seq] = now
                continue
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=min(1.0, self.ack_timeout))
            except TimeoutError:
                pass
