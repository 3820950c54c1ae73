"""Hostile and careless messages for the ingest: what a fuzz run publishes before checking that ingest still works.

Every payload here must end as a dead letter (or be ignored), never as a stored reading, never as a
crash or a stall for the messages after it. A fixed seed makes a run repeatable; the kinds cover what
was seen to break ingest before (deep nesting with a raised recursion limit, invalid UTF-8 inside a
string) and the rules a signed batch can still break (extra fields, bad seq, values out of range,
times out of range, another gateway's name, a reused seq with other content).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.kernel.events import Event, sign_event
from carbonlink.kernel.wire import Batch, Reading, sign_batch


@dataclass(frozen=True)
class Hostile:
    kind: str
    topic: str
    payload: bytes


def _sign_raw(key: Ed25519PrivateKey, body: dict[str, object]) -> bytes:
    """Sign whatever JSON object we are given, the way a broken or malicious gateway would."""
    unsigned = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    obj = dict(body, sig=key.sign(unsigned).hex())
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def hostile_messages(rng: random.Random, *, site: str, gateway: str, key: Ed25519PrivateKey, t0: int,
                     count: int) -> Iterator[Hostile]:
    """``count`` hostile messages for a registered ``gateway`` (whose ``key`` we hold) at ``site``."""
    telemetry, events = f"cl/{site}/{gateway}/telemetry", f"cl/{site}/{gateway}/events"

    def good(seq: int, n: int = 3, **kw: float) -> dict[str, object]:
        readings = [Reading.make("fuzz-dev", f"p{i}", t0 + seq * 1000 + i, 1.0 + i, "mg/m3") for i in range(n)]
        batch = sign_batch(Batch(gateway, seq, t0, tuple(readings)), key)
        obj: dict[str, object] = json.loads(batch.to_bytes())
        obj.pop("sig")
        return obj

    makers = {
        "random-bytes": lambda i: (telemetry, rng.randbytes(rng.randrange(0, 4096))),
        "deep-nesting": lambda i: (telemetry, b"[" * rng.choice((1_000, 20_000, 100_000))),
        "deep-object": lambda i: (telemetry, b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
        "invalid-utf8": lambda i: (telemetry, b'{"alg":"\xff","seq":%d}' % i),
        "utf16": lambda i: (telemetry, json.dumps(good(10_000 + i)).encode("utf-16")),
        "truncated": lambda i: (telemetry, sign_batch(Batch(gateway, 20_000 + i, t0, (
            Reading.make("fuzz-dev", "p", t0, 1.0, "u"),)), key).to_bytes()[: rng.randrange(1, 80)]),
        "bad-signature": lambda i: (telemetry, sign_batch(Batch(gateway, 30_000 + i, t0, (
            Reading.make("fuzz-dev", "p", t0 + i, 1.0, "mg/m3"),)), Ed25519PrivateKey.generate()).to_bytes()),
        "extra-field": lambda i: (telemetry, _sign_raw(key, {**good(40_000 + i), "extra": True})),
        "seq-zero": lambda i: (telemetry, _sign_raw(key, {**good(1), "seq": 0})),
        "seq-huge": lambda i: (telemetry, _sign_raw(key, {**good(1), "seq": 2**60})),
        "nan-value": lambda i: (telemetry, _sign_raw(key, good(50_000 + i)).replace(b'"value":1.0', b'"value":NaN', 1)),
        "value-out-of-range": lambda i: (telemetry, _sign_raw(key, good(60_000 + i)).replace(
            b'"value":1.0', b'"value":1e300', 1)),
        "string-value": lambda i: (telemetry, _sign_raw(key, good(70_000 + i)).replace(
            b'"value":1.0', b'"value":"1.0"', 1)),
        "empty-readings": lambda i: (telemetry, _sign_raw(key, {**good(80_000 + i), "readings": []})),
        "null-bytes": lambda i: (telemetry, _sign_raw(key, good(90_000 + i)).replace(b"fuzz-dev", b"fuzz\x00dev")),
        "other-gateway": lambda i: (telemetry, _sign_raw(key, {**good(100_000 + i), "gateway": gateway + "-x"})),
        "duplicate-keys": lambda i: (telemetry, _sign_raw(key, good(110_000 + i)).replace(
            b'"seq":', b'"seq":1,"seq":', 1)),
        "not-an-object": lambda i: (telemetry, rng.choice((b"[]", b"null", b"1", b'"s"', b"true", b""))),
        "huge-number": lambda i: (telemetry, b'{"seq":' + b"9" * 5000 + b"}"),
        "event-garbage": lambda i: (events, rng.randbytes(rng.randrange(0, 512))),
        "event-deep": lambda i: (events, b'{"body":' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        "event-bad-signature": lambda i: (events, sign_event(Event.make(gateway, "alert.raised", t0),
                                                             Ed25519PrivateKey.generate()).to_bytes()),
        "event-other-gateway": lambda i: (events, sign_event(Event.make(gateway + "-x", "alert.raised", t0),
                                                             key).to_bytes()),
        "wrong-topic": lambda i: (f"cl/{site}/{gateway}/nonsense", good(1).__repr__().encode()),
        "future-only": lambda i: (telemetry, sign_batch(Batch(gateway, 120_000 + i, t0, (
            Reading.make("fuzz-dev", "future", 253_402_300_799_000, 1.0, "mg/m3"),)), key).to_bytes()),
        "before-2000": lambda i: (telemetry, sign_batch(Batch(gateway, 130_000 + i, t0, (
            Reading.make("fuzz-dev", "ancient", 1_000, 1.0, "mg/m3"),)), key).to_bytes()),
    }
    kinds = sorted(makers)
    for i in range(count):
        kind = kinds[i % len(kinds)] if i < len(kinds) else rng.choice(kinds)
        topic, payload = makers[kind](i)
        yield Hostile(kind, topic, payload)


def valid_batch(*, gateway: str, key: Ed25519PrivateKey, seq: int, ts_ms: int, n: int = 5) -> Batch:
    """The batch that must still commit after the hostile ones."""
    readings = tuple(Reading.make("fuzz-dev", f"ok{i}", ts_ms + i, 10.0 + i, "mg/m3") for i in range(n))
    return sign_batch(Batch(gateway, seq, ts_ms, readings), key)



@dataclass
class FuzzResult:
    published: int  # on the topics the ingest subscribes to
    judged: int
    dead_letters: int
    readings_from_hostile: int
    valid_ack_s: float | None  # seconds from publishing the valid batch to its "committed" ack


async def fuzz_ingest(store_url: str, mqtt_url: str, *, seed: int, count: int, settle_s: float = 60.0
                      ) -> FuzzResult:
    """Run an ingest against ``mqtt_url`` and ``store_url``, publish ``count`` hostile messages through the
    broker, wait until ingest judged them all, then publish one valid batch and time its ack."""
    import asyncio
    import time
    import uuid

    import aiomqtt

    from carbonlink.cloud.ingest import IngestService
    from carbonlink.cloud.store import open_store
    from carbonlink.edge.identity import public_key_hex
    from carbonlink.kernel.mqtturl import MqttUrl

    rng = random.Random(seed)
    site, gateway = f"fuzz-{seed}", f"gw-fuzz-{uuid.uuid4().hex[:6]}"
    key = Ed25519PrivateKey.generate()
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    url = MqttUrl.parse(mqtt_url)
    async with open_store(store_url) as store:
        await store.registry.register_gateway(gateway, site, "ed25519", public_key_hex(key))
        svc = IngestService(store, mqtt_url, client_id=f"ingest-{gateway}")
        task = asyncio.create_task(svc.run())
        try:
            await asyncio.wait_for(svc.connected.wait(), 20)
            async with aiomqtt.Client(url.host, url.port, identifier=f"pub-{gateway}") as pub:
                await pub.subscribe(f"cl/{site}/{gateway}/ack", qos=1)
                sent = 0
                for h in hostile_messages(rng, site=site, gateway=gateway, key=key, t0=t0, count=count):
                    await pub.publish(h.topic, h.payload, qos=1)
                    # a topic the ingest does not subscribe to never reaches it (and a broker ACL refuses it)
                    sent += h.topic.endswith(("/telemetry", "/events"))
                deadline = time.monotonic() + settle_s
                # polls the ingest's own counter: there is no event to wait on, and this is a test tool
                while svc.counters.messages < sent and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                judged = svc.counters.messages
                hostile_rows = (await store.data.counts())["readings"]
                good = valid_batch(gateway=gateway, key=key, seq=10**9, ts_ms=t0)
                started = time.monotonic()
                await pub.publish(f"cl/{site}/{gateway}/telemetry", good.to_bytes(), qos=1)
                took: float | None = None
                try:
                    async with asyncio.timeout(settle_s):
                        async for m in pub.messages:
                            body = json.loads(bytes(m.payload))  # type: ignore[arg-type]
                            if body.get("seq") == 10**9 and body.get("status") == "committed":
                                took = time.monotonic() - started
                                break
                except TimeoutError:
                    pass
            letters = len(await store.audit.dead_letters(limit=100_000))
            return FuzzResult(sent, judged, letters, hostile_rows, took)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
