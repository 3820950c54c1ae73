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


async def test_model_upload_is_verified_and_kept_per_tenant(api: Api) -> None:
    from carbonlink.anomaly.model import default_model_bytes, sha256_hex

    data = default_model_bytes()  # the packaged model: cl-anomaly, its own version in its metadata
    from carbonlink.anomaly.model import load

    info = load(data).info
    url = f"/api/models/{info.model_id}/{info.version}"
    octets = {"content-type": "application/octet-stream"}
    assert (await api.client.put(url, content=data, headers=api.as_("analyst") | octets)).status_code == 403
    r = await api.client.put(url, content=data, headers=api.as_("operator") | octets)
    assert r.status_code == 201, r.text
    assert r.json()["sha256"] == sha256_hex(data) and r.json()["desired"]["model"]["version"] == info.version
    listed = (await api.client.get("/api/models", headers=api.as_("analyst"))).json()["items"]
    assert [(m["model_id"], m["sha256"]) for m in listed] == [(info.model_id, sha256_hex(data))]
    assert (await api.client.get("/api/models", headers=api.as_("other-admin"))).json()["items"] == []
    # not ONNX, or a file that says it is another model: 422 and nothing kept
    bad = await api.client.put(url, content=b"not a model", headers=api.as_("operator") | octets)
    assert bad.status_code == 422 and "not_onnx" in bad.text
    wrong = await api.client.put(f"/api/models/{info.model_id}/{info.version + 1}", content=data,
                                 headers=api.as_("operator") | octets)
    assert wrong.status_code == 422 and "the file says" in wrong.text
    # over the gateways' 1 MiB budget: refused here, not accepted and then refused by every gateway
    big = await api.client.put(url, content=data + b"\0" * (1024 * 1024), headers=api.as_("operator") | octets)
    assert big.status_code == 422 and "too_large" in big.text
    assert len((await api.client.get("/api/models", headers=api.as_("analyst"))).json()["items"]) == 1
    # the general 1 MiB body limit does not apply to models, a larger limit does
    huge = await api.client.put(url, content=b"\0" * (9 * 1024 * 1024), headers=api.as_("operator") | octets)
    assert huge.status_code == 413
