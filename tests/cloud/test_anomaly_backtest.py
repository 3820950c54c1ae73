"""Back-testing a model on stored history finds what the gateway would have flagged, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.anomaly.model import load_default
from carbonlink.anomaly.stream import WindowStream
from carbonlink.cloud.anomaly_backtest import backtest
from carbonlink.cloud.store import Store
from carbonlink.kernel.wire import Batch, Reading, sign_batch
from tests.anomaly.fakes import T0, cems_polls
from tests.cloud.store.conftest import throwaway_store


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with throwaway_store(request.param, tmp_path) as s:
        yield s


async def test_backtest_matches_the_edge_stream(store: Store) -> None:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", "00" * 32)
    key = Ed25519PrivateKey.generate()
    polls = cems_polls(240, stuck_from=150)
    rs = [Reading.make(r.device, r.point, r.ts_ms, r.value, "mg/m³") for p in polls for r in p]
    for seq, start in enumerate(range(0, len(rs), 1000), 1):
        b = sign_batch(Batch("gw-1", seq, T0, tuple(rs[start:start + 1000])), key)
        await store.data.commit_batch(b, b.to_bytes(), T0 + 1000)
    model = load_default()
    rep = await backtest(store, model, ["stack-1"])
    # the same readings through the gateway's stream give the same verdicts
    st = WindowStream()
    edge = []
    for p in polls:
        edge += [s for s in st.score([Reading.make(r.device, r.point, r.ts_ms, r.value, "mg/m³") for r in p],
                                     model).scored]
    assert rep.readings == len(rs) and rep.judged == len(edge)
    assert rep.flagged == sum(s.anomalous for s in edge) > 0
    assert rep.episodes and all(e["device"] == "stack-1" for e in rep.episodes)
    assert rep.model["model_sha256"] == model.info.sha256
    part = await backtest(store, model, ["stack-1"], start_ms=T0, end_ms=T0 + 100 * 60_000)
    assert part.readings == 100 * 9 and part.judged == 0  # a window needs 120 readings of history
    assert (await backtest(store, model, ["nobody"])).readings == 0


def test_backtest_command(tmp_path: Path) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from carbonlink.cloud.store import open_store
    from carbonlink.commands.ml import app

    db = f"sqlite:///{tmp_path / 'c.sqlite'}"

    async def fill() -> None:
        s = open_store(db)
        await s.open()
        try:
            await s.registry.register_gateway("gw-1", "site-1", "ed25519", "00" * 32)
            rs = tuple(Reading.make(r.device, r.point, r.ts_ms, r.value, "") for p in cems_polls(200, stuck_from=150)
                       for r in p)
            b = sign_batch(Batch("gw-1", 1, T0, rs), Ed25519PrivateKey.generate())
            await s.data.commit_batch(b, b.to_bytes(), T0)
        finally:
            await s.close()

    asyncio.run(fill())
    res = CliRunner().invoke(app, ["backtest", "stack-1", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["readings"] == 1800 and rep["flagged"] > 0
    res = CliRunner().invoke(app, ["backtest", "stack-1", "--db", db, "--start", "yesterday"])
    assert res.exit_code == 2 and "YYYY-MM-DD" in res.output
    res = CliRunner().invoke(app, ["backtest", "stack-1", "--db", f"sqlite:///{tmp_path / 'none.sqlite'}"])
    assert res.exit_code == 2 and "does not exist" in res.output
