"""Cloud rules with several ingest workers: one evaluation over each gateway's whole stream (issue 15 at
production scale). Each worker commits part of a gateway's batches, as a shared subscription deals them;
the commit queues them, and the one lease holder evaluates all of them in order. Both back ends."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.rules_service import LEASE_MS, RulesService
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import Store, open_store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from carbonlink.rules import RuleDoc

KEY = Ed25519PrivateKey.generate()
T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a minute boundary
MEAN = "SELECT avg(value) AS m FROM '+/so2' GROUP BY device, TUMBLING(1m)"


def batch(seq: int, start_s: int, n: int, value: float) -> bytes:
    rs = tuple(Reading.make("cems-1", "so2", T0 + (start_s + i) * 1000, value, "mg/m³") for i in range(n))
    return sign_batch(Batch("gw-1", seq, T0 + 90_000, rs), KEY).to_bytes()


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 100_000

    def __call__(self) -> int:
        return self.now


async def test_two_workers_one_evaluation_and_the_lease_moves_when_its_holder_dies(any_store: Store) -> None:
    other = open_store(any_store.url)  # a second worker process: its own connections to the same database
    await other.open()
    try:
        await any_store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY), tenant="acme")
        await any_store.rules.save_rule("acme", RuleDoc(id="mean", text=MEAN, actions=[
            {"type": "derive", "point": "m1", "unit": "mg/m³"}]), "cloud", by="t", now=T0)
        clock = Clock()
        settings = CloudSettings(rules_lateness_s=0)
        services = [RulesService(s, settings, clock=clock) for s in (any_store, other)]
        workers = [IngestProcessor(s) for s in (any_store, other)]
        for svc, worker in zip(services, workers, strict=True):
            await svc.refresh()
            worker.batch_listeners.append(svc.on_batch)
        a, b = services
        # the broker deals a gateway's batches to both workers: 30 s of 100 to one, 30 s of 200 to the other,
        # then the reading that closes the minute to the first
        topic = "cl/site-1/gw-1/telemetry"
        assert await workers[0].handle(topic, batch(1, 0, 30, 100.0)) is Outcome.COMMITTED
        assert await workers[1].handle(topic, batch(2, 30, 30, 200.0)) is Outcome.COMMITTED
        assert await workers[0].handle(topic, batch(3, 60, 1, 100.0)) is Outcome.COMMITTED
        assert await any_store.rules.pending_count() == 3
        assert await a.evaluate_pending() == 3  # a leads now
        assert await b.evaluate_pending() == 0  # b sees the lease and leaves the queue alone
        await a.drain()
        derived = await any_store.rules.derived("acme", device="cems-1")
        # the mean of the whole minute, not of one worker's half (100 or 200)
        assert [(d["point"], d["value"]) for d in derived] == [("rule:mean:m1", 150.0)], derived
        assert await any_store.rules.pending_count() == 0

        # a dies without releasing its lease; b takes over once it has expired, and nothing queued is lost
        assert await workers[1].handle(topic, batch(4, 61, 59, 300.0)) is Outcome.COMMITTED
        assert await workers[1].handle(topic, batch(5, 120, 1, 300.0)) is Outcome.COMMITTED
        assert await b.evaluate_pending() == 0
        clock.now += LEASE_MS + 1
        assert await b.evaluate_pending() == 2
        await b.drain()
        assert await any_store.rules.pending_count() == 0
        # b's window state started with its lease: the second minute it saw whole (61..119 s of 300)
        derived = await any_store.rules.derived("acme", device="cems-1")
        assert sorted(d["value"] for d in derived)[-1] == 300.0 and len(derived) == 2
    finally:
        await other.close()


async def test_without_cloud_rules_nothing_is_queued(any_store: Store) -> None:
    await any_store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY), tenant="acme")
    RulesService(any_store, CloudSettings(rules_cloud=False))
    assert await IngestProcessor(any_store).handle("cl/site-1/gw-1/telemetry", batch(1, 0, 5, 1.0)) \
        is Outcome.COMMITTED
    assert await any_store.rules.pending_count() == 0


async def test_batches_are_queued_only_while_a_tenant_has_cloud_rules(any_store: Store) -> None:
    await any_store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY), tenant="acme")
    service = RulesService(any_store, CloudSettings(rules_lateness_s=0))
    worker = IngestProcessor(any_store)
    await service.refresh()
    assert await worker.handle("cl/site-1/gw-1/telemetry", batch(1, 0, 5, 1.0)) is Outcome.COMMITTED
    assert await any_store.rules.pending_count() == 0  # no tenant has cloud rules: nothing to evaluate
    await any_store.rules.save_rule("acme", RuleDoc(id="mean", text=MEAN), "cloud", by="t", now=T0)
    await service.refresh()
    assert await worker.handle("cl/site-1/gw-1/telemetry", batch(2, 5, 5, 1.0)) is Outcome.COMMITTED
    assert await any_store.rules.pending_count() == 1
