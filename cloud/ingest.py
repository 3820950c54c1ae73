"""Ingest: verify, commit, then acknowledge; every bad message becomes a dead letter.

The order matters: the ack goes out only after the commit, so a gateway deletes
a batch from its outbox only once the cloud really has it. Ingest never crashes
on input: anything it cannot use is stored with the reason and the raw bytes.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carbonlink import topics
from carbonlink.backoff import Backoff
from carbonlink.mqtturl import MqttUrl
from carbonlink.wire import MAX_BATCH_BYTES, SigAlg, WireError, now_ms, parse_batch, verify_batch

from .store import GatewayRecord, Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]


class Outcome(enum.StrEnum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


@dataclass
class IngestCounters:
    messages: int = 0
    batches_committed: int = 0
    batches_duplicate: int = 0
    readings_stored: int = 0
    readings_duplicate: int = 0
    rejected_messages: int = 0
    rejected_readings: int = 0  # readings inside refused batches, where the count was known
    connects: int = 0


class IngestProcessor:
    """Message in, outcome out. Transport-free so it can be tested and reused by every worker."""

    def __init__(self, store: Store, publish: Publish | None = None, key_cache_s: float = 10.0) -> None:
        self.store = store
        self.publish = publish
        self.counters = IngestCounters()
        self._keys: dict[str, tuple[float, GatewayRecord | None, Ed25519PublicKey | bytes | None]] = {}
        self.key_cache_s = key_cache_s

    async def _gateway(self, gateway_id: str) -> tuple[GatewayRecord | None, Ed25519PublicKey | bytes | None]:
        hit = self._keys.get(gateway_id)
        if hit and time.monotonic() - hit[0] < self.key_cache_s:
            return hit[1], hit[2]
        rec = await self.store.get_gateway(gateway_id)
        key: Ed25519PublicKey | bytes | None = None
        if rec is not None:
            key = (Ed25519PublicKey.from_public_bytes(bytes.fromhex(rec.key)) if rec.alg == SigAlg.ED25519
                   else bytes.fromhex(rec.key))
        self._keys[gateway_id] = (time.monotonic(), rec, key)
        return rec, key

    def forget_key(self, gateway_id: str) -> None:
        self._keys.pop(gateway_id, None)

    async def handle(self, topic: str, raw: bytes) -> Outcome:
        self.counters.messages += 1
        received = now_ms()
        parts = topics.split(topic)
        topic_gw = parts[1] if parts else None
        seq: int | None = None
        n_readings = 0
        try:
            if parts is None or parts[2] != topics.TELEMETRY:
                raise WireError(f"topic {topic!r} is not a telemetry topic cl/{{site}}/{{gateway}}/telemetry")
            if len(raw) > MAX_BATCH_BYTES:
                raise WireError(f"message is {len(raw)} bytes, over the {MAX_BATCH_BYTES}-byte limit")
            batch = parse_batch(raw)
            seq, n_readings = batch.seq, len(batch.readings)
            if batch.gateway != topic_gw:
                raise WireError(f"batch says gateway {batch.gateway!r} but arrived on {topic_gw!r}'s topic")
            rec, key = await self._gateway(batch.gateway)
            if rec is None or key is None:
                raise WireError(f"gateway {batch.gateway!r} is not registered")
            if rec.revoked:
                raise WireError(f"gateway {batch.gateway!r} is revoked")
            if rec.site != parts[0]:
                raise WireError(f"gateway {batch.gateway!r} belongs to site {rec.site!r}, not {parts[0]!r}")
            verify_batch(batch, key, raw)
        except WireError as exc:
            await self._reject(topic, raw, str(exc), topic_gw, received, seq, n_readings, parts)
            return Outcome.REJECTED
        result = await self.store.commit_batch(batch, raw, received)
        if result.status == "conflict":
            await self._reject(topic, raw, f"seq {batch.seq} was already committed with different content"
                               " (a replay, or a gateway that lost its outbox state)", topic_gw, received,
                               batch.seq, n_readings, parts)
            return Outcome.REJECTED
        if result.status == "duplicate":
            self.counters.batches_duplicate += 1
            self.counters.readings_duplicate += n_readings
            outcome = Outcome.DUPLICATE
        else:
            self.counters.batches_committed += 1
            self.counters.readings_stored += result.inserted
            self.counters.readings_duplicate += result.duplicates
            outcome = Outcome.COMMITTED
        await self._ack(parts, {"seq": batch.seq, "status": outcome.value})
        return outcome

    async def _reject(self, topic: str, raw: bytes, reason: str, gateway: str | None, received: int,
                      seq: int | None, n: int, parts: tuple[str, str, str] | None) -> None:
        self.counters.rejected_messages += 1
        self.counters.rejected_readings += n
        log.warning("dead letter from %s: %s", topic, reason)
        await self.store.dead_letter(topic, raw, reason, gateway, received)
        if seq is not None:
            # Tell the sender so it stops resending a batch that can never be accepted.
            await self._ack(parts, {"seq": seq, "status": "rejected", "reason": reason[:500]})

    async def _ack(self, parts: tuple[str, str, str] | None, body: dict[str, object]) -> None:
        if self.publish is None or parts is None:
            return
        ack_topic = f"{topics.ROOT}/{parts[0]}/{parts[1]}/{topics.ACK}"
        await self.publish(ack_topic, json.dumps(body, separators=(",", ":")).encode())

    async def handle_status(self, topic: str, raw: bytes) -> None:
        parts = topics.split(topic)
        status = raw.decode("utf-8", "replace").strip()
        if parts and status in ("online", "offline"):
            await self.store.set_gateway_status(parts[1], status, now_ms())


class IngestService:
    """Subscribes to all telemetry on a broker and feeds the processor; reconnects forever."""

    def __init__(self, store: Store, url: str, *, client_id: str = "carbonlink-ingest",
                 shared_group: str | None = None) -> None:
        self.store = store
        self.url = MqttUrl.parse(url)
        self.client_id = client_id
        self.shared_group = shared_group  # MQTT 5 shared subscription ($share/group/...) on Mosquitto
        self.processor = IngestProcessor(store)
        self.state = "disconnected"
        self.connected = asyncio.Event()
        self.backoff = Backoff(initial=0.2, cap=10.0)

    @property
    def counters(self) -> IngestCounters:
        return self.processor.counters

    async def run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                self.state = "connecting"
                async with aiomqtt.Client(self.url.host, self.url.port, identifier=self.client_id,
                                          clean_session=False, keepalive=30,
                                          max_queued_incoming_messages=100_000) as client:
                    async def publish(topic: str, payload: bytes) -> None:
                        await client.publish(topic, payload, qos=1)

                    self.processor.publish = publish
                    telemetry = topics.ALL_TELEMETRY
                    if self.shared_group:
                        telemetry = f"$share/{self.shared_group}/{telemetry}"
                    await client.subscribe(telemetry, qos=1)
                    await client.subscribe(topics.ALL_STATUS, qos=1)
                    self.state = "connected"
                    self.counters.connects += 1
                    self.backoff.reset()
                    if failing_since is not None:
                        log.info("ingest reconnected to %s after %.1f s", self.url, time.monotonic() - failing_since)
                        failing_since = None
                    self.connected.set()
                    async for message in client.messages:
                        raw = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                        t = str(message.topic)
                        if t.endswith("/" + topics.STATUS):
                            await self.processor.handle_status(t, bytes(raw))
                        else:
                            await self.processor.handle(t, bytes(raw))
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.state = "backoff"
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("ingest lost broker %s: %s; retrying", self.url, exc)
                await asyncio.sleep(self.backoff.next_delay())
