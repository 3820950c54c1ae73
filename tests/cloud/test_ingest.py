"""Ingest over a real broker: bad messages become dead letters with reason and raw bytes; ingest keeps going."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.ingest import IngestProcessor, IngestService, Outcome
from carbonlink.cloud.mqtt_ack import MESSAGE_OVERHEAD
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.mqtturl import MqttUrl
from carbonlink.kernel.wire import MAX_BATCH_BYTES, Batch, Reading, sign_batch
from tests.services import own_mosquitto

KEY = Ed25519PrivateKey.generate()


def batch(gw: str, seq: int, n: int = 3, key: Ed25519PrivateKey = KEY) -> bytes:
    rs = tuple(Reading.make("cems-1", "so2", 1_700_000_000_000 + seq * 1000 + i, 10.0 + i, "mg/m³")
               for i in range(n))
    return sign_batch(Batch(gw, seq, 1_700_000_000_000, rs), key).to_bytes()


async def test_processor_outcomes(store: Store) -> None:
    await store.registry.register_gateway("gw-a", "site-1", "ed25519", public_key_hex(KEY))
    acks: list[tuple[str, dict[str, object]]] = []

    async def publish(topic: str, payload: bytes) -> None:
        acks.append((topic, json.loads(payload)))

    p = IngestProcessor(store, publish)
    t = "cl/site-1/gw-a/telemetry"
    assert await p.handle(t, batch("gw-a", 1)) is Outcome.COMMITTED
    assert await p.handle(t, batch("gw-a", 1)) is Outcome.DUPLICATE  # redelivery: stored once
    assert acks == [("cl/site-1/gw-a/ack", {"seq": 1, "status": "committed"}),
                    ("cl/site-1/gw-a/ack", {"seq": 1, "status": "duplicate"})]
    # Same readings under a new seq (a gateway that lost its outbox state): identity keeps them single.
    raw = batch("gw-a", 1)
    again = raw.replace(b'"seq":1,', b'"seq":2,')
    assert await p.handle(t, again) is Outcome.REJECTED  # the signature covers seq, so this is tampering
    assert (await store.data.counts())["readings"] == 3
    assert p.counters.readings_stored == 3 and p.counters.readings_duplicate == 3
    # A correctly signed batch that reuses seq 1 with other readings is refused, not taken as a duplicate.
    other = sign_batch(Batch("gw-a", 1, 1_700_000_000_000, (Reading.make("cems-1", "nox", 5, 1.0, "mg/m³"),)), KEY)
    assert await p.handle(t, other.to_bytes()) is Outcome.REJECTED
    letters = await store.audit.dead_letters()
    assert "already committed with different content" in letters[0]["reason"]
    assert acks[-1] == ("cl/site-1/gw-a/ack", {"seq": 1, "status": "rejected", "reason": letters[0]["reason"]})


async def test_dead_letters_over_a_real_broker(store: Store, broker_url: str) -> None:
    site, gw, other = "site-" + uuid.uuid4().hex[:6], "gw-" + uuid.uuid4().hex[:6], "gw-x" + uuid.uuid4().hex[:5]
    await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEY))
    impostor = Ed25519PrivateKey.generate()
    await store.registry.register_gateway(other, site, "ed25519", public_key_hex(impostor))
    svc = IngestService(store, broker_url, client_id="test-ingest-" + uuid.uuid4().hex[:8])
    task = asyncio.create_task(svc.run())
    await asyncio.wait_for(svc.connected.wait(), 10)
    topic = f"cl/{site}/{gw}/telemetry"
    cases = {
        "not UTF-8 JSON": (topic, b"\x00\xffnot json"),
        "batch fields wrong": (topic, b'{"hello": "world"}'),
        "over the": (topic, b"x" * (MAX_BATCH_BYTES + 10)),
        "signature does not match": (topic, batch(gw, 5, key=impostor)),
        "is not registered": (f"cl/{site}/gw-nobody/telemetry", batch("gw-nobody", 1)),
        "arrived on": (topic, batch(other, 1, key=impostor)),  # another gateway's batch on this one's topic
    }
    url = MqttUrl.parse(broker_url)
    try:
        async with aiomqtt.Client(url.host, url.port, identifier="test-gw-" + uuid.uuid4().hex[:8]) as c:
            await c.subscribe(f"cl/{site}/{gw}/ack", qos=1)
            for t, payload in cases.values():
                await c.publish(t, payload, qos=1)
            await c.publish(topic, batch(gw, 1), qos=1)  # ingest is still running and takes a good one
            acks = []
            async with asyncio.timeout(15):
                async for m in c.messages:
                    acks.append(json.loads(m.payload))  # type: ignore[arg-type]
                    if any(a["status"] == "committed" for a in acks):
                        break
        for _ in range(100):
            if len(await store.audit.dead_letters()) >= len(cases):
                break
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    letters = await store.audit.dead_letters()
    reasons = " | ".join(d["reason"] for d in letters)
    for expected in cases:
        assert expected in reasons, f"no dead letter saying {expected!r} in {reasons}"
    sizes = {d["size"] for d in letters}
    assert MAX_BATCH_BYTES + 10 in sizes  # raw bytes kept, even for the oversized one
    assert svc.counters.rejected_messages == len(cases)
    assert svc.counters.rejected_readings == 9  # three parseable batches of 3 readings
    assert {"seq": 5, "status": "rejected"}.items() <= next(a for a in acks if a["seq"] == 5).items()
    assert (await store.data.counts())["readings"] == 3


async def test_a_worker_holds_no_more_than_its_bound_while_it_acks(store: Store) -> None:
    """A backlog larger than the worker's bound: it never holds more than the bound, whatever its acks wait for.

    On a Mosquitto that sends a client all it has queued (2.0.11, see cloud/mqtt_ack.py), the PUBACK of an
    ack published on the subscribing connection came behind that backlog, and reading it held the worker
    open past its bound; the acks now go out on a connection of their own.
    """
    site, gw = "site-" + uuid.uuid4().hex[:6], "gw-" + uuid.uuid4().hex[:6]
    await store.registry.register_gateway(gw, site, "ed25519", public_key_hex(KEY))
    payloads = [batch(gw, seq, n=20) for seq in range(1, 121)]
    published = asyncio.Event()
    commit_many = store.data.commit_many

    async def held_back_commit(*args: Any, **kwargs: Any) -> Any:
        await published.wait()  # the backlog builds up behind the first group
        return await commit_many(*args, **kwargs)

    store.data.commit_many = held_back_commit  # type: ignore[method-assign]
    with own_mosquitto("max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 100\n") as (url, port, _):
        svc = IngestService(store, url, client_id="test-held-" + uuid.uuid4().hex[:6])
        svc.max_group, svc.max_group_bytes = 4, 2 * len(payloads[0])
        svc.max_held_bytes = 3 * svc.max_group_bytes
        task = asyncio.create_task(svc.run())
        try:
            await asyncio.wait_for(svc.connected.wait(), 10)
            async with aiomqtt.Client("127.0.0.1", port, identifier="test-gw-held", max_inflight_messages=200) as c:
                await c.subscribe(f"cl/{site}/{gw}/ack", qos=1)
                await asyncio.gather(*(c.publish(f"cl/{site}/{gw}/telemetry", p, qos=1) for p in payloads))
                published.set()
                acked: set[int] = set()
                async with asyncio.timeout(60):
                    async for m in c.messages:
                        body = json.loads(m.payload)  # type: ignore[arg-type]
                        assert body["status"] == "committed"
                        acked.add(body["seq"])
                        if len(acked) == len(payloads):
                            break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert (await store.data.counts())["readings"] == 20 * len(payloads)
    assert svc.client is not None and svc.client.pauses > 0
    # One socket read takes one packet: the bound is overshot by at most the message that crossed it.
    assert svc.client.held_peak <= svc.max_held_bytes + len(payloads[0]) + MESSAGE_OVERHEAD
