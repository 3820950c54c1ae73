"""A batch refused for a cause that was later fixed is replayed from its dead letter, once."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.deadletters import replay
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch


def signed(gw: str, seq: int, key: Ed25519PrivateKey) -> bytes:
    rs = tuple(Reading.make("cems-1", "so2", 1_767_225_600_000 + seq * 1000 + i, 10.0 + i, "mg/m³") for i in range(3))
    return sign_batch(Batch(gw, seq, 1_767_225_600_000, rs), key).to_bytes()


async def test_replay_after_registration(store: Store) -> None:
    key, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    p = IngestProcessor(store)
    # The gateway published before it was registered: refused, kept as a dead letter.
    assert await p.handle("cl/site-1/gw-late/telemetry", signed("gw-late", 1, key)) is Outcome.REJECTED
    assert await p.handle("cl/site-1/gw-late/telemetry", signed("gw-late", 2, stranger)) is Outcome.REJECTED
    letters = sorted(d["id"] for d in await store.audit.dead_letters())
    assert len(letters) == 2 and (await store.data.counts())["readings"] == 0
    await store.registry.ensure_site("acme", "site-1")
    await store.registry.register_gateway("gw-late", "site-1", "ed25519", public_key_hex(key), tenant="acme")

    results = await replay(store, [*letters, 999_999])
    assert [r.outcome for r in results] == ["committed", "still-refused", "unknown"]
    assert "signature does not match" in results[1].detail
    assert (await store.data.counts())["readings"] == 3
    # The forged one stays unresolved and no new dead letter was written for it.
    assert await store.audit.unresolved_dead_letters() == [letters[1]]
    assert len(await store.audit.dead_letters()) == 2
    # A second replay changes nothing.
    again = await replay(store, letters)
    assert [r.outcome for r in again] == ["already-resolved", "still-refused"]
    assert (await store.data.counts())["readings"] == 3
    row = next(d for d in await store.audit.dead_letters() if d["id"] == letters[0])
    assert row["resolution"] == "replayed: committed" and row["resolved_ms"]
