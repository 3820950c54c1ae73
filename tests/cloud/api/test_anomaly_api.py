"""GET /api/anomaly/backtest: the packaged model on the caller's tenant's history, bounded, read-only."""

from __future__ import annotations

from carbonlink.kernel.wire import Reading
from tests.anomaly.fakes import cems_polls
from tests.cloud.api.conftest import Api, signed


async def seed_stack(api: Api) -> int:
    rs = [Reading.make(r.device, r.point, r.ts_ms, r.value, "mg/m³") for p in cems_polls(200, stuck_from=150)
          for r in p]
    b = signed("gw-a", 10, rs)
    await api.store.data.commit_batch(b, b.to_bytes(), b.created_ms)
    return len(rs)


async def test_backtest_for_the_callers_tenant(api: Api) -> None:
    n = await seed_stack(api)
    q = {"device": "stack-1", "start": "2026-01-01T00:00:00.000Z", "end": "2026-01-02T00:00:00.000Z"}
    r = await api.client.get("/api/anomaly/backtest", params=q, headers=api.as_("analyst"))
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["tenant"] == "acme" and rep["readings"] == n and rep["flagged"] > 0 and rep["episodes"]
    other = await api.client.get("/api/anomaly/backtest", params=q, headers=api.as_("other-admin"))
    assert other.status_code == 200 and other.json()["readings"] == 0


async def test_backtest_bounds(api: Api) -> None:
    h = api.as_("analyst")
    bad = [{"device": "stack-1", "start": "2026-01-02T00:00:00.000Z", "end": "2026-01-01T00:00:00.000Z"},
           {"device": "stack-1", "start": "2026-01-01T00:00:00.000Z", "end": "2026-03-01T00:00:00.000Z"},
           {"device": "x" * 200, "start": "0", "end": "1000"},
           {"start": "0", "end": "1000"}]
    for q in bad:
        assert (await api.client.get("/api/anomaly/backtest", params=q, headers=h)).status_code == 422, q
    assert (await api.client.get("/api/anomaly/backtest", params=bad[0])).status_code == 401
