"""Signed readings in a store (SQLite and PostgreSQL) to a root on a hardhat node to a verified proof bundle."""

from __future__ import annotations

import copy

import pytest

from carbonlink.cloud.anchor.chain import Chain, WindowKey
from carbonlink.cloud.anchor.jobs import ANCHORED, PENDING, SENDING, AnchorService, AnchorSettings
from carbonlink.cloud.anchor.merkle import READING_TYPES, leaf_hash
from carbonlink.cloud.anchor.proof import build_bundle, bundle_for, verify_bundle
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.cloud.anchor.conftest import T0, Plant, oz_verify

pytestmark = pytest.mark.service("chain")

AFTER = T0 + 3600_000  # an hour later: every window of the test data has ended and settled


async def anchored(plant: Plant, url: str, account) -> tuple[AnchorService, Chain]:
    chain = await Chain.connect(url, signer=account)
    return AnchorService(plant.store, chain, AnchorSettings(window_s=300, settle_s=60)), chain


async def test_full_run_to_verified_bundle(plant: Plant, hardhat_url: str, dev_account) -> None:
    readings = await plant.cems(T0, minutes=10)  # two 5-minute windows
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        tick = await service.run_once(now_ms=T0 + 5 * 60_000)  # first window ended, not settled yet
        assert tick.scanned == 1 and tick.sealed == []  # one (gateway, hour) mark
        tick = await service.run_once(now_ms=AFTER)
        assert [(j.start_ms, j.count) for j in tick.sealed] == [(T0, 15), (T0 + 300_000, 15)]
        assert [j.state for j in tick.anchored] == [ANCHORED, ANCHORED]
        job = tick.anchored[0]
        assert job.chain_id == 31337 and job.tx_hash and job.block and job.contract == chain.address

        r = readings[4]
        bundle = await build_bundle(plant.store, plant.gateway, r.device, r.point, r.ts_ms)
        assert bundle["root"] == job.root and bundle["window"]["count"] == 15
        report = await verify_bundle(bundle, hardhat_url)
        assert report.ok, report.to_dict()
        assert [c.name for c in report.checks] == ["signature", "batch", "leaf", "proof", "window",
                                                   "root on chain", "transaction", "contract check"]

        # The same proof, checked by OpenZeppelin's own JS library, with the tree rebuilt from all leaves.
        window_values = []
        for x in readings[:15]:
            b = await build_bundle(plant.store, plant.gateway, x.device, x.point, x.ts_ms)
            window_values.append(b["leaf"]["values"])
        oz = oz_verify({"types": bundle["leaf"]["types"], "root": bundle["root"], "value": bundle["leaf"]["values"],
                        "proof": bundle["proof"], "values": window_values})
        assert oz == {"verified": True, "root": bundle["root"], "proof": bundle["proof"]}

        # Nothing left to do: a second run anchors nothing twice.
        again = await service.run_once(now_ms=AFTER)
        assert again.sealed == [] and again.anchored == []
    finally:
        await chain.close()


async def test_tampering_is_named(plant: Plant, hardhat_url: str, dev_account) -> None:
    readings = await plant.cems(T0, minutes=5)
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        await service.run_once(now_ms=AFTER)
        r = readings[1]
        good = await build_bundle(plant.store, plant.gateway, r.device, r.point, r.ts_ms)
    finally:
        await chain.close()

    def failing(report) -> dict[str, str]:
        return {c.name: c.detail for c in report.failures}

    b = copy.deepcopy(good)
    b["reading"]["value"] = "99.9"
    b["leaf"]["values"][5] = "99.9"
    fails = failing(await verify_bundle(b, None))
    assert "value '99.9' != signed '80'" in fails["batch"] and "leaf hash" in fails["leaf"]
    b["leaf"]["hash"] = "0x" + leaf_hash(READING_TYPES, b["leaf"]["values"]).hex()  # a consistent forgery
    fails = failing(await verify_bundle(b, None))
    assert "value '99.9' != signed '80'" in fails["batch"] and "proof leads to" in fails["proof"]

    b = copy.deepcopy(good)
    b["batch"]["payload"] = b["batch"]["payload"].replace('"value":', '"value":1', 1)
    fails = failing(await verify_bundle(b, None))
    assert "signature does not match" in fails["signature"]

    b = copy.deepcopy(good)
    b["batch"]["public_key"] = "11" * 32
    assert "signature" in failing(await verify_bundle(b, None))

    b = copy.deepcopy(good)
    b["proof"][0] = "0x" + "ab" * 32
    fails = failing(await verify_bundle(b, hardhat_url))
    assert "proof leads to" in fails["proof"] and "rejects" in fails["contract check"]

    b = copy.deepcopy(good)
    b["root"] = "0x" + "cd" * 32
    fails = failing(await verify_bundle(b, hardhat_url))
    assert "not to the root" in fails["proof"] and "holds root" in fails["root on chain"]
    assert "did not anchor" in fails["transaction"]

    b = copy.deepcopy(good)
    b["window"]["count"] = 16
    assert "count 16 != on chain 15" in failing(await verify_bundle(b, hardhat_url))["root on chain"]

    b = copy.deepcopy(good)
    b["anchor"]["chain_id"] = 1
    assert "anchored on chain 1" in failing(await verify_bundle(b, hardhat_url))["chain"]

    assert (await verify_bundle(good, hardhat_url)).ok


async def test_late_readings_go_into_the_next_part(plant: Plant, hardhat_url: str, dev_account) -> None:
    await plant.cems(T0, minutes=5)
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        first = await service.run_once(now_ms=AFTER)
        assert [(j.part, j.count) for j in first.anchored] == [(0, 15)]
        # a gateway that was offline delivers a reading of the same, already anchored window
        late = Reading.make("cems-2", "SO2", T0 + 30_000, 12.5, "mg/m3")
        await plant.send([late], received_ms=AFTER)
        second = await service.run_once(now_ms=AFTER + 1)
        assert [(j.start_ms, j.part, j.count) for j in second.anchored] == [(T0, 1, 1)]
        bundle = await build_bundle(plant.store, plant.gateway, "cems-2", "SO2", late.ts_ms)
        assert bundle["proof"] == [] and bundle["leaf"]["hash"] == bundle["root"]  # a one-leaf tree
        assert (await verify_bundle(bundle, chain)).ok
        # what the API returns: the same bundle, from the database path alone
        assert await bundle_for(plant.store.url, plant.gateway, "cems-2", "SO2", late.ts_ms) == bundle
    finally:
        await chain.close()


async def test_restart_never_loses_or_double_anchors(plant: Plant, hardhat_url: str, dev_account) -> None:
    await plant.cems(T0, minutes=10)
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        sealed = await service.seal(now_ms=AFTER) if await service.scan(now_ms=AFTER) else []
        assert len(sealed) == 2 and all(j.state == PENDING for j in sealed)
        await service.ensure_registry()
        # Crash between sending and recording: the first window's root reached the chain, the job
        # still says "sending" with no receipt recorded.
        first = sealed[0]
        receipt = await chain.anchor(first.window, bytes.fromhex(first.root[2:]), first.count)
        await service._update(first.id, state=SENDING)
    finally:
        await chain.close()

    service, chain = await anchored(plant, hardhat_url, dev_account)  # the restart
    try:
        nonce = await chain.w3.eth.get_transaction_count(dev_account.address)
        anchored_now, failed = await service.send(now_ms=AFTER)
        assert failed == [] and [j.id for j in anchored_now] == [sealed[0].id, sealed[1].id]
        assert anchored_now[0].tx_hash == receipt.tx_hash and anchored_now[0].block == receipt.block
        # exactly one new transaction: the second window; the first was found on chain, not re-sent
        assert await chain.w3.eth.get_transaction_count(dev_account.address) == nonce + 1
        assert (await chain.get_window(WindowKey("site-a", T0, T0 + 300_000).id)).reading_count == 15
    finally:
        await chain.close()


async def test_late_hours_are_anchored_in_hour_windows(plant: Plant, hardhat_url: str, dev_account) -> None:
    """A day of backlog costs one transaction per hour, not one per 5 minutes; a reading that arrives late
    for windows already anchored live goes into the hour window, and both prove."""
    hour = T0 - T0 % 3_600_000
    await plant.cems(T0, minutes=10)  # 15 minutes into the hour: two 5-minute windows
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        live = await service.run_once(now_ms=AFTER)  # the hour ended 0 h 45 min ago: still live length
        assert [(j.start_ms, j.end_ms - j.start_ms) for j in live.anchored] == [(T0, 300_000), (T0 + 300_000, 300_000)]
        late = Reading.make("cems-2", "SO2", T0 + 30_000, 12.5, "mg/m3")
        older = [Reading.make("cems-2", "SO2", hour - 3_600_000 + i * 60_000, 10 + i, "mg/m3") for i in range(60)]
        await plant.send([late, *older], received_ms=T0 + 4 * 3_600_000)
        back = await service.run_once(now_ms=T0 + 4 * 3_600_000)
        assert sorted((j.start_ms, j.end_ms - j.start_ms, j.part, j.count) for j in back.anchored) == [
            (hour - 3_600_000, 3_600_000, 0, 60), (hour, 3_600_000, 0, 1)]
        for r in (late, older[17]):
            bundle = await build_bundle(plant.store, plant.gateway, r.device, r.point, r.ts_ms)
            assert (await verify_bundle(bundle, hardhat_url)).ok
        assert (await service.run_once(now_ms=T0 + 4 * 3_600_000)).sealed == []
        off = AnchorSettings(window_s=300, backfill_after_s=0)
        assert off.window_ms("site-a", hour, T0 + 4 * 3_600_000) == 300_000
    finally:
        await chain.close()


async def test_chain_down_is_retried_later(plant: Plant, hardhat_url: str, dev_account) -> None:
    await plant.cems(T0, minutes=5)
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        await service.ensure_registry()
        await chain.pause()  # the registry refuses every anchor while paused
        tick = await service.run_once(now_ms=AFTER)
        assert tick.anchored == [] and len(tick.failed) == 1
        job = tick.failed[0]
        assert job.state == SENDING and job.attempts == 1 and "EnforcedPause" in (job.last_error or "")
        assert (await service.send(now_ms=AFTER)) == ([], [])  # not due yet: backoff
        await chain.unpause()
        anchored_now, _ = await service.send(now_ms=job.next_try_ms)
        assert [j.state for j in anchored_now] == [ANCHORED]
    finally:
        await chain.close()


async def test_hmac_node_bundle_keeps_the_secret_out(plant: Plant, tmp_path) -> None:
    """A constrained node signs with a shared secret: the bundle never carries it, so that one check
    is 'unverifiable' for the public and passes for whoever holds the secret."""
    secret = b"node-secret-0123456789abcdef"
    await plant.store.registry.register_gateway("node-7", "site-a", "hmac-sha256", secret.hex())
    r = Reading.make("soil-1", "moisture", T0 + 5_000, 23.75, "%")
    batch = sign_batch(Batch("node-7", 1, r.ts_ms, (r,)), secret)
    await plant.store.data.commit_batch(batch, batch.to_bytes(), r.ts_ms + 1000)
    chain = await Chain.connect(f"evm://{tmp_path / 'chain.jsonl'}")
    try:
        service = AnchorService(plant.store, chain, AnchorSettings(settle_s=0))
        await service.run_once(now_ms=AFTER)
        bundle = await build_bundle(plant.store, "node-7", "soil-1", "moisture", r.ts_ms)
        assert bundle["batch"]["public_key"] is None and secret.hex() not in str(bundle)
        public = await verify_bundle(bundle, chain)
        assert public.ok and {c.name: c.status for c in public.checks}["signature"] == "unverifiable"
        assert {c.name: c.status for c in (await verify_bundle(bundle, None, hmac_secret=secret)).checks}[
            "signature"] == "pass"
        wrong = await verify_bundle(bundle, None, hmac_secret=b"guess")
        assert not wrong.ok and "HMAC does not match" in wrong.failures[0].detail
    finally:
        await chain.close()


async def test_a_different_root_on_chain_is_a_conflict(plant: Plant, hardhat_url: str, dev_account) -> None:
    await plant.cems(T0, minutes=5)
    service, chain = await anchored(plant, hardhat_url, dev_account)
    try:
        await service.ensure_registry()
        await chain.anchor(WindowKey("site-a", T0, T0 + 300_000), b"\x77" * 32, 15)  # someone else's root
        tick = await service.run_once(now_ms=AFTER)
        job = tick.failed[0]
        assert job.state == "conflict" and "chain holds root 0x7777" in (job.last_error or "")
        assert (await service.send(now_ms=AFTER + 10**9)) == ([], [])  # left for a human, not retried
    finally:
        await chain.close()


async def test_the_anchoring_loop_stops_even_when_a_cancellation_is_lost(plant: Plant, tmp_path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancellation that lands as a chain call finishes can be lost (Python 3.11's wait_for): the loop then
    sleeps on between ticks, and the demo's exit waited for it for ever. Its owner cancels until it ends."""
    import asyncio

    from carbonlink.cloud.anchor import jobs

    lost: list[int] = []

    async def run(self: AnchorService, interval_s: float = 10.0) -> None:
        while True:
            try:
                await asyncio.sleep(interval_s)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(1)  # the first cancellation is swallowed, as the lost one was

    monkeypatch.setattr(jobs.AnchorService, "run", run)
    async def use() -> None:
        async with jobs.running_anchor(plant.store, f"evm://{tmp_path / 'chain.jsonl'}", interval_s=0.05):
            await asyncio.sleep(0.1)

    user = asyncio.create_task(use())
    done, _ = await asyncio.wait({user}, timeout=20)  # the old exit never ended: a bound for "for ever"
    if not done:
        user.cancel()
    assert user in done and lost == [1]
    assert [t for t in asyncio.all_tasks() if t.get_name() == "anchor" and not t.done()] == []
