"""The hierarchy end to end, readings as JSON pages and as a CSV stream whose memory stays bounded."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import tracemalloc
from typing import Any

from carbonlink.cloud.store import PendingBatch
from carbonlink.kernel.wire import format_ts
from tests.cloud.api.conftest import T0, Api
from tests.cloud.api.test_auth import assert_problem

SITE = "/api/tenants/acme/sites/plant-a"
DEV = f"{SITE}/gateways/gw-a/devices/cems-1"
HOUR = 3_600_000


async def test_walk_the_hierarchy(api: Api) -> None:
    h = api.as_("analyst")
    get = api.client.get
    assert [t["id"] for t in (await get("/api/tenants", headers=h)).json()] == ["acme"]
    assert (await get("/api/tenants/acme", headers=h)).json()["id"] == "acme"
    assert [s["id"] for s in (await get("/api/tenants/acme/sites", headers=h)).json()] == ["plant-a"]
    assert (await get(SITE, headers=h)).json()["tenant"] == "acme"
    gws = (await get(f"{SITE}/gateways", headers=h)).json()
    assert [(g["id"], g["batches"], g["revoked"]) for g in gws] == [("gw-a", 3, False)]
    assert (await get(f"{SITE}/gateways/gw-a", headers=h)).json()["site"] == "plant-a"
    devs = (await get(f"{SITE}/gateways/gw-a/devices", headers=h)).json()
    assert devs == [{"id": "cems-1", "gateway": "gw-a", "points": 2, "last_ts_ms": T0 + 39_000}]
    assert (await get(DEV, headers=h)).json()["points"] == 2
    pts = (await get(f"{DEV}/points", headers=h)).json()
    assert [(p["id"], p["unit"], p["last_value"]) for p in pts] == [("nox", "mg/m³", 39.0), ("so2", "mg/m³", 39.0)]
    assert (await get(f"{DEV}/points/so2", headers=h)).json()["last_ts"] == format_ts(T0 + 39_000)
    for missing in (f"{DEV}/points/co2", f"{SITE}/gateways/gw-a/devices/cems-9", "/api/tenants/acme/sites/x"):
        assert_problem(await get(missing, headers=h), 404)
    # A new site, by an installer; it shows up empty.
    r = await api.client.post("/api/tenants/acme/sites", json={"id": "plant-c"}, headers=api.as_("installer"))
    assert r.status_code == 201 and r.json()["id"] == "plant-c"
    assert (await get("/api/tenants/acme/sites/plant-c/gateways", headers=h)).json() == []
    assert_problem(await api.client.post("/api/tenants/acme/sites", json={"id": "plant-b"},
                                         headers=api.as_("installer")), 409)


async def test_readings_pages_and_rollups(api: Api) -> None:
    h = api.as_("analyst")
    rng = {"start": str(T0), "end": format_ts(T0 + HOUR)}
    seen: list[tuple[str, int]] = []  # pages run point by point, each in time order
    cursor = None
    while True:
        params: dict[str, Any] = rng | {"limit": 7} | ({"cursor": cursor} if cursor else {})
        page = (await api.client.get(f"{DEV}/readings", params=params, headers=h)).json()
        seen += [(x["point"], x["ts_ms"]) for x in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 60 and seen == sorted(seen) and len(set(seen)) == 60
    so2 = (await api.client.get(f"{DEV}/points/so2/readings", headers=h, params={
        "start": str(T0 + 20_000), "end": str(T0 + 25_000)})).json()
    assert [x["value"] for x in so2["items"]] == [20, 21, 22, 23, 24] and so2["next_cursor"] is None
    roll = (await api.client.get(f"{DEV}/points/so2/rollups", params=rng, headers=h)).json()
    assert roll["count"] == 1 and roll["items"][0]["n"] == 30 and roll["items"][0]["min"] == 10
    text = (await api.client.get(f"{DEV}/points/so2/rollups", params=rng | {"format": "csv"}, headers=h)).text
    assert text.splitlines()[0].startswith("start,start_ms,n,") and len(text.splitlines()) == 2


async def _stream(app: Any, path: str, headers: dict[str, str]) -> tuple[int, int, int, dict[str, str]]:
    """Call the ASGI app directly and drop each chunk as it comes: (status, bytes, chunks, headers)."""
    raw_path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": raw_path, "raw_path": raw_path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()], "server": ("t", 80),
             "client": ("127.0.0.1", 1)}
    out = {"status": 0, "bytes": 0, "chunks": 0, "lines": 0, "headers": {}}

    done = asyncio.Event()
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            out["bytes"] += len(message["body"])
            out["chunks"] += 1
            out["lines"] += message["body"].count(b"\n")
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    return out["status"], out["bytes"], out["chunks"], out["headers"] | {"lines": str(out["lines"])}


async def test_csv_streams_a_large_range_in_bounded_memory(api: Api) -> None:
    n = 100_000  # one reading a second for ~28 hours
    for start in range(0, n, 5000):
        rows = [("stack-big", "so2", T0 + i * 1000, float(i % 997), "mg/m³", "N") for i in range(start, start + 5000)]
        await api.store.data.commit_many(
            [PendingBatch.from_rows("gw-a", 100 + start // 5000, T0, T0, f"d{start}", b"{}", rows)])
    app = api.client._transport.app  # type: ignore[attr-defined]
    base = f"{SITE}/gateways/gw-a/devices/stack-big/points/so2/readings?start={T0}&format=csv&end="

    async def measure(rows: int) -> tuple[int, int, float]:
        tracemalloc.start()
        try:
            t = time.perf_counter()
            status, size, chunks, headers = await _stream(app, base + str(T0 + rows * 1000), api.as_("analyst"))
            seconds = time.perf_counter() - t
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert status == 200 and headers["content-type"].startswith("text/csv")
        assert int(headers["lines"]) == rows + 1  # header + every reading, once
        assert chunks >= rows // 2000  # one chunk per keyset page: streamed, not built whole
        return size, peak, seconds

    small_size, small_peak, _ = await measure(n // 10)
    size, peak, seconds = await measure(n)
    # Ten times the rows, about the same memory: what a stream holds does not grow with the range.
    assert size > 9 * small_size and peak < 1.5 * small_peak + 500_000, (small_peak, peak)
    print(f"CSV: {n} rows, {size / 1e6:.1f} MB in {seconds:.1f} s (traced); peak {peak / 1e6:.1f} MB,"
          f" {small_peak / 1e6:.1f} MB for a tenth")
    path = base + str(T0 + 2 * 86_400_000)
    # The first rows are right, and JSON pages of the same range are bounded to 5000.
    r = await api.client.get(path.replace("&format=csv", "&limit=3").split("?", 1)[0],
                             params={"start": str(T0), "end": str(T0 + 86_400_000), "limit": 3},
                             headers=api.as_("analyst"))
    assert [x["value"] for x in r.json()["items"]] == [0.0, 1.0, 2.0]
    first = (await api.client.get(path, headers=api.as_("analyst"))).text.splitlines()[:2]
    assert list(csv.reader(io.StringIO("\n".join(first))))[1][:6] == [
        "gw-a", "stack-big", "so2", format_ts(T0), str(T0), "0.0"]
