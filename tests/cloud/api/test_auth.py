"""Authentication and roles: no credentials → 401, a role without the right → 403, each role's allowed actions."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from pydantic import ValidationError

from carbonlink.cloud.api import create_app
from carbonlink.cloud.commands import ControlLink
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import ROLES
from tests.cloud.api.conftest import JWT_SECRET, Api

PROTECTED = [
    ("GET", "/api/gateways"), ("GET", "/api/devices"), ("GET", "/api/latest"), ("GET", "/api/stats"),
    ("GET", "/api/readings?device=cems-1"), ("GET", "/api/dead-letters"), ("GET", "/api/tenants"),
    ("GET", "/api/tenants/acme/sites/plant-a/gateways/gw-a/devices/cems-1/points"),
    ("GET", "/api/gateways/gw-a/gaps"), ("POST", "/api/gateways/gw-a/revoke"), ("GET", "/api/auth/me"),
    ("GET", "/api/rollups?device=cems-1&start=0&end=3600000"),
]


def assert_problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_no_or_bad_credentials_get_401(api: Api, method: str, path: str) -> None:
    r = await api.client.request(method, path)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    for headers in ({"Authorization": "Bearer clk_000000000000_nope"}, {"X-API-Key": "nonsense"},
                    {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic dXNlcjpwdw=="}):
        assert_problem(await api.client.request(method, path, headers=headers), 401)


async def test_health_console_and_docs_are_open(api: Api) -> None:
    assert (await api.client.get("/health")).json()["status"] == "ok"
    assert (await api.client.get("/")).status_code == 200
    assert (await api.client.get("/console/app.js")).status_code == 200
    assert (await api.client.get("/docs")).status_code == 200


async def test_both_headers_carry_an_api_key(api: Api) -> None:
    key = api.keys["analyst"]
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        me = (await api.client.get("/api/auth/me", headers=headers)).json()
        assert me["tenant"] == "acme" and me["role"] == "analyst" and me["permissions"] == ["read"]


# What each role may do, one request per permission; "ok" means not 401/403.
ACTIONS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "read": ("GET", "/api/tenants/acme/sites/plant-a/gateways", None),
    "audit": ("GET", "/api/tenants/acme/dead-letters", None),
    "provision": ("POST", "/api/provision/claim-tokens", {"tenant": "acme", "site": "plant-a"}),
    "manage": ("GET", "/api/tenants/acme/api-keys", None),
}
ALLOWED = {
    "admin": {"read", "audit", "provision", "manage"},
    "operator": {"read", "audit", "provision"},
    "installer": {"read", "audit", "provision"},
    "analyst": {"read"},
    "auditor": {"read", "audit"},
}


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_may_do_exactly_its_actions(api: Api, role: str) -> None:
    for action, (method, path, body) in ACTIONS.items():
        r = await api.client.request(method, path, json=body, headers=api.as_(role))
        if action in ALLOWED[role]:
            assert r.status_code in (200, 201), (role, action, r.text)
        else:
            body_ = assert_problem(r, 403)
            assert role in body_["detail"], body_


async def test_control_needs_operator_or_admin_and_the_gateway_of_the_tenant(api: Api) -> None:
    app = create_app(api.store, settings=api.settings, control=ControlLink(api.store, "mqtt://127.0.0.1:1"))
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        patch = {"state": {"desired": {"log_level": "DEBUG"}}}
        for role in ("analyst", "auditor", "installer"):
            assert (await c.get("/api/gateways/gw-a/shadow", headers=api.as_(role))).status_code == 200
            assert_problem(await c.patch("/api/gateways/gw-a/shadow", json=patch, headers=api.as_(role)), 403)
            assert_problem(await c.post("/api/gateways/gw-a/commands", json={"name": "read_now"},
                                        headers=api.as_(role)), 403)
        for role in ("operator", "admin"):
            assert (await c.get("/api/gateways/gw-a/shadow", headers=api.as_(role))).status_code == 200
            # Another tenant's gateway does not exist for this caller, whatever the role.
            assert_problem(await c.get("/api/gateways/gw-b/shadow", headers=api.as_(role)), 404)
            assert_problem(await c.patch("/api/gateways/gw-b/shadow", json=patch, headers=api.as_(role)), 404)
        assert_problem(await c.get("/api/gateways/gw-a/shadow"), 401)


async def test_admin_manages_users_and_keys_and_login_tokens_work(api: Api) -> None:
    admin = api.as_("admin")
    r = await api.client.post("/api/tenants/acme/users", headers=admin,
                              json={"username": "ana", "role": "analyst", "password": "correct horse battery"})
    assert r.status_code == 201 and r.json()["role"] == "analyst" and "password" not in r.text
    assert_problem(await api.client.post("/api/tenants/acme/users", headers=admin, json={
        "username": "ana", "role": "analyst", "password": "another long one"}), 409)
    assert_problem(await api.client.post("/api/tenants/acme/users", headers=admin, json={
        "username": "bob", "role": "root", "password": "correct horse battery"}), 422)
    # Login: a short-lived HS256 token with the user's tenant and role.
    assert_problem(await api.client.post("/api/auth/token", json={"username": "ana", "password": "wrong"}), 401)
    assert_problem(await api.client.post("/api/auth/token", json={"username": "nobody", "password": "x"}), 401)
    r = await api.client.post("/api/auth/token", json={"username": "ana", "password": "correct horse battery"})
    assert r.status_code == 200 and r.json()["expires_in"] == api.settings.jwt_ttl_s
    token = r.json()["access_token"]
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])
    assert claims["tenant"] == "acme" and claims["role"] == "analyst" and claims["exp"] - claims["iat"] == 900
    bearer = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/api/auth/me", headers=bearer)).json()["subject"] == "ana"
    assert_problem(await api.client.get("/api/tenants/acme/api-keys", headers=bearer), 403)
    # Expired, forged, or of a deleted user: refused.
    expired = jwt.encode({**claims, "exp": int(time.time()) - 5}, JWT_SECRET, algorithm="HS256")
    assert "expired" in assert_problem(await api.client.get("/api/auth/me", headers={
        "Authorization": f"Bearer {expired}"}), 401)["detail"]
    forged = jwt.encode({**claims, "role": "admin"}, "x" * 40, algorithm="HS256")
    assert_problem(await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {forged}"}), 401)
    none_alg = jwt.encode({**claims, "role": "admin"}, None, algorithm="none")
    assert_problem(await api.client.get("/api/auth/me", headers={"Authorization": f"Bearer {none_alg}"}), 401)
    assert (await api.client.delete("/api/tenants/acme/users/ana", headers=admin)).status_code == 204
    assert_problem(await api.client.get("/api/auth/me", headers=bearer), 401)
    # API keys: shown once, listed without the secret, revoked at once.
    r = await api.client.post("/api/tenants/acme/api-keys", headers=admin, json={"role": "auditor", "name": "ci"})
    assert r.status_code == 201
    made = r.json()
    listed = (await api.client.get("/api/tenants/acme/api-keys", headers=admin)).json()
    assert made["id"] in {k["id"] for k in listed} and made["key"] not in str(listed)
    new = {"X-API-Key": made["key"]}
    assert (await api.client.get("/api/auth/me", headers=new)).json()["role"] == "auditor"
    assert (await api.client.delete(f"/api/tenants/acme/api-keys/{made['id']}", headers=admin)).status_code == 204
    assert "revoked" in assert_problem(await api.client.get("/api/auth/me", headers=new), 401)["detail"]
    # Another tenant's admin cannot touch acme's keys or users: they do not exist for it.
    other = api.as_("other-admin")
    assert_problem(await api.client.delete(f"/api/tenants/acme/api-keys/{made['id']}", headers=other), 404)
    assert_problem(await api.client.get("/api/tenants/acme/users", headers=other), 404)


def test_settings_refuse_default_secrets_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CARBONLINK_JWT_SECRET", "CARBONLINK_METRICS_TOKEN", "CARBONLINK_ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CARBONLINK_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="set CARBONLINK_JWT_SECRET"):
        CloudSettings()
    for weak in ("changethis", "short-secret"):
        monkeypatch.setenv("CARBONLINK_JWT_SECRET", weak)
        with pytest.raises(ValidationError, match="default or short secret"):
            CloudSettings()
    monkeypatch.setenv("CARBONLINK_JWT_SECRET", "s" * 32)
    monkeypatch.setenv("CARBONLINK_METRICS_TOKEN", "changethis")
    with pytest.raises(ValidationError, match="METRICS_TOKEN"):
        CloudSettings()
    monkeypatch.delenv("CARBONLINK_METRICS_TOKEN")
    assert CloudSettings().jwt_key == "s" * 32
    # Development: no secret needed, a random one per process.
    monkeypatch.setenv("CARBONLINK_ENVIRONMENT", "development")
    monkeypatch.delenv("CARBONLINK_JWT_SECRET")
    a, b = CloudSettings(), CloudSettings()
    assert len(a.jwt_key) == 64 and a.jwt_key != b.jwt_key
