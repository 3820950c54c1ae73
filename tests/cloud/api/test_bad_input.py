"""Bad input gets a 4xx problem+json and changes nothing; bad readings go to dead letters with the reason."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from carbonlink.cloud.api import create_app
from carbonlink.cloud.ingest import IngestProcessor, Outcome
from carbonlink.kernel.wire import Reading
from tests.cloud.api.conftest import T0, Api, signed
from tests.cloud.api.test_auth import assert_problem

DEV = "/api/tenants/acme/sites/plant-a/gateways/gw-a/devices/cems-1"
DAY = 86_400_000


@pytest.mark.parametrize(("path", "params"), [
    (f"{DEV}/readings", {"start": str(T0 + 10), "end": str(T0)}),  # inverted
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0)}),  # empty
    (f"{DEV}/readings", {"start": str(T0)}),  # unbounded: no end
    (f"{DEV}/readings", {"end": str(T0)}),  # unbounded: no start
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0 + 40 * DAY)}),  # longer than a JSON page may cover
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0 + 500 * DAY), "format": "csv"}),
    (f"{DEV}/readings", {"start": "yesterday", "end": str(T0)}),
    (f"{DEV}/readings", {"start": "1e12", "end": str(T0)}),
    (f"{DEV}/readings", {"start": "-5", "end": str(T0)}),
    (f"{DEV}/readings", {"start": "9" * 40, "end": "9" * 41}),
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0 + DAY), "limit": 0}),
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0 + DAY), "cursor": "nonsense"}),
    (f"{DEV}/readings", {"start": str(T0), "end": str(T0 + DAY), "format": "xml"}),
    (f"{DEV}/points/so2/rollups", {"start": str(T0), "end": str(T0 + 500 * DAY)}),
    ("/api/readings", {"device": "cems-1", "start": str(T0 + 10), "end": str(T0)}),
    ("/api/readings", {"device": "cems-1", "limit": 100000}),
    ("/api/readings", {}),
    ("/api/rollups", {"device": "cems-1", "start": str(T0)}),
    ("/api/dead-letters", {"limit": -1}),
])
async def test_bad_queries_are_4xx_problems(api: Api, path: str, params: dict[str, object]) -> None:
    r = await api.client.get(path, params=params, headers=api.as_("admin"))
    assert 400 <= r.status_code < 500 and r.status_code not in (401, 403)
    assert_problem(r, r.status_code)


@pytest.mark.parametrize("evil", ["cems-1' OR '1'='1", "x; DROP TABLE readings; --", "%00", "'\"\\", "<script>"])
async def test_injection_like_strings_are_only_data(api: Api, evil: str) -> None:
    h = api.as_("admin")
    r = await api.client.get("/api/readings", params={"device": evil, "point": evil, "gateway": evil[:64]}, headers=h)
    assert r.status_code == 200 and r.json()["items"] == []
    r = await api.client.get(f"/api/tenants/acme/sites/plant-a/gateways/gw-a/devices/{evil}", headers=h)
    assert 400 <= r.status_code < 500
    assert_problem(r, r.status_code)
    r = await api.client.post("/api/auth/token", json={"username": evil, "password": evil})
    assert_problem(r, 401)
    assert (await api.client.get("/api/stats", headers=h)).json()["readings"] == 60


async def test_oversized_bodies_get_413_before_anything_runs(api: Api) -> None:
    big = {"username": "a", "password": "x" * 70_000}  # the test app's limit is 64 KiB
    assert_problem(await api.client.post("/api/auth/token", json=big), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(100):
            yield b"x" * 1024

    assert_problem(await api.client.post("/api/tenants/acme/users", content=chunks(),
                                         headers=api.as_("admin") | {"content-type": "application/json"}), 413)
    assert_problem(await api.client.post("/api/auth/token", content=b"{}", headers={"content-length": "abc"}), 413)
    # Under the limit the body is read as usual.
    assert_problem(await api.client.post("/api/auth/token", json={"username": "a", "password": "b"}), 401)


async def test_malformed_unknown_and_method_errors_are_problems(api: Api) -> None:
    h = api.as_("admin")
    assert_problem(await api.client.post("/api/auth/token", content=b"{not json",
                                         headers={"content-type": "application/json"}), 422)
    assert_problem(await api.client.post("/api/tenants/acme/sites", json={"id": "a/b"}, headers=h), 422)
    assert_problem(await api.client.post("/api/tenants/acme/sites", json={"id": "ok", "extra": 1}, headers=h), 422)
    assert_problem(await api.client.get("/api/nothing-here", headers=h), 404)
    assert_problem(await api.client.delete("/api/gateways", headers=h), 405)


async def test_a_server_error_is_a_500_problem_without_internals(api: Api) -> None:
    app = create_app(api.store, settings=api.settings)

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("password=hunter2 at /srv/secret.py line 3")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                 base_url="http://t") as c:
        r = await c.get("/api/boom", headers={"X-Request-ID": "req-42"})
    body = assert_problem(r, 500)
    assert "hunter2" not in r.text and "secret.py" not in r.text and "Traceback" not in r.text
    assert "req-42" in body["detail"] and r.headers["x-request-id"] == "req-42"


@pytest.mark.parametrize("group", [False, True], ids=["one-by-one", "group-commit"])
async def test_a_reading_in_another_unit_is_a_dead_letter(api: Api, group: bool) -> None:
    p = IngestProcessor(api.store)
    rs = [Reading.make("cems-1", "so2", T0 + 100_000, 1.0, "ppm"),  # registered as mg/m³
          Reading.make("cems-1", "nox", T0 + 100_000, 2.0, "mg/m³"),
          Reading.make("cems-1", "o2", T0 + 100_000, 20.9, "%")]  # a new point: its first unit registers
    b = signed("gw-a", 50, rs)
    topic = "cl/plant-a/gw-a/telemetry"
    out = (await p.handle_many([(topic, b.to_bytes())]))[0] if group else await p.handle(topic, b.to_bytes())
    assert out is Outcome.COMMITTED
    dead = (await api.client.get("/api/tenants/acme/dead-letters", headers=api.as_("auditor"))).json()
    assert len(dead) == 1 and "cems-1/so2" in dead[0]["reason"] and "'ppm'" in dead[0]["reason"]
    assert "mg/m³" in dead[0]["reason"] and dead[0]["gateway"] == "gw-a"
    stats = (await api.client.get("/api/stats", headers=api.as_("auditor"))).json()
    assert stats["readings"] == 62  # nox and o2 stored, so2 not
    pts = (await api.client.get(f"{DEV}/points", headers=api.as_("analyst"))).json()
    assert {x["id"]: x["unit"] for x in pts} == {"nox": "mg/m³", "o2": "%", "so2": "mg/m³"}
    # The other tenant's cems-1/so2 is its own point; and o2 in % is now the rule.
    b2 = signed("gw-a", 51, [Reading.make("cems-1", "o2", T0 + 101_000, 0.2, "ratio")])
    await (p.handle_many([(topic, b2.to_bytes())]) if group else p.handle(topic, b2.to_bytes()))
    assert len((await api.client.get("/api/dead-letters", headers=api.as_("auditor"))).json()) == 2
    assert (await api.client.get("/api/dead-letters", headers=api.as_("other-admin"))).json() == []


async def test_nan_and_infinity_never_reach_storage(api: Api) -> None:
    p = IngestProcessor(api.store)
    raw = signed("gw-a", 60, [Reading.make("cems-1", "so2", T0 + 200_000, 1.5, "mg/m³")]).to_bytes()
    for bad in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        out = await p.handle("cl/plant-a/gw-a/telemetry", raw.replace(b'"value":1.5', b'"value":' + bad))
        assert out is Outcome.REJECTED
    dead = (await api.client.get("/api/dead-letters", headers=api.as_("auditor"))).json()
    assert len(dead) == 4 and all("finite" in d["reason"] for d in dead)
    assert (await api.client.get("/api/stats", headers=api.as_("auditor"))).json()["readings"] == 60
