"""The rules API on SQLite and PostgreSQL: versioned rules, 422 with line and column, sets pushed by hash,
alerts with filters, pages and counts, acknowledge and clear, silences, derived readings and provenance."""

from __future__ import annotations

from typing import Any

import pytest

from carbonlink.cloud.store.alerts import AlertChange
from carbonlink.kernel.wire import Reading
from carbonlink.rules.alerts import alert_id
from tests.cloud.api.conftest import T0, Api, signed
from tests.cloud.api.test_auth import assert_problem

HIGH = "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"


async def post_rule(api: Api, body: dict[str, Any], role: str = "operator") -> Any:
    return await api.client.post("/api/rules", json=body, headers=api.as_(role))


async def test_rules_are_versioned_with_who_and_when(api: Api) -> None:
    r = await post_rule(api, {"id": "so2-high", "text": HIGH, "severity": "critical", "version": 1})  # Node-RED
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["rule"]["version"] == 1 and body["rule"]["created_by"].startswith("key:")
    assert body["set"]["version"] == 1 and len(body["set"]["hash"]) == 64
    again = await post_rule(api, {"id": "so2-high", "text": HIGH, "severity": "critical", "version": 1})
    assert again.status_code == 200 and again.json()["set"] is None  # unchanged: no new version
    r = await api.client.put("/api/rules/so2-high", headers=api.as_("admin"),
                             json={"text": HIGH.replace("200", "250"), "base_version": 1, "comment": "tighter"})
    assert r.status_code == 200 and r.json()["rule"]["version"] == 2 and r.json()["rule"]["comment"] == "tighter"
    stale = await api.client.put("/api/rules/so2-high", headers=api.as_("admin"),
                                 json={"text": HIGH, "base_version": 1})
    assert "at version 2, not 1" in assert_problem(stale, 409)["detail"]
    reader = api.as_("analyst")
    listed = (await api.client.get("/api/rules", headers=reader)).json()
    assert [x["id"] for x in listed["items"]] == ["so2-high"] and listed["set"]["version"] == 2
    v1 = (await api.client.get("/api/rules/so2-high?version=1", headers=reader)).json()
    assert "> 200 mg/m3" in v1["text"] and v1["severity"] == "critical"
    versions = (await api.client.get("/api/rules/so2-high/versions", headers=reader)).json()["items"]
    assert [v["version"] for v in versions] == [2, 1] and versions[0]["hash"] != versions[1]["hash"]
    r = await api.client.delete("/api/rules/so2-high", headers=api.as_("operator"))
    assert r.status_code == 200 and r.json()["rule"]["deleted"] and r.json()["rule"]["version"] == 3
    assert_problem(await api.client.get("/api/rules/so2-high", headers=reader), 404)
    assert (await api.client.get("/api/rules/so2-high?version=2", headers=reader)).status_code == 200
    sets = (await api.client.get("/api/rulesets", headers=reader)).json()["items"]
    assert [s["version"] for s in sets] == [3, 2, 1] and sets[0]["rules"] == 0


@pytest.mark.parametrize(("text", "line", "column", "words"), [
    ("SELECT value\nFROM '+/so2'\nWHERE value >> 3", 3, 14, "expected"),
    ("SELECT value FROM '+/so2' WHERE value > 200 kPa AND value < 3 mg/m3", 1, 39, "incompatible units"),
    ("SELECT value FROM '+/so2' WHERE o2 < 20 %", 1, 33, "o2"),  # acme's devices have no point o2
    ("SELECT value FROM '+/co2'", 1, 19, "co2"),
])
async def test_a_rule_that_does_not_compile_is_422_with_line_and_column(api: Api, text: str, line: int,
                                                                        column: int, words: str) -> None:
    body = assert_problem(await post_rule(api, {"id": "bad", "text": text}), 422)
    err = body["errors"][0]
    assert (err["rule"], err["line"], err["column"]) == ("bad", line, column), err
    assert words in (err["message"] + " ".join(err["expected"])) and f"line {line}, column {column}" in body["detail"]
    check = (await api.client.post("/api/rulesets/validate", json={"text": text},
                                   headers=api.as_("analyst"))).json()
    assert check["ok"] is False and check["errors"][0]["line"] == line
    assert_problem(await api.client.get("/api/rules/bad", headers=api.as_("admin")), 404)  # nothing stored


async def test_validate_explains_a_good_rule_and_cloud_webhooks_cannot_reach_the_cloud(api: Api) -> None:
    ok = (await api.client.post("/api/rulesets/validate", headers=api.as_("auditor"), json={
        "text": "SELECT avg(value) AS so2 FROM '+/so2' GROUP BY device, TUMBLING(1m) RAISE WHEN so2 > 200"})).json()
    assert ok["ok"] and ok["columns"] == ["so2"] and ok["window"] == "tumbling" and ok["alert"] is True
    hook = {"type": "webhook", "url": "http://169.254.169.254/latest/meta-data", "secret": "ops"}
    body = assert_problem(await post_rule(api, {"id": "meta", "text": HIGH, "placement": "cloud",
                                                "actions": [hook]}), 422)
    assert body["errors"][0]["where"] == "actions.0.url" and "link-local" in body["detail"]
    # at the edge a plant-internal webhook is the operator's business
    assert (await post_rule(api, {"id": "meta", "text": HIGH, "placement": "edge", "actions": [hook]})).status_code \
        == 201


async def test_roles_and_tenants(api: Api) -> None:
    for role in ("analyst", "auditor", "installer"):
        assert_problem(await post_rule(api, {"id": "x", "text": HIGH}, role), 403)
        assert (await api.client.get("/api/rules", headers=api.as_(role))).status_code == 200
    assert (await post_rule(api, {"id": "x", "text": HIGH}, "admin")).status_code == 201
    other = {"Authorization": f"Bearer {api.keys['other-admin']}"}
    assert (await api.client.get("/api/rules", headers=other)).json()["items"] == []
    assert_problem(await api.client.get("/api/rules/x", headers=other), 404)
    assert_problem(await api.client.get("/api/rules"), 401)


async def test_push_names_the_set_by_hash_and_status_shows_who_runs_what(api: Api) -> None:
    assert_problem(await api.client.post("/api/rulesets/push", json={}, headers=api.as_("operator")), 404)
    rs = (await post_rule(api, {"id": "so2-high", "text": HIGH})).json()["set"]
    r = await api.client.post("/api/rulesets/push", json={}, headers=api.as_("operator"))
    assert r.status_code == 200 and r.json()["pushed"] == [{"gateway": "gw-a", "shadow_version": 1}], r.text
    shadow = await api.store.control.get_shadow("gw-a")
    assert shadow is not None and shadow[1]["desired"]["rules"] == {"hash": rs["hash"]}
    assert_problem(await api.client.post("/api/rulesets/push", json={"gateways": ["gw-b"]},
                                         headers=api.as_("operator")), 404)  # another tenant's
    assert_problem(await api.client.post("/api/rulesets/push", json={}, headers=api.as_("analyst")), 403)
    status = (await api.client.get("/api/rulesets/status", headers=api.as_("analyst"))).json()
    row = status["gateways"][0]
    assert (row["gateway"], row["desired"], row["desired_version"], row["in_sync"]) == ("gw-a", rs["hash"], 1, False)
    current = (await api.client.get("/api/rulesets/current", headers=api.as_("analyst"))).json()
    assert current["doc"]["rules"][0]["id"] == "so2-high" and current["doc"]["rules"][0]["placement"] == "both"


async def _alerts(api: Api, n: int = 5) -> list[str]:
    ids = []
    for i in range(n):
        subject = f"gw-a/cems-1/p{i}"
        c = AlertChange("raised", alert_id("so2-high", subject, T0 + i), "so2-high", subject, "gw-a", T0 + i,
                        T0 + i, 1, "critical" if i % 2 else "warning", "cems-1", f"p{i}", {"value": 250.0 + i})
        await api.store.rules.alerts.merge("acme", c, "gateway", T0)
        ids.append(c.id)
    return ids


async def test_alerts_list_filter_page_count_ack_and_clear(api: Api) -> None:
    ids = await _alerts(api)
    reader = api.as_("analyst")
    page = (await api.client.get("/api/alerts?limit=2", headers=reader)).json()
    assert [a["id"] for a in page["items"]] == [ids[4], ids[3]] and page["next_cursor"]
    assert page["counts"]["by_state"]["raised"] == 5 and page["counts"]["open_by_severity"]["critical"] == 2
    nxt = (await api.client.get("/api/alerts", params={"limit": 2, "cursor": page["next_cursor"]},
                                headers=reader)).json()
    assert [a["id"] for a in nxt["items"]] == [ids[2], ids[1]]
    assert_problem(await api.client.get("/api/alerts?cursor=nonsense", headers=reader), 422)
    assert_problem(await api.client.post(f"/api/alerts/{ids[0]}/ack", headers=reader), 403)
    r = await api.client.post(f"/api/alerts/{ids[0]}/ack", json={"note": "crew sent"}, headers=api.as_("operator"))
    assert r.status_code == 200 and r.json()["state"] == "acknowledged" and r.json()["note"] == "crew sent"
    assert "already acknowledged" in assert_problem(
        await api.client.post(f"/api/alerts/{ids[0]}/ack", headers=api.as_("admin")), 409)["detail"]
    assert (await api.client.post(f"/api/alerts/{ids[1]}/clear", headers=api.as_("admin"))).json()["cleared_by"] \
        .startswith("key:")
    assert_problem(await api.client.post(f"/api/alerts/{ids[1]}/clear", headers=api.as_("admin")), 409)
    got = (await api.client.get("/api/alerts", params=[("state", "open"), ("severity", "critical")],
                                headers=reader)).json()
    assert [a["id"] for a in got["items"]] == [ids[3]] and got["counts"]["by_state"] == {
        "raised": 1, "acknowledged": 0, "cleared": 1}
    assert (await api.client.get("/api/alerts/counts", headers=reader)).json()["by_state"] == {
        "raised": 3, "acknowledged": 1, "cleared": 1}
    one = (await api.client.get(f"/api/alerts/{ids[2]}", headers=reader)).json()
    assert one["values"] == {"value": 252.0} and one["sources"] == ["gateway"]
    other = {"Authorization": f"Bearer {api.keys['other-admin']}"}
    assert_problem(await api.client.get(f"/api/alerts/{ids[2]}", headers=other), 404)
    assert_problem(await api.client.post(f"/api/alerts/{ids[2]}/ack", headers=other), 404)
    assert (await api.client.get("/api/alerts", headers=other)).json()["counts"]["total"] == 0


async def test_silences_make_a_set_and_reach_the_gateways_that_follow(api: Api) -> None:
    await post_rule(api, {"id": "so2-high", "text": HIGH})
    await api.client.post("/api/rulesets/push", json={}, headers=api.as_("operator"))
    body = {"device": "cems-1", "duration_s": 3600, "reason": "analyser calibration"}
    r = await api.client.post("/api/silences", json=body, headers=api.as_("operator"))
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["pushed"] == ["gw-a"] and made["set"]["silences"] == 1 and made["silence"]["active"]
    shadow = await api.store.control.get_shadow("gw-a")
    assert shadow is not None and shadow[1]["desired"]["rules"] == {"hash": made["set"]["hash"]}
    active = (await api.client.get("/api/silences?active=true", headers=api.as_("analyst"))).json()["items"]
    assert [s["id"] for s in active] == [made["silence"]["id"]]
    ended = await api.client.delete(f"/api/silences/{made['silence']['id']}", headers=api.as_("operator"))
    assert ended.status_code == 200 and ended.json()["silence"]["ended_by"].startswith("key:")
    assert (await api.client.get("/api/silences?active=true", headers=api.as_("analyst"))).json()["items"] == []
    for bad in ({"reason": "x"}, {"reason": "x", "duration_s": 3600, "end": "0"}, {"reason": "x", "end": "1000"},
                {"reason": "x", "duration_s": 3600, "point": "so2"}):
        assert_problem(await api.client.post("/api/silences", json=bad, headers=api.as_("operator")), 422)
    assert_problem(await api.client.post("/api/silences", json={**body, "gateway": "gw-b"},
                                         headers=api.as_("operator")), 404)
    assert_problem(await api.client.post("/api/silences", json=body, headers=api.as_("analyst")), 403)


async def test_derived_readings_and_their_provenance(api: Api) -> None:
    await post_rule(api, {"id": "so2-ref", "text": "SELECT value * 2 AS c FROM '+/so2'",
                          "actions": [{"type": "derive", "point": "c"}]})
    row = ("gw-a", "cems-1", "rule:so2-ref:c", T0 + 10_000, 22.0, "mg/m³", "N", "so2-ref", 1, "a" * 64, None, None,
           [["cems-1", "so2", T0 + 10_000]])
    await api.store.rules.add_derived("acme", [row], T0)
    reader = api.as_("analyst")
    page = (await api.client.get("/api/derived?device=cems-1", headers=reader)).json()
    assert page["count"] == 1 and page["items"][0]["inputs"] == [["cems-1", "so2", T0 + 10_000]]
    prov = (await api.client.get("/api/derived/provenance", headers=reader, params={
        "gateway": "gw-a", "device": "cems-1", "point": "rule:so2-ref:c", "ts": str(T0 + 10_000)})).json()
    assert prov["cloud_derived"]["rule"] == "so2-ref" and prov["rule"]["text"] == "SELECT value * 2 AS c FROM '+/so2'"
    assert "gateway_derived" not in prov
    # a gateway's own derived reading, signed and stored like any, with its rule.derivation
    b = signed("gw-a", 9, [Reading.make("cems-1", "rule:so2-ref:c", T0 + 20_000, 30.0, "mg/m³")])
    await api.store.data.commit_batch(b, b.to_bytes(), T0 + 20_000)
    await api.store.rules.add_derivation("gw-a", "cems-1", "rule:so2-ref:c", T0 + 20_000, rule="so2-ref", version=1,
                                         hash_="b" * 64, unit="mg/m³", text="SELECT value * 2 AS c FROM '+/so2'",
                                         inputs=[], event="e1", received_ms=T0)
    prov = (await api.client.get("/api/derived/provenance", headers=reader, params={
        "gateway": "gw-a", "device": "cems-1", "point": "rule:so2-ref:c", "ts": str(T0 + 20_000)})).json()
    assert prov["gateway_derived"]["derivation"]["version"] == 1 and "/api/proof?" in prov["gateway_derived"]["proof"]
    assert prov["gateway_derived"]["reading"]["value"] == 30.0 and "cloud_derived" not in prov
    other = {"Authorization": f"Bearer {api.keys['other-admin']}"}
    assert_problem(await api.client.get("/api/derived/provenance", headers=other, params={
        "gateway": "gw-a", "device": "cems-1", "point": "rule:so2-ref:c", "ts": str(T0 + 20_000)}), 404)
    assert (await api.client.get("/api/derived", headers=other)).json()["count"] == 0
