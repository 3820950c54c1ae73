"""Cloud evaluation: committed rows from several gateways, in commit order, give the gateways' alerts."""

from __future__ import annotations

from carbonlink.cloud.rules_eval import CloudRules
from carbonlink.kernel.wire import Reading
from carbonlink.rules import AlertChange, RuleHost
from tests.rules.helpers import ListSink

DOC = {"rules": [{"id": "so2-high", "text": "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"}]}
T0 = 1_700_000_000_000


def test_commits_from_two_gateways_out_of_order_raise_per_gateway() -> None:
    cloud = CloudRules(lateness_ms=60_000)
    assert cloud.apply("acme", DOC)["ok"]
    out = []
    out += cloud.on_commit("acme", "gw-2", [Reading.make("c1", "so2", T0 + 2000, 250, "mg/m³")])[0]
    out += cloud.on_commit("acme", "gw-1", [Reading.make("c1", "so2", T0 + 1000, 300, "mg/m³")])[0]
    out += cloud.on_commit("acme", "gw-1", [Reading.make("c1", "so2", T0, 100, "mg/m³")])[0]  # late, within lateness
    assert cloud.on_commit("other", "gw-9", [Reading.make("c1", "so2", T0, 900, "mg/m³")]) == ([], [])  # no rules
    out += cloud.flush("acme")[0]
    raised = [a for a in out if a.kind == "raised"]
    assert sorted(a.subject for a in raised) == ["gw-1/c1/so2", "gw-2/c1/so2"]
    assert {a.ts_ms for a in raised} == {T0 + 1000, T0 + 2000}
    assert cloud.state("acme")["readings"] == 3 and cloud.state("other") == {"running": False}


def test_the_cloud_and_a_gateway_name_the_same_alerts_and_derive_the_same_values() -> None:
    doc = {"rules": [
        {"id": "so2-high", "text": "SELECT avg(value) AS so2 FROM '+/so2' GROUP BY device, TUMBLING(1m)"
                                   " RAISE WHEN so2 > 200 mg/m3 CLEAR WHEN so2 < 180 mg/m3"},
        {"id": "so2-ref", "text": "SELECT convert(value, 'mg/m3') * (21 % - 6 %) / (21 % - o2) AS c FROM '+/so2'"
                                  " WHERE o2 < 20 %", "actions": [{"type": "derive", "point": "so2_o2ref6"}]}]}
    readings = []
    for i in range(300):  # five minutes at 1 Hz: high for two minutes, then low
        ts = T0 + i * 1000
        readings += [Reading.make("c1", "so2", ts, 250.0 if 60 <= i < 180 else 150.0, "mg/m³"),
                     Reading.make("c1", "o2", ts, 8.0, "%")]
    sink = ListSink()
    edge_derived: list[Reading] = []
    edge = RuleHost(source="gw-1", sink=sink, derived=edge_derived.append)
    assert edge.apply(doc).ok
    edge_out = edge.feed(readings[:250]) + edge.advance(T0 + 124_000) + edge.feed(readings[250:]) + edge.flush()
    cloud = CloudRules(lateness_ms=30_000)
    cloud.apply("acme", doc)
    alerts: list[AlertChange] = []
    derived = []
    for k in range(0, len(readings), 37):  # other batch boundaries, and gateway rows in the cloud's own batches
        a, d = cloud.on_commit("acme", "gw-1", readings[k:k + 37])
        alerts += a
        derived += d
    a, d = cloud.flush("acme")
    alerts += a
    derived += d
    edge_alerts = [(o.kind, o.alert_id, o.ts_ms) for o in edge_out if isinstance(o, AlertChange)]
    assert [(o.kind, o.alert_id, o.ts_ms) for o in alerts] == edge_alerts and len(edge_alerts) == 2
    assert [d.reading for d in derived] == edge_derived and len(derived) == 300
    first = derived[0]
    assert (first.gateway, first.rule, first.version, first.window) == ("gw-1", "so2-ref", 1, None)
    assert first.inputs == [["c1", "so2", T0]] and len(first.rule_hash) == 64
    assert first.row()[:4] == ("gw-1", "c1", "rule:so2-ref:so2_o2ref6", T0)
    # derived readings that come back in a gateway's batch are not evaluated again
    before = cloud.state("acme")["readings"]
    cloud.on_commit("acme", "gw-1", edge_derived[:5])
    assert cloud.state("acme")["readings"] == before
