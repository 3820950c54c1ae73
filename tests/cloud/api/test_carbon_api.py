"""The carbon endpoints: accounts per site and period, sources, provenance, forecast; tenants kept apart."""

from __future__ import annotations

from decimal import Decimal as D

from carbonlink.cloud.carbon.cems import StackConfig
from carbonlink.cloud.carbon.sqlstore import account_sources, register_stack, set_allowance
from carbonlink.simulators.cems import CemsStack
from tests.cloud.api.conftest import Api
from tests.cloud.carbon.simdata import MARCH, H, stack_hours
from tests.cloud.carbon.sqldata import add_series, rollup_rows, write_rollups

DAYS = 3


async def seed_carbon(api: Api) -> None:
    db = api.store.db
    hours = stack_hours(CemsStack(seed=7, clock=lambda: MARCH), MARCH, DAYS * 24, step_s=900, fuel=False)
    srcs = []
    for gw, tenant in (("gw-a", "acme"), ("gw-b", "other")):
        series = await add_series(db, gw, "stack-1")
        await write_rollups(db, rollup_rows(series, hours))
        srcs.append(await register_stack(db, tenant=tenant, site=f"site-{tenant}", gateway=gw, device="stack-1",
                                         config=StackConfig(f"{tenant}-stack-1", p_atm_pa=D(101325)),
                                         pressure_kind="static"))
    await account_sources(db, srcs, MARCH * 1000, (MARCH + DAYS * 24 * H) * 1000)


async def test_accounts_by_day_and_month_for_the_callers_tenant_only(api: Api) -> None:
    await seed_carbon(api)
    q = {"start": str(MARCH * 1000), "end": str((MARCH + DAYS * 24 * H) * 1000)}
    r = await api.client.get("/api/carbon/accounts", params={**q, "granularity": "day"}, headers=api.as_("analyst"))
    assert r.status_code == 200, r.text
    days = r.json()["items"]
    assert [d["period"] for d in days] == ["2023-03-01", "2023-03-02", "2023-03-03"]
    assert {d["site"] for d in days} == {"site-acme"}
    assert all(d["coverage"] == {"valid": 24, "substituted": 0, "missing": 0} for d in days)
    month = (await api.client.get("/api/carbon/accounts", params={**q, "granularity": "month"},
                                  headers=api.as_("analyst"))).json()["items"]
    assert len(month) == 1 and D(month[0]["scope1_t"]) == sum(D(d["scope1_t"]) for d in days) > 0
    other = (await api.client.get("/api/carbon/sources", headers=api.as_("other-admin"))).json()["items"]
    assert [s["source_id"] for s in other] == ["other-stack-1"]
    bad = await api.client.get("/api/carbon/accounts", params={**q, "granularity": "week"}, headers=api.as_("analyst"))
    assert bad.status_code == 422
    assert (await api.client.get("/api/carbon/accounts", params=q)).status_code == 401


async def test_provenance_and_forecast(api: Api) -> None:
    await seed_carbon(api)
    hour = (MARCH + 5 * H) * 1000
    r = await api.client.get(f"/api/carbon/sources/acme-stack-1/hours/{hour}", headers=api.as_("auditor"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hour"]["status"] == "valid" and len(body["inputs"]) == 9
    assert all(i["valid_minutes"] == 60 for i in body["inputs"])
    hidden = await api.client.get(f"/api/carbon/sources/other-stack-1/hours/{hour}", headers=api.as_("auditor"))
    assert hidden.status_code == 404
    f = await api.client.get("/api/carbon/forecast", params={"year": 2023, "as_of": "2023-03-03"},
                             headers=api.as_("analyst"))
    assert f.status_code == 404 and "allowance" in f.text
    await set_allowance(api.store.db, "acme", 2023, D(1000))
    f = await api.client.get("/api/carbon/forecast", params={"year": 2023, "as_of": "2023-03-03"},
                             headers=api.as_("analyst"))
    assert f.status_code == 409 and "2022-03" in f.text  # no complete month this year, none last year
    formulas = (await api.client.get("/api/carbon/formulas", headers=api.as_("analyst"))).json()["items"]
    assert "co2_cems" in {x["name"] for x in formulas}
