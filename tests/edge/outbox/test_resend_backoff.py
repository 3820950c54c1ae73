"""Unacked batches are sent again with a growing wait: a lagging ingest is not buried under copies."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.outbox import KeySigner, Outbox
from carbonlink.edge.uplink import RESEND_CAP, DeliveryPolicy, Uplink
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import Reading, parse_batch
from tests.services import own_mosquitto

SIGN = KeySigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
T0 = 1_700_000_000_000


def uplink(tmp_path: Path, batches: int, url: str = "mqtt://127.0.0.1:1", ack_timeout: float = 10.0) -> Uplink:
    ob = Outbox(tmp_path / "o.sqlite", "gw-r")
    for i in range(batches):
        ob.append([Reading.make("d", "p", T0 + i, 1.0, "u")])
        assert ob.cut_batch(10, SIGN) is not None
    return Uplink(ob, GatewayTopics("s1", "gw-r"), url, sign=SIGN, policy=DeliveryPolicy(),
                  ack_timeout=ack_timeout)


def test_each_resend_of_a_batch_waits_twice_as_long_up_to_the_cap(tmp_path: Path) -> None:
    up = uplink(tmp_path, 3)
    assert [s for s, _, _ in up._due(0.0, 10)] == [1, 2, 3]  # never sent: due at once
    for seq in (1, 2, 3):
        up._inflight[seq] = (0.0, "live")
    assert up._due(9.9, 10) == []
    assert [s for s, _, _ in up._due(10.1, 10)] == [1, 2, 3]  # the first wait is the ack timeout
    waits = []
    for k in range(1, 7):
        up._resends[1] = k
        waits.append(up.resend_wait(1))
    spread = waits[0] / 20
    assert 1.0 <= spread <= 1.2
    assert waits == [10 * min(2 ** k, RESEND_CAP) * spread for k in range(1, 7)]  # 20, 40, 80, 80, ...
    up._inflight[1] = (100.0, "live")
    assert 1 not in [s for s, _, _ in up._due(100 + 79.9 * spread, 10)]
    assert 1 in [s for s, _, _ in up._due(100 + 80.1 * spread, 10)]
    up.outbox.ack(1)
    up.handle_ack(b'{"seq":2,"status":"ok"}')
    assert 2 not in up._resends  # an acked batch starts afresh should its seq ever come back
    up.outbox.close()


async def test_a_silent_ingest_gets_fewer_and_fewer_copies(tmp_path: Path) -> None:
    with own_mosquitto() as (url, _, _):
        up = uplink(tmp_path, 1, url, ack_timeout=0.1)
        copies: list[float] = []
        sent: list[float] = []  # the uplink's own send times of seq 1 (as polled: a missed one only merges gaps)
        async with aiomqtt.Client("127.0.0.1", int(url.rsplit(":", 1)[1])) as watcher:
            await watcher.subscribe("cl/s1/gw-r/telemetry", qos=1)

            async def watch() -> None:
                async for m in watcher.messages:
                    assert isinstance(m.payload, bytes) and parse_batch(m.payload).seq == 1
                    copies.append(time.monotonic())

            watching = asyncio.create_task(watch())
            task = asyncio.create_task(up.run())
            try:
                async with asyncio.timeout(30):
                    while len(copies) < 4:  # the first send and three resends reach the broker, no ack ever
                        at = up._inflight.get(1, (None, ""))[0]
                        if at is not None and (not sent or at != sent[-1]):
                            sent.append(at)
                        await asyncio.sleep(0.005)
            finally:
                task.cancel()
                watching.cancel()
                await asyncio.gather(task, watching, return_exceptions=True)
        gaps = [b - a for a, b in itertools.pairwise(sent)]
        # Without the backoff a copy went every 0.1 s; now each waits twice as long as the one before.
        assert len(gaps) >= 2 and all(g >= 0.1 * 2 ** i for i, g in enumerate(gaps))
        assert up.counters.resends >= 3 and up._resends[1] >= 3
        up.outbox.close()
