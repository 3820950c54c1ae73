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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carbonlink.kernel import topics
from carbonlink.kernel.backoff import Backoff
from carbonlink.kernel.mqtturl import MqttUrl
from carbonlink.kernel.wire import MAX_BATCH_BYTES, Batch, SigAlg, WireError, now_ms, parse_batch, verify_batch

from .batchparse import FastParser
from .store import GatewayRecord, PendingBatch, Store

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
VerifyKey = Ed25519PublicKey | bytes


def verify_with_any(batch: Batch, keys: list[VerifyKey], raw: bytes) -> None:
    """Verify against the current key, then against keys retired by a recent rotation."""
    error: WireError | None = None
    for key in keys:
        try:
            verify_batch(batch, key, raw)
            return
        except WireError as exc:
            error = error or exc
    raise error or WireError("no key to verify with")


class _Refused(Exception):
    def __init__(self, reason: str, seq: int | None, n: int) -> None:
        super().__init__(reason)
        self.reason, self.seq, self.n = reason, seq, n


def _verify_ed25519(keys: list[VerifyKey], sig: str, signed: bytes) -> bool:
    sig_bytes = bytes.fromhex(sig)
    for key in keys:
        if isinstance(key, Ed25519PublicKey):
            try:
                key.verify(sig_bytes, signed)
                return True
            except InvalidSignature:
                continue
    return False


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
        self._keys: dict[str, tuple[float, GatewayRecord | None, list[VerifyKey]]] = {}
        self.key_cache_s = key_cache_s
        self._fast = FastParser()

    async def _gateway(self, gateway_id: str) -> tuple[GatewayRecord | None, list[VerifyKey]]:
        """The gateway's record and its usable keys: the current one first, then recently rotated ones."""
        hit = self._keys.get(gateway_id)
        if hit and time.monotonic() - hit[0] < self.key_cache_s:
            return hit[1], hit[2]
        rec = await self.store.get_gateway(gateway_id)
        keys: list[VerifyKey] = []
        if rec is not None:
            for text in (rec.key, *rec.previous_keys):
                keys.append(Ed25519PublicKey.from_public_bytes(bytes.fromhex(text)) if rec.alg == SigAlg.ED25519
                            else bytes.fromhex(text))
        self._keys[gateway_id] = (time.monotonic(), rec, keys)
        return rec, keys

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
            rec, keys = await self._gateway(batch.gateway)
            if rec is None or not keys:
                raise WireError(f"gateway {batch.gateway!r} is not registered")
            if rec.revoked:
                raise WireError(f"gateway {batch.gateway!r} is revoked")
            if rec.site != parts[0]:
                raise WireError(f"gateway {batch.gateway!r} belongs to site {rec.site!r}, not {parts[0]!r}")
            verify_with_any(batch, keys, raw)
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

    # --- group commit: the throughput path (bench/ingest.py) ----------------------------------------
    # Same checks, same dead letters and same acks as handle(), but every good batch of a group goes
    # into one transaction (one COPY), and the acks go out after that commit.

    async def handle_many(self, messages: list[tuple[str, bytes]]) -> list[Outcome]:
        outcomes: list[Outcome] = [Outcome.REJECTED] * len(messages)
        pending: list[tuple[int, PendingBatch, tuple[str, str, str]]] = []
        for i, (topic, raw) in enumerate(messages):
            self.counters.messages += 1
            received = now_ms()
            parts = topics.split(topic)
            try:
                item = await self._prepare(topic, raw, received, parts)
            except _Refused as exc:
                await self._reject(topic, raw, exc.reason, parts[1] if parts else None, received, exc.seq, exc.n,
                                   parts)
                continue
            assert parts is not None  # _prepare refuses anything else
            pending.append((i, item, parts))
        results = await self.store.commit_many([p for _, p, _ in pending]) if pending else []
        acks: list[tuple[tuple[str, str, str], dict[str, object]]] = []
        for (i, item, parts), result in zip(pending, results, strict=True):
            n = len(item.rows)
            if result.status == "conflict":
                await self._reject(f"{topics.ROOT}/{parts[0]}/{parts[1]}/{parts[2]}", item.raw,
                                   f"seq {item.seq} was already committed with different content"
                                   " (a replay, or a gateway that lost its outbox state)", item.gateway,
                                   item.received_ms, item.seq, n, parts)
                continue
            if result.status == "duplicate":
                self.counters.batches_duplicate += 1
                self.counters.readings_duplicate += n
                outcomes[i] = Outcome.DUPLICATE
            else:
                self.counters.batches_committed += 1
                self.counters.readings_stored += result.inserted
                self.counters.readings_duplicate += result.duplicates
                outcomes[i] = Outcome.COMMITTED
            acks.append((parts, {"seq": item.seq, "status": outcomes[i].value}))
        # All committed by now; the acks go out together rather than one broker round trip each.
        await asyncio.gather(*(self._ack(parts, body) for parts, body in acks))
        return outcomes

    async def _prepare(self, topic: str, raw: bytes, received: int,
                       parts: tuple[str, str, str] | None) -> PendingBatch:
        """A verified batch, or _Refused with the reason handle() would give."""
        topic_gw = parts[1] if parts else None
        seq: int | None = None
        n = 0
        try:
            if parts is None or parts[2] != topics.TELEMETRY:
                raise WireError(f"topic {topic!r} is not a telemetry topic cl/{{site}}/{{gateway}}/telemetry")
            if len(raw) > MAX_BATCH_BYTES:
                raise WireError(f"message is {len(raw)} bytes, over the {MAX_BATCH_BYTES}-byte limit")
            fast = self._fast.parse(raw)
            batch = parse_batch(raw) if fast is None else None  # the slow path names the broken rule
            gateway = fast.gateway if fast else batch.gateway  # type: ignore[union-attr]
            seq = fast.seq if fast else batch.seq  # type: ignore[union-attr]
            n = len(fast.rows) if fast else len(batch.readings)  # type: ignore[union-attr]
            if gateway != topic_gw:
                raise WireError(f"batch says gateway {gateway!r} but arrived on {topic_gw!r}'s topic")
            rec, keys = await self._gateway(gateway)
            if rec is None or not keys:
                raise WireError(f"gateway {gateway!r} is not registered")
            if rec.revoked:
                raise WireError(f"gateway {gateway!r} is revoked")
            if rec.site != parts[0]:
                raise WireError(f"gateway {gateway!r} belongs to site {rec.site!r}, not {parts[0]!r}")
            if fast is not None:
                signed = fast.signed_bytes(raw)
                if signed is not None and fast.alg is SigAlg.ED25519 and _verify_ed25519(keys, fast.sig, signed):
                    return PendingBatch(fast.gateway, fast.seq, fast.created_ms, received, fast.digest(signed),
                                        raw, fast.rows, fast.alg.value)
                batch = parse_batch(raw)  # HMAC, non-canonical bytes or a bad signature: the general path
            assert batch is not None
            verify_with_any(batch, keys, raw)
            return PendingBatch.from_batch(batch, raw, received)
        except WireError as exc:
            raise _Refused(str(exc), seq, n) from None

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
        self.max_group = 200  # messages per group commit; the broker's in-flight window caps it too

    @property
    def counters(self) -> IngestCounters:
        return self.processor.counters

    async def run(self) -> None:
        failing_since: float | None = None
        while True:
            try:
                self.state = "connecting"
                client = aiomqtt.Client(self.url.host, self.url.port, identifier=self.client_id,
                                        clean_session=False, keepalive=30)
                # PUBACK only after the commit or the dead letter (aiomqtt does not expose paho's manual
                # acks, hence the private handle): the broker keeps what is not stored yet, so a killed
                # worker loses nothing, and its in-flight window bounds what a worker holds in memory.
                client._client.manual_ack_set(True)
                async with client:
                    async def publish(topic: str, payload: bytes, client: aiomqtt.Client = client) -> None:
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
                    await self._consume(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self.state = "backoff"
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("ingest lost broker %s: %s; retrying", self.url, exc)
                await asyncio.sleep(self.backoff.next_delay())

    # --- group commit loop: the throughput path ------------------------------------------------------

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Take whatever is queued (up to max_group), commit it as one group, then PUBACK each message."""
        messages = client.messages
        while True:
            group = [await anext(messages)]
            while len(messages) and len(group) < self.max_group:
                group.append(await anext(messages))
            telemetry: list[tuple[str, bytes]] = []
            for m in group:
                raw = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else b""
                t = str(m.topic)
                if t.endswith("/" + topics.STATUS):
                    await self.processor.handle_status(t, raw)
                else:
                    telemetry.append((t, raw))
            if telemetry:
                await self._commit_group(telemetry)
            for m in group:
                if m.qos > 0:
                    client._client.ack(m.mid, m.qos)

    async def _commit_group(self, telemetry: list[tuple[str, bytes]]) -> None:
        """Retry until the store takes the group: nothing is acknowledged, nothing dropped, meanwhile."""
        backoff = Backoff(initial=0.2, cap=5.0)
        while True:
            try:
                await self.processor.handle_many(telemetry)
                return
            except aiomqtt.MqttError:
                raise
            except Exception as exc:  # the store is down or refusing: keep the messages and retry
                self.state = "store-retry"
                log.warning("ingest cannot commit %d messages (%s: %s); retrying", len(telemetry),
                            type(exc).__name__, exc)
                await asyncio.sleep(backoff.next_delay())
                self.state = "connected"
