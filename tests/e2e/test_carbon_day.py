"""A simulated day on an accelerated clock, through the real ingest (signed batches, group commit, rollup
refresh) into the carbon accounts, compared with what the simulated stack knows it emitted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal as D
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.carbon.cems import StackConfig
from carbonlink.cloud.carbon.sqlstore import attach, day_totals, register_stack
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from carbonlink.simulators.cems import CemsStack
from tests.cloud.store.conftest import throwaway_store
from tests.simulators.clocks import StepClock

KEY = Ed25519PrivateKey.generate()
DAY0 = 1_677_600_000  # 2023-03-01 00:00 +08:00
POINTS = {"flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "o2": "%", "co2": "%",
          "so2": "mg/m³", "nox": "mg/m³", "dust": "mg/m³"}


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with throwaway_store(request.param, tmp_path, "clday_") as s:
        yield s


async def test_a_simulated_day_accounts_to_what_the_stack_emitted(store: Store) -> None:
    # The stack's clock runs 60 s per reading: a day of one-minute readings in 1,440 polls, no waiting.
    clock = StepClock(DAY0 - 60, 60.0)
    stack = CemsStack(seed=11, clock=clock)
    db = store.db
    await store.registry.register_gateway("gw-1", "plant-a", "ed25519", public_key_hex(KEY), tenant="acme")
    attach(store, clock=lambda: int(clock.t * 1000))
    seq = 0
    readings: list[Reading] = []
    for _ in range(24 * 60):
        v = stack.values()  # reads the clock: one simulated minute later each time
        ts = int(clock.t * 1000)
        readings += [Reading.make("cems-1", p, ts, round(v[p], 5), u) for p, u in POINTS.items()]
        if len(readings) >= 9 * 60:  # one batch per simulated hour, as a gateway's outbox would cut them
            seq += 1
            b = sign_batch(Batch("gw-1", seq, ts, tuple(readings)), KEY)
            assert (await store.data.commit_batch(b, b.to_bytes(), ts)).status == "committed"
            readings = []
            if seq == 1:  # the stack is registered once its series exist
                await register_stack(db, tenant="acme", site="plant-a", gateway="gw-1", device="cems-1",
                                     config=StackConfig("stack-1", p_atm_pa=D(101325)))
    refreshed = await store.data.refresh_hours((DAY0 + 26 * 3600) * 1000)
    assert len(refreshed) == 24
    (day,) = await day_totals(db, "acme", DAY0 * 1000, (DAY0 + 86400) * 1000)
    assert (day["valid"], day["substituted"], day["missing"]) == (24, 0, 0)
    truth = stack.truth(DAY0, DAY0 + 86400, 60)
    # Independent figures from the model: the flue gas's CO2 and pollutant mass over the day.
    assert day["co2_g"] / 1e6 == pytest.approx(truth["co2_stack_t"], rel=5e-3)
    assert day["co2_g"] / 1e6 == pytest.approx(truth["co2_fuel_t"], rel=5e-3)  # the stack burns what it emits
    for p in ("so2", "nox", "dust"):
        assert day[f"{p}_g"] / 1000 == pytest.approx(truth[f"{p}_kg"], rel=1e-2)
    assert day["readings"] == 24 * 60 * 9
