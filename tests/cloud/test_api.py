"""The HTTP API over a real store: listing, paging, time ranges and problem+json errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_api_key
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, format_ts, sign_batch

KEY = Ed25519PrivateKey.generate()
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    await store.registry.register_gateway("gw-1", "site-1", "ed25519", public_key_hex(KEY), tenant="t1")
    for seq in range(1, 4):
        rs = tuple(Reading.make("cems-1", p, T0 + (seq * 10 + i) * 1000, seq * 10 + i, "mg/m³")
                   for i in range(10) for p in ("so2", "nox"))
        b = sign_batch(Batch("gw-1", seq, T0, rs), KEY)
        await store.data.commit_batch(b, b.to_bytes(), T0)
    transport = httpx.ASGITransport(app=create_app(store))
    _, key = await create_api_key(store, "t1", "analyst", "test")  # tests/api covers auth itself
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        yield c


async def test_health_and_listings(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json()["status"] == "ok"
    h = (await client.get("/api/stats")).json()
    assert h["readings"] == 60 and h["batches"] == 3
    gws = (await client.get("/api/gateways")).json()
    assert [(g["id"], g["batches"]) for g in gws] == [("gw-1", 3)]
    devs = (await client.get("/api/devices")).json()
    assert devs == [{"gateway": "gw-1", "device": "cems-1", "points": 2, "last_ts_ms": T0 + 39_000}]
    latest = (await client.get("/api/latest", params={"device": "cems-1"})).json()
    assert {(r["point"], r["value"]) for r in latest} == {("nox", 39.0), ("so2", 39.0)}


async def test_readings_paging_and_ranges(client: httpx.AsyncClient) -> None:
    seen: list[tuple[str, int]] = []  # pages run point by point, each in time order
    cursor = None
    while True:
        params = {"device": "cems-1", "limit": 7} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/readings", params=params)).json()
        seen += [(r["point"], r["ts_ms"]) for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 60 and seen == sorted(seen) and len(set(seen)) == 60
    r = (await client.get("/api/readings", params={
        "device": "cems-1", "point": "so2", "start": format_ts(T0 + 20_000), "end": str(T0 + 25_000)})).json()
    assert [x["value"] for x in r["items"]] == [20, 21, 22, 23, 24]


@pytest.mark.parametrize("params", [
    {"device": "cems-1", "start": "yesterday"},
    {"device": "cems-1", "start": str(T0 + 10), "end": str(T0)},
    {"device": "cems-1", "limit": 0},
    {"device": "cems-1", "limit": 100000},
    {"device": "cems-1", "cursor": "nonsense"},
    {},
])
async def test_bad_queries_get_4xx_problem_json(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    r = await client.get("/api/readings", params=params)
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == r.status_code and r.json()["detail"]


async def test_injection_like_strings_are_just_data(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/readings", params={"device": "cems-1' OR '1'='1", "point": "so2; DROP TABLE x"})
    assert r.status_code == 200 and r.json()["items"] == []
    assert (await client.get("/api/stats")).json()["readings"] == 60


async def test_console_and_swagger_ui_are_served_locally(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200 and '<script type="module" src="/console/app.js">' in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no CDN in the head
    assert "default-src 'self'" in page.headers["content-security-policy"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text
    js = await client.get("/docs-assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    assert (await client.get("/docs-assets/../../etc/passwd")).status_code == 404
    assert (await client.get("/console/../api.py")).status_code == 404
