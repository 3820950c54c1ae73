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


async def test_concentrations_against_limits_corrected_to_reference_o2(api: Api) -> None:
    await seed_carbon(api)
    q = {"start": str(MARCH * 1000), "end": str((MARCH + 24 * H) * 1000)}
    r = await api.client.get("/api/carbon/sources/acme-stack-1/concentrations", params=q, headers=api.as_("analyst"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["o2_ref_pct"] == "6" and body["limits"]["so2"]["value"] == "100"  # coal boiler, GB 13223-2011
    assert len(body["items"]) == 24
    for item in body["items"]:
        o2 = D(item["o2_pct"])
        for p in ("so2", "nox", "dust"):
            c = item[p]
            # HJ 75-2017 App. A, computed here independently: C = C' (21 - 6) / (21 - O2)
            want = D(c["measured"]) * 15 / (21 - D(repr(float(o2))))
            assert abs(D(c["corrected"]) - want) <= D("0.002") * max(want, D(1)) + D("0.01"), (p, c, o2)
            assert c["above"] == (D(c["corrected"]) > D(body["limits"][p]["value"]))
    for p in ("so2", "nox", "dust"):
        assert body["hours_judged"][p] == 24
        assert body["hours_above"][p] == sum(1 for i in body["items"] if i[p]["above"])
    # an hour of SO2 far above the limit (its rollup as a spike would leave it) is judged above
    hour = (MARCH + 5 * H) * 1000
    await api.store.db.execute("UPDATE rollup_hour SET vsum = vsum * 50 WHERE hour_ms = ? AND series IN"
                               " (SELECT series FROM carbon_points WHERE source_id = 'acme-stack-1'"
                               " AND role = 'so2')", hour)
    spiked = (await api.client.get("/api/carbon/sources/acme-stack-1/concentrations", params=q,
                                   headers=api.as_("analyst"))).json()
    assert [i["so2"]["above"] for i in spiked["items"] if i["hour_ms"] == hour] == [True]
    assert spiked["hours_above"]["so2"] == body["hours_above"]["so2"] + (0 if [
        i for i in body["items"] if i["hour_ms"] == hour and i["so2"]["above"]] else 1)
    hidden = await api.client.get("/api/carbon/sources/other-stack-1/concentrations", params=q,
                                  headers=api.as_("analyst"))
    assert hidden.status_code == 404
    long = {"start": str(MARCH * 1000), "end": str((MARCH + 100 * 24 * H) * 1000)}
    too_long = await api.client.get("/api/carbon/sources/acme-stack-1/concentrations", params=long,
                                    headers=api.as_("analyst"))
    assert too_long.status_code == 422 and "at most" in too_long.text
