"""Late data through the real ingest: a backfilled batch refreshes its hour, the stack-hour is recomputed
alone, and the change is kept as a revision (both back ends)."""

from __future__ import annotations

from decimal import Decimal as D

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.carbon.cems import StackConfig
from carbonlink.cloud.carbon.sqlstore import attach, register_stack
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from carbonlink.simulators.cems import CemsStack

KEY = Ed25519PrivateKey.generate()
HOUR = 1_677_628_800_000  # 2023-03-01 00:00 UTC
POINTS = {"flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "o2": "%", "co2": "%",
          "so2": "mg/m³", "nox": "mg/m³", "dust": "mg/m³"}


def batch(seq: int, minutes: range) -> Batch:
    stack = CemsStack(seed=3)
    rs = []
    for m in minutes:
        ts = HOUR + m * 60_000
        v = stack.true_values(ts / 1000)
        rs += [Reading.make("cems-1", p, ts, round(v[p], 4), u) for p, u in POINTS.items()]
    return sign_batch(Batch("gw-1", seq, HOUR + seq, tuple(rs)), KEY)


async def test_a_backfilled_batch_recomputes_its_hour_and_keeps_a_revision(any_store: Store) -> None:
    db = any_store.db
    await any_store.registry.register_gateway("gw-1", "plant-a", "ed25519", public_key_hex(KEY), tenant="acme")
    clock = [HOUR + 3 * 3_600_000]
    attach(any_store, clock=lambda: clock[0])
    first = batch(1, range(0, 40))  # 40 of 60 minutes: the hour is not valid (HJ 76 needs 45)
    await any_store.data.commit_batch(first, first.to_bytes(), HOUR)
    await register_stack(db, tenant="acme", site="plant-a", gateway="gw-1", device="cems-1",
                         config=StackConfig("stack-1", p_atm_pa=D(101325)))
    assert await any_store.data.refresh_hours(clock[0]) == [("gw-1", HOUR)]
    row = await db.fetchrow("SELECT * FROM carbon_hours")
    assert row is not None and row["status"] in ("substituted", "missing")  # not valid, never counted as valid
    assert await db.fetch("SELECT * FROM carbon_revisions") == []  # a first computation is no revision
    late = batch(2, range(40, 60))  # the gateway's backlog arrives: the hour is complete now
    await any_store.data.commit_batch(late, late.to_bytes(), HOUR + 5 * 3_600_000)
    clock[0] += 3_600_000
    assert await any_store.data.refresh_hours(clock[0]) == [("gw-1", HOUR)]
    row = await db.fetchrow("SELECT * FROM carbon_hours")
    assert row is not None and row["status"] == "valid" and int(row["co2_g"]) > 0 and int(row["readings"]) == 540
    revs = {r["field"]: (r["before_v"], r["after_v"]) for r in await db.fetch("SELECT * FROM carbon_revisions")}
    assert revs["status"][1] == "valid" and revs["readings"] == (revs["readings"][0], "540")
