"""Tonnes so far from raw readings (the demo's summary): provisional, from the same formulas."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.carbon import live
from carbonlink.cloud.carbon.forest import TreeConfig
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.inverter import SolarInverter

KEY = Ed25519PrivateKey.generate()
NOON = 1_718_942_400  # 2024-06-21 12:00 +08:00 (no 2024 grid factor: the newest stands in, marked)
CEMS = {"flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "co2": "%"}


async def test_emitted_avoided_and_sequestered_so_far(any_store: Store) -> None:
    await any_store.registry.register_gateway("gw-1", "plant", "ed25519", public_key_hex(KEY), tenant="acme")
    stack, inv = CemsStack(seed=2), SolarInverter(seed=4)
    rs = []
    for s in range(0, 600):  # ten minutes of one-second polls
        t = NOON + s
        v, p = stack.values(t), inv.values(t)
        rs += [Reading.make("cems-1", k, t * 1000, v[k], u) for k, u in CEMS.items()]
        rs += [Reading.make("inv-1", "energy", t * 1000, int(p["energy"]), "Wh"),
               Reading.make("inv-1", "ac_power", t * 1000, p["ac_power"], "W"),
               Reading.make("tree-001", "dendrometer", t * 1000, 5000.0 + s / 100, "µm")]
    for seq, i in enumerate(range(0, len(rs), 2000), start=1):
        b = sign_batch(Batch("gw-1", seq, NOON * 1000 + seq, tuple(rs[i:i + 2000])), KEY)
        await any_store.data.commit_batch(b, b.to_bytes(), NOON * 1000)
    a, e = NOON * 1000, (NOON + 600) * 1000
    emitted = await live.emitted_t(any_store.db, "gw-1", "cems-1", a, e)
    truth = stack.truth(NOON, NOON + 599, 1)  # the last poll's rate has no interval after it
    assert float(emitted) == pytest.approx(truth["co2_stack_t"], rel=5e-3)
    avoided, mwh = await live.avoided_t(any_store.db, "gw-1", "inv-1", a, e, rated_w=D(100_000))
    wh = inv.energy_between(NOON, NOON + 599)
    assert float(mwh) == pytest.approx(wh / 1e6, abs=2e-6) and avoided == (mwh * D("0.5306")).quantize(D("1e-6"))
    trees = {"tree-001": TreeConfig("tree-001", "generic_ipcc", D(20), D(15))}
    assert await live.sequestered_t(any_store.db, "gw-1", trees, a, e) == 0  # ten minutes show no growth
    assert await live.sequestered_t(any_store.db, "gw-1", trees, a, e, min_span_ms=60_000) > 0
