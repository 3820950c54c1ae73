"""Logins and small holes (issue 10 §7), on SQLite and PostgreSQL: throttling with backoff, password checks
in a bounded pool, NUL bytes, NaN in a shadow, short JWT secrets, usernames per tenant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import create_user
from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import open_store
from carbonlink.cloud.throttle import Limits, LoginThrottle
from tests.cloud.api.conftest import Api
from tests.cloud.api.test_auth import assert_problem
from tests.cloud.store.conftest import throwaway_store

PW = "correct horse battery"


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


@asynccontextmanager
async def client(app: FastAPI, host: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(host, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c


def login(c: httpx.AsyncClient, username: str, password: str = PW) -> object:
    return c.post("/api/auth/token", json={"username": username, "password": password})


async def test_failed_logins_back_off_with_429_and_retry_after(api: Api) -> None:
    await create_user(api.store, "ada", "acme", "analyst", PW)
    clock = Clock()
    app = create_app(api.store, settings=api.settings)
    app.state.auth.throttle = LoginThrottle(per_user=Limits(free=5), per_address=Limits(free=50), clock=clock)
    async with client(app, "192.0.2.10") as c:
        for _ in range(5):
            assert_problem(await login(c, "ada@acme", "wrong"), 401)  # type: ignore[arg-type]
        r = await login(c, "ada@acme", "wrong")  # type: ignore[misc]
        assert_problem(r, 429)
        assert r.headers["retry-after"] == "1"  # type: ignore[attr-defined]
        # While closed even the right password is not checked; after the wait it works and clears the count.
        assert_problem(await login(c, "ada@acme"), 429)  # type: ignore[arg-type]
        clock.t += 1
        assert (await login(c, "ada@acme")).status_code == 200  # type: ignore[attr-defined]
        assert (await login(c, "ada@acme", "wrong")).status_code == 401  # type: ignore[attr-defined]


async def test_a_parallel_flood_of_bad_logins_does_not_hold_up_a_good_one(api: Api) -> None:
    await create_user(api.store, "ada", "acme", "analyst", PW)
    await create_user(api.store, "bob", "acme", "analyst", PW)
    app = create_app(api.store, settings=api.settings)
    workers = app.state.auth.workers
    async with client(app, "203.0.113.66") as attacker, client(app, "198.51.100.5") as user:
        flood = [login(attacker, "ada@acme", f"guess-{i}") for i in range(200)]
        results = await asyncio.gather(*flood, login(user, "bob@acme"))  # type: ignore[call-overload]
    codes = [r.status_code for r in results[:-1]]
    assert results[-1].status_code == 200, results[-1].text
    # The throttle let through at most its allowance (5 per user) of the 200; the rest got 429 without a
    # hash, so the good login waited behind at most those few password checks.
    assert codes.count(401) <= 5 and codes.count(429) >= 195
    assert workers.calls <= 6


async def test_nul_bytes_are_422_not_500(api: Api) -> None:
    analyst = api.as_("analyst")
    for path in ("/api/readings?device=cems%00x", "/api/latest?device=%00", "/api/gateways/gw%00a/gaps",
                 "/api/tenants/acme%00/sites"):
        assert_problem(await api.client.get(path, headers=analyst), 422)
    # The unauthenticated login too, in the username, the password and the tenant.
    for body in ({"username": "ada\x00", "password": "x"}, {"username": "ada", "password": "x\x00y"},
                 {"username": "ada", "password": "x", "tenant": "ac\x00me"}):
        assert_problem(await api.client.post("/api/auth/token", json=body), 422)


async def test_shadow_patch_with_nan_or_infinity_is_422_and_never_stored_or_published(api: Api) -> None:
    control = ControlLink(api.store, "mqtt://127.0.0.1:1")
    published: list[tuple[str, bytes]] = []

    async def record(topic: str, payload: bytes, retain: bool = False) -> None:
        published.append((topic, payload))

    control.shadows.publish = record
    app = create_app(api.store, settings=api.settings, control=control)
    op = api.as_("operator") | {"content-type": "application/json"}
    async with client(app, "192.0.2.1") as c:
        before = (await c.get("/api/gateways/gw-a/shadow", headers=op)).json()
        before.pop("timestamp")
        for text in ('{"state": {"desired": {"setpoint": NaN}}}', '{"state": {"desired": {"x": [1, -Infinity]}}}',
                     '{"state": {"desired": {"a": {"b": Infinity}}}}'):
            assert_problem(await c.patch("/api/gateways/gw-a/shadow", content=text, headers=op), 422)
        after = (await c.get("/api/gateways/gw-a/shadow", headers=op)).json()
        after.pop("timestamp")
        assert after == before
        assert published == []
        # The words inside a string are fine.
        ok = await c.patch("/api/gateways/gw-a/shadow", content='{"state": {"desired": {"note": "NaN Infinity"}}}',
                           headers=op)
        assert ok.status_code == 200, ok.text


async def test_usernames_are_per_tenant_and_logins_name_the_tenant(api: Api) -> None:
    acme, other = api.as_("admin"), api.as_("other-admin")
    r = await api.client.post("/api/tenants/acme/users", headers=acme,
                              json={"username": "ana", "role": "analyst", "password": PW})
    assert r.status_code == 201
    # While one tenant has the name, a bare login still works (logins from before keep working).
    assert (await login(api.client, "ana")).status_code == 200  # type: ignore[attr-defined]
    # Another tenant makes its own ana: no 409, nothing learnt about acme.
    r = await api.client.post("/api/tenants/other/users", headers=other,
                              json={"username": "ana", "role": "admin", "password": PW + " other"})
    assert r.status_code == 201, r.text
    assert_problem(await api.client.post("/api/tenants/other/users", headers=other,
                                         json={"username": "ana", "role": "admin", "password": PW}), 409)
    # Now a login names its tenant; a bare name is refused like a wrong password, with the hint.
    r = await login(api.client, "ana")  # type: ignore[misc]
    assert "username@tenant" in assert_problem(r, 401)["detail"]
    t1 = (await login(api.client, "ana@acme")).json()["access_token"]  # type: ignore[attr-defined]
    r = await api.client.post("/api/auth/token", json={"username": "ana", "tenant": "other", "password": PW + " other"})
    t2 = r.json()["access_token"]
    me1 = (await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {t1}"})).json()
    me2 = (await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {t2}"})).json()
    assert (me1["tenant"], me1["role"]) == ("acme", "analyst") and (me2["tenant"], me2["role"]) == ("other", "admin")
    assert_problem(await login(api.client, "ana@acme", PW + " other"), 401)  # type: ignore[arg-type]
    assert_problem(await api.client.post("/api/auth/token", json={"username": "ana@acme", "tenant": "other",
                                                                  "password": PW}), 422)
    # Deleting acme's ana leaves other's: its token still works.
    assert (await api.client.delete("/api/tenants/acme/users/ana", headers=acme)).status_code == 204
    assert_problem(await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {t1}"}), 401)
    assert (await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {t2}"})).status_code == 200


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migration_10_keeps_existing_users_and_logins(kind: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from carbonlink.cloud.store import migrations_postgres, migrations_sqlite, postgres, sqlite

    module, steps = (sqlite, migrations_sqlite) if kind == "sqlite" else (postgres, migrations_postgres)
    full = module.MIGRATIONS
    monkeypatch.setattr(module, "MIGRATIONS", full[:full.index(steps.USERS_PER_TENANT)])  # the schema before
    async with throwaway_store(kind, tmp_path, "clmig_") as store:
        await create_user(store, "legacy", "acme", "admin", PW)
        monkeypatch.setattr(module, "MIGRATIONS", full)
        assert await store.migrate() == len(full)
        app = create_app(store, settings=CloudSettings(environment="production", jwt_secret="k" * 40))
        async with client(app, "192.0.2.3") as c:
            assert (await login(c, "legacy")).status_code == 200  # type: ignore[attr-defined]
            assert (await login(c, "legacy@acme")).status_code == 200  # type: ignore[attr-defined]
        assert await create_user(store, "legacy", "other", "admin", PW)
        assert not await create_user(store, "legacy", "acme", "admin", PW)


def test_short_jwt_secrets_are_refused_in_every_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CARBONLINK_JWT_SECRET", "CARBONLINK_METRICS_TOKEN", "CARBONLINK_ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    for env in ("development", "production"):
        for weak in ("secret", "changethis", "x" * 31):
            with pytest.raises(ValidationError) as info:
                CloudSettings(environment=env, jwt_secret=weak)
            assert "CARBONLINK_JWT_SECRET" in str(info.value) and "openssl rand -hex 32" in str(info.value)
    # The development default is its own random key, long enough.
    assert len(CloudSettings(environment="development").jwt_key) == 64


async def test_sqlite_store_default_path_stays_private(tmp_path: Path) -> None:
    async with open_store(f"sqlite:///{tmp_path / 'a' / 'b.sqlite'}"):
        pass
    assert (tmp_path / "a").stat().st_mode & 0o077 == 0
