"""Ingest with many gateways: a group's gateways are looked up in one query, presence is written per group."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, now_ms, sign_batch

T0 = 1_700_000_000_000
KEYS = {f"gw-{i}": Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(12)}


def batch(gw: str, seq: int, key: Ed25519PrivateKey | None = None) -> bytes:
    rs = tuple(Reading.make("meter-1", f"p{k}", T0 + seq * 1000, 1.5 + k, "kg/h") for k in range(3))
    return sign_batch(Batch(gw, seq, T0, rs), key or KEYS[gw]).to_bytes()


async def register_all(store: Store) -> None:
    for gw, key in KEYS.items():
        await store.registry.register_gateway(gw, "s1", "ed25519", public_key_hex(key))


class Counting:
    """Wraps the registry's lookups to count round trips."""

    def __init__(self, store: Store) -> None:
        self.single = self.many = 0
        reg: Any = store.registry
        one, many = reg.get_gateway, reg.get_gateways

        async def get_gateway(gw: str) -> Any:
            self.single += 1
            return await one(gw)

        async def get_gateways(ids: list[str]) -> Any:
            self.many += 1
            return await many(ids)

        reg.get_gateway, reg.get_gateways = get_gateway, get_gateways


async def test_get_gateways_matches_get_gateway_with_rotated_keys(any_store: Store) -> None:
    await register_all(any_store)
    # retired now: inside the grace period the registry keeps (it reads its own clock)
    await any_store.registry.rotate_key("gw-3", public_key_hex(Ed25519PrivateKey.generate()), now_ms())
    await any_store.registry.set_revoked("gw-5", True)
    ids = ["gw-3", "gw-5", "gw-7", "nobody", "gw-3"]
    found = await any_store.registry.get_gateways(ids)
    assert set(found) == {"gw-3", "gw-5", "gw-7"}
    for gw in ("gw-3", "gw-5", "gw-7"):
        one = await any_store.registry.get_gateway(gw)
        assert one is not None
        assert found[gw].key == one.key and found[gw].revoked == one.revoked and found[gw].site == one.site
        assert sorted(found[gw].previous_keys) == sorted(one.previous_keys)
    assert len(found["gw-3"].previous_keys) == 1 and found["gw-5"].revoked
    assert await any_store.registry.get_gateways([]) == {}


async def test_statuses_in_one_call_last_one_wins(any_store: Store) -> None:
    await register_all(any_store)
    await any_store.registry.set_gateway_statuses([("gw-1", "online", T0), ("gw-2", "online", T0),
                                                   ("gw-1", "offline", T0 + 5), ("unknown", "online", T0)])
    rows = {r["id"]: r for r in await any_store.registry.list_gateways()}
    assert (rows["gw-1"]["status"], rows["gw-1"]["status_ms"]) == ("offline", T0 + 5)
    assert rows["gw-2"]["status"] == "online" and rows["gw-3"]["status"] == "unknown"


async def test_a_group_of_many_gateways_costs_one_lookup(any_store: Store) -> None:
    await register_all(any_store)
    counting = Counting(any_store)
    proc = IngestProcessor(any_store, clock=lambda: T0 + 60_000)
    group = [(f"cl/s1/{gw}/telemetry", batch(gw, 1)) for gw in KEYS]
    group.append(("cl/s1/gw-x/telemetry", batch("gw-x", 1, Ed25519PrivateKey.generate())))  # not registered
    group.append(("cl/s1/gw-2/telemetry", batch("gw-2", 2, Ed25519PrivateKey.generate())))  # wrong key
    group.append(("cl/s1/bad id!/telemetry", b"{}"))  # not an id: never looked up
    outcomes = await proc.handle_many(group)
    assert outcomes == [Outcome.COMMITTED] * len(KEYS) + [Outcome.REJECTED] * 3
    assert (counting.many, counting.single) == (1, 0)
    # within the cache's life a second group looks nothing up; one message alone takes the single path
    assert await proc.handle_many([(f"cl/s1/{gw}/telemetry", batch(gw, 3)) for gw in KEYS]) == \
        [Outcome.COMMITTED] * len(KEYS)
    assert (counting.many, counting.single) == (1, 0)
    proc.forget_key("gw-0")
    assert await proc.handle("cl/s1/gw-0/telemetry", batch("gw-0", 4)) is Outcome.COMMITTED
    assert (counting.many, counting.single) == (1, 1)
    counts = await any_store.data.counts()
    assert counts["readings"] == 3 * (2 * len(KEYS) + 1) and counts["dead_letters"] == 3


async def test_revocation_seen_by_the_group_lookup(any_store: Store) -> None:
    await register_all(any_store)
    proc = IngestProcessor(any_store, key_cache_s=0.0, clock=lambda: T0 + 60_000)
    await any_store.registry.set_revoked("gw-4", True)
    outcomes = await proc.handle_many([("cl/s1/gw-4/telemetry", batch("gw-4", 1)),
                                       ("cl/s1/gw-6/telemetry", batch("gw-6", 1))])
    assert outcomes == [Outcome.REJECTED, Outcome.COMMITTED]


async def test_presence_of_a_group_in_one_write(any_store: Store) -> None:
    await register_all(any_store)
    proc = IngestProcessor(any_store, clock=lambda: T0)
    await proc.handle_statuses([("cl/s1/gw-1/status", b"online"), ("cl/s1/gw-2/status", b"offline"),
                                ("cl/s1/gw-3/status", b"sideways"), ("cl/s1/gw-1/status", b"offline")])
    rows = {r["id"]: r for r in await any_store.registry.list_gateways()}
    assert rows["gw-1"]["status"] == "offline" and rows["gw-2"]["status"] == "offline"
    assert rows["gw-3"]["status"] == "unknown"
