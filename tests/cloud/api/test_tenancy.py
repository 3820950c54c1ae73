"""Tenant isolation: another tenant's tenant, site, gateway, device, readings and dead letters answer 404."""

from __future__ import annotations

import pytest

from carbonlink.cloud.provisioning import issue_claim_token
from tests.cloud.api.conftest import T0, Api
from tests.cloud.api.test_auth import assert_problem

A = "/api/tenants/acme/sites/plant-a/gateways/gw-a/devices/cems-1"
FOREIGN = [
    "/api/tenants/other", "/api/tenants/other/sites", "/api/tenants/other/sites/plant-b/gateways",
    "/api/tenants/other/sites/plant-b/gateways/gw-b/devices/cems-1/points",
    "/api/tenants/other/dead-letters", "/api/tenants/other/users",
    # acme's own path, another tenant's site or gateway inside it
    "/api/tenants/acme/sites/plant-b", "/api/tenants/acme/sites/plant-b/gateways/gw-b",
    "/api/tenants/acme/sites/plant-a/gateways/gw-b",
    "/api/tenants/acme/sites/plant-a/gateways/gw-b/devices/cems-1/points/so2/readings"
    f"?start={T0}&end={T0 + 3_600_000}",
    "/api/gateways/gw-b/gaps", "/api/gateways/gw-b/late",
    f"/api/proof?gateway=gw-b&device=cems-1&point=so2&ts={T0 + 10_000}",
]


@pytest.mark.parametrize("path", FOREIGN)
async def test_another_tenants_things_are_404(api: Api, path: str) -> None:
    body = assert_problem(await api.client.get(path, headers=api.as_("admin")), 404)
    assert "not found" in body["detail"]


async def test_writes_on_another_tenants_things_are_404(api: Api) -> None:
    admin = api.as_("admin")
    assert_problem(await api.client.post("/api/gateways/gw-b/revoke", headers=admin), 404)
    assert (await api.store.registry.get_gateway("gw-b")).revoked is False  # type: ignore[union-attr]
    assert_problem(await api.client.post("/api/provision/claim-tokens", headers=admin,
                                         json={"tenant": "other", "site": "plant-b"}), 404)
    # A site id of another tenant is not revealed either, inside one's own tenant.
    assert_problem(await api.client.post("/api/provision/claim-tokens", headers=admin,
                                         json={"tenant": "acme", "site": "plant-b"}), 404)
    assert_problem(await api.client.post("/api/tenants/other/sites", headers=admin, json={"id": "x"}), 404)


async def test_flat_listings_show_only_the_callers_tenant(api: Api) -> None:
    for key, gw in (("admin", "gw-a"), ("other-admin", "gw-b")):
        h = api.as_(key)
        assert [g["id"] for g in (await api.client.get("/api/gateways", headers=h)).json()] == [gw]
        assert {d["gateway"] for d in (await api.client.get("/api/devices", headers=h)).json()} == {gw}
        assert {x["gateway"] for x in (await api.client.get("/api/latest", headers=h)).json()} == {gw}
        page = (await api.client.get("/api/readings", params={"device": "cems-1", "limit": 5000}, headers=h)).json()
        assert page["count"] == 60 and {x["gateway"] for x in page["items"]} == {gw}
        # Naming the other tenant's gateway explicitly finds nothing.
        other = "gw-b" if gw == "gw-a" else "gw-a"
        page = (await api.client.get("/api/readings", params={"device": "cems-1", "gateway": other}, headers=h)).json()
        assert page["items"] == []
        roll = (await api.client.get("/api/rollups", headers=h, params={
            "device": "cems-1", "start": str(T0), "end": str(T0 + 3_600_000)})).json()
        assert {i["gateway"] for i in roll["items"]} == {gw}
        avail = (await api.client.get("/api/availability", headers=h, params={
            "device": "cems-1", "start": str(T0), "end": str(T0 + 3_600_000)})).json()
        assert {i["gateway"] for i in avail["items"]} == {gw}
        stats = (await api.client.get("/api/stats", headers=h)).json()
        assert stats["readings"] == 60 and stats["gateways"] == 1
        assert [t["id"] for t in (await api.client.get("/api/tenants", headers=h)).json()] == [
            "acme" if gw == "gw-a" else "other"]


async def test_dead_letters_are_per_tenant(api: Api) -> None:
    await api.store.audit.dead_letter("cl/plant-b/gw-b/telemetry", b"junk-b", "bad b", "gw-b", T0)
    await api.store.audit.dead_letter("cl/plant-a/gw-a/telemetry", b"junk-a", "bad a", "gw-a", T0)
    await api.store.audit.dead_letter("cl/x/gw-unknown/telemetry", b"junk-x", "bad x", "gw-unknown", T0)
    for key, reason in (("auditor", "bad a"), ("other-admin", "bad b")):
        rows = (await api.client.get("/api/dead-letters", headers=api.as_(key))).json()
        assert [r["reason"] for r in rows] == [reason]
    tenant_rows = (await api.client.get("/api/tenants/acme/dead-letters", headers=api.as_("auditor"))).json()
    assert [r["reason"] for r in tenant_rows] == ["bad a"]


async def test_a_claimed_gateway_lands_in_the_tenant_of_its_token(api: Api) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from carbonlink.cloud import provisioning
    from carbonlink.edge.identity import public_key_hex

    token, _ = await issue_claim_token(api.store, "acme", "plant-a", 600)
    await provisioning.claim(api.store, token, "gw-new", "ed25519", public_key_hex(Ed25519PrivateKey.generate()))
    ids = [g["id"] for g in (await api.client.get("/api/tenants/acme/sites/plant-a/gateways",
                                                  headers=api.as_("analyst"))).json()]
    assert ids == ["gw-a", "gw-new"]
    assert_problem(await api.client.get("/api/gateways/gw-new/gaps", headers=api.as_("other-admin")), 404)
