"""The console's API (cloud/routes_console.py) on both back ends: the tree, live events, replays,
claim tokens, anchoring status and the dashboard figures, each within its tenant and role."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx

from carbonlink.cloud import provisioning
from carbonlink.cloud.carbon import sqlstore
from carbonlink.cloud.carbon.dashboard import dashboard_figures
from carbonlink.cloud.routes_console import live_events

from .conftest import T0, Api


async def test_tree_has_sites_gateways_devices_points_of_the_tenant_only(api: Api) -> None:
    tree = (await api.client.get("/api/console/tree", headers=api.as_("analyst"))).json()
    assert tree["tenant"] == "acme"
    (site,) = tree["sites"]
    (gw,) = site["gateways"]
    assert site["id"] == "plant-a" and gw["id"] == "gw-a"
    (dev,) = gw["devices"]
    assert dev["id"] == "cems-1" and {p["point"] for p in dev["points"]} == {"so2", "nox"}
    assert "gw-b" not in json.dumps(tree)


async def test_live_stream_sends_everything_then_only_changes(api: Api) -> None:
    events = [e async for e in live_events(api.store, "acme", interval_s=0, rounds=2)]
    text = b"".join(events).decode()
    first, second = text.split("event: latest", 1)[0], b"".join(events[4:]).decode()
    assert "event: presence" in first and "event: alerts" in first and '"gw-a"' in first and "gw-b" not in text
    assert "event: latest" in text and second == ""  # nothing changed in round two: nothing sent
    assert (await api.client.get("/api/live")).status_code == 401  # needs credentials like any /api call


async def test_replay_is_for_operators_and_within_the_tenant(api: Api) -> None:
    await api.store.audit.dead_letter("cl/plant-a/gw-a/batches", b"{}", "bad json", "gw-a", T0)
    await api.store.audit.dead_letter("cl/plant-b/gw-b/batches", b"{}", "bad json", "gw-b", T0)
    mine, theirs = [d["id"] for d in await api.store.audit.dead_letters(10)][::-1]
    assert (await api.client.post(f"/api/dead-letters/{mine}/replay", headers=api.as_("analyst"))).status_code == 403
    assert (await api.client.post(f"/api/dead-letters/{theirs}/replay", headers=api.as_("operator"))).status_code == 404
    r = await api.client.post(f"/api/dead-letters/{mine}/replay", headers=api.as_("operator"))
    assert r.status_code == 200 and r.json()["outcome"] == "still-refused" and r.json()["detail"]


async def test_claim_tokens_list_never_shows_a_token(api: Api) -> None:
    token, _ = await provisioning.issue_claim_token(api.store, "acme", "plant-a", 3600)
    r = await api.client.get("/api/provision/claim-tokens", headers=api.as_("installer"))
    assert r.status_code == 200 and token not in r.text
    assert [x["state"] for x in r.json()["items"]] == ["open"]
    assert (await api.client.get("/api/provision/claim-tokens", headers=api.as_("analyst"))).status_code == 403
    assert (await api.client.get("/api/provision/claim-tokens", headers=api.as_("other-admin"))).json()["items"] == []


async def test_anchors_of_the_tenant(api: Api) -> None:
    r = await api.client.get("/api/anchors", headers=api.as_("auditor"))
    assert r.status_code == 200 and r.json() == {"items": [], "count": 0, "states": {}}


async def test_dashboard_figures_equal_the_accounts(api: Api) -> None:
    db = api.store.db
    for i, site in enumerate(("plant-a", "plant-a2")):
        await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                         " created_ms) VALUES (?, ?, 'acme', ?, 'cems', 101325, '{}', 0)", f"s{i}", 900 + i, site)
    await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config, created_ms)"
                     " VALUES ('x', 999, 'other', 'plant-b', 'cems', 101325, '{}', 0)")
    t0 = 1_735_660_800_000  # 2025-01-01 00:00 +08:00
    for src in (900, 901, 999):
        for h in range(0, 24 * 40, 7):
            status = "valid" if h % 5 else "substituted" if h % 2 else "missing"
            await db.execute("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, co2_g, so2_g,"
                             " nox_g, dust_g, formula_version) VALUES (?, ?, ?, 5, 60, ?, ?, ?, ?, 't')",
                             src, t0 + h * 3_600_000, status, 1_234_567 * (h + 1), 1001 * h, 7, 3)
    await sqlstore.refresh_days(db, [900, 901, 999], t0, t0 + 40 * 86_400_000)  # as the accounting keeps them
    for gran in ("day", "month", "year"):
        got = await dashboard_figures(db, "acme", 2025, gran, 480)
        want = await sqlstore.periods(db, "acme", gran, t0, t0 + 365 * 86_400_000, tz_offset_min=480)
        shown = set(got["items"][0])  # the dashboard shows scope 1; the accounts add solar and sinks beside it
        assert got["items"] == [{k: v for k, v in x.items() if k in shown} for x in want]
        total = sum(Decimal(x["scope1_t"]) for x in want)
        assert sum(Decimal(x["scope1_t"]) for x in got["totals"]) == total
        stacks = await dashboard_figures(db, "acme", 2025, gran, 480, by="stack")
        assert {x["stack"] for x in stacks["items"]} == {"s0", "s1"} and stacks["totals"] == got["totals"]
    r = await api.client.get("/api/carbon/dashboard", params={"year": 2025, "granularity": "month"},
                             headers=api.as_("analyst"))
    assert r.status_code == 200 and {x["site"] for x in r.json()["items"]} == {"plant-a", "plant-a2"}
    bal = await api.client.get("/api/carbon/balance", params={"year": 2025, "as_of": "2025-02-01"},
                               headers=api.as_("analyst"))
    assert bal.status_code == 200 and bal.json()["allowance_t"] is None and "carbonlink" in bal.json()["hint"]


async def test_dashboard_is_gzipped_when_accepted_and_answers_304_to_its_etag(api: Api) -> None:
    db = api.store.db
    await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                     " created_ms) VALUES ('s0', 900, 'acme', 'plant-a', 'cems', 101325, '{}', 0)")
    t0 = 1_735_660_800_000  # 2025-01-01 00:00 +08:00
    await db.executemany("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, co2_g, so2_g,"
                         " nox_g, dust_g, formula_version) VALUES (900, ?, 'valid', 5, 60, ?, 1, 2, 3, 't')",
                         [(t0 + h * 3_600_000, 1_000_003 * h) for h in range(0, 24 * 365, 3)])
    await sqlstore.refresh_days(db, [900], t0, t0 + 365 * 86_400_000)
    url, q = "/api/carbon/dashboard", {"year": 2025, "granularity": "day"}

    async def get(**headers: str) -> httpx.Response:
        return await api.client.get(url, params=q, headers={**api.as_("analyst"), **headers})

    plain = await get(**{"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers and len(plain.content) > 16_384
    zipped = await get(**{"Accept-Encoding": "br;q=1, gzip;q=0.5"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.headers["vary"] == "Accept-Encoding"
    assert zipped.content == plain.content  # httpx undoes the gzip: the same body
    assert int(zipped.headers["content-length"]) < len(plain.content) // 4
    assert "content-encoding" not in (await get(**{"Accept-Encoding": "gzip;q=0, *"})).headers
    assert "content-encoding" not in (await get(**{"Accept-Encoding": "gzip;q=nonsense"})).headers
    # an ETag per representation; 304 without a body to a client that has it
    assert plain.headers["etag"] != zipped.headers["etag"]
    again = await get(**{"Accept-Encoding": "identity", "If-None-Match": f'"x", W/{plain.headers["etag"]}'})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == plain.headers["etag"]
    assert (await get(**{"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]})).status_code == 304
    assert (await get(**{"Accept-Encoding": "gzip", "If-None-Match": plain.headers["etag"]})).status_code == 200
    # the figures change: the old ETag no longer matches
    await db.execute("UPDATE carbon_hours SET co2_g = co2_g + 1 WHERE src = 900 AND hour_ms = ?", t0)
    await sqlstore.refresh_days(db, [900], t0, t0 + 3_600_000)
    changed = await get(**{"Accept-Encoding": "identity", "If-None-Match": plain.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != plain.headers["etag"]
    assert (await api.client.get(url, params=q, headers={"If-None-Match": "*"})).status_code == 401  # credentials first
