"""The ingest's MQTT client: PUBACK only when told, and a bound on what it holds unacknowledged.

Against the machine's Mosquitto binary (2.0.11 here), whose in-flight window stops bounding a client
after its first PUBACK: the client's own bound is what keeps a worker's memory flat.
"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from carbonlink.cloud.memtrim import Trimmer, trim
from carbonlink.cloud.mqtt_ack import MESSAGE_OVERHEAD, ManualAckClient
from tests.services import own_mosquitto

CONF = "max_queued_messages 0\nmax_queued_bytes 0\nmax_inflight_messages 100\n"
SIZE = 10_000


async def _publish(port: int, n: int, topic: str = "t/x") -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="pub", max_inflight_messages=1000) as pub:
        await asyncio.gather(*(pub.publish(topic, i.to_bytes(4, "big") + b"x" * (SIZE - 4), qos=1)
                               for i in range(n)))


async def _until(cond: object, what: str) -> None:
    for _ in range(500):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_holds_no_more_than_its_bound_and_loses_nothing() -> None:
    bound = 5 * SIZE
    with own_mosquitto(CONF) as (_, port, _):
        sub = ManualAckClient(hostname="127.0.0.1", port=port, identifier="held", clean_session=False,
                              max_held_bytes=bound)
        async with sub:
            await sub.subscribe("t/#", qos=1)
            await _publish(port, 300)
            seen: list[int] = []
            most = 0
            async for m in sub.messages:
                most = max(most, sub.held_bytes)
                assert isinstance(m.payload, bytes)
                seen.append(int.from_bytes(m.payload[:4], "big"))
                sub.ack(m)
                if len(seen) == 300:
                    break
    assert sorted(seen) == list(range(300))  # every message came, once
    # One socket read takes one packet: the bound is overshot by at most the message that crossed it.
    assert most <= bound + SIZE + MESSAGE_OVERHEAD
    assert sub.pauses > 0


async def test_an_own_publish_is_not_stuck_behind_a_paused_reader() -> None:
    """Paused reading must not keep the PUBACK of the client's own publish out (the ingest's acks)."""
    with own_mosquitto(CONF) as (_, port, _):
        sub = ManualAckClient(hostname="127.0.0.1", port=port, identifier="own", max_held_bytes=2 * SIZE)
        async with sub:
            await sub.subscribe("t/#", qos=1)
            await _publish(port, 20)
            await _until(lambda: sub.held_bytes >= 2 * SIZE and sub._paused, "reading paused")
            await asyncio.wait_for(sub.publish("other/ack", b"done", qos=1), 10)
            held = [await anext(sub.messages) for _ in range(len(sub.messages))]
            for m in held:
                sub.ack(m)
            await _until(lambda: not sub._paused, "reading resumed once the held ones are acked")


async def test_a_resubscribe_is_not_stuck_behind_a_backlog_over_the_bound() -> None:
    """Back on its persistent session, the client gets its backlog before the SUBACK: the subscribe completes."""
    with own_mosquitto(CONF) as (_, port, _):
        first = ManualAckClient(hostname="127.0.0.1", port=port, identifier="back", clean_session=False)
        async with first:
            await first.subscribe("t/#", qos=1)
        await _publish(port, 50)  # queued for the session while it is away: more than the bound below
        sub = ManualAckClient(hostname="127.0.0.1", port=port, identifier="back", clean_session=False,
                              max_held_bytes=2 * SIZE, timeout=10)
        async with sub:
            await asyncio.wait_for(sub.subscribe("t/#", qos=1), 10)
            await _until(lambda: sub._paused, "reading paused once the subscribe is answered")
            seen: set[int] = set()
            async for m in sub.messages:
                assert isinstance(m.payload, bytes)
                seen.add(int.from_bytes(m.payload[:4], "big"))
                sub.ack(m)
                if len(seen) == 50:
                    break
    assert seen == set(range(50))


async def test_without_a_bound_it_never_pauses() -> None:
    with own_mosquitto(CONF) as (_, port, _):
        sub = ManualAckClient(hostname="127.0.0.1", port=port, identifier="free")
        async with sub:
            await sub.subscribe("t/#", qos=1)
            await _publish(port, 50)
            await _until(lambda: len(sub.messages) >= 50, "all 50 queued")
    assert sub.pauses == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_held_bytes"):
        ManualAckClient(hostname="127.0.0.1", max_held_bytes=-1)


def test_trimmer_trims_only_when_idle_after_enough_bytes() -> None:
    t = Trimmer(every_bytes=1000)
    t.handled(999)
    assert t.idle() is False and t.trims == 0
    t.handled(1)
    t.idle()
    assert t.trims == 1 and t.pending == 0
    assert t.idle() is False
    assert isinstance(trim(), bool)
    with pytest.raises(ValueError):
        Trimmer(every_bytes=0)
