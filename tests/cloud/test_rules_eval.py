"""Cloud evaluation: committed rows from several gateways, in commit order, give the gateways' alerts."""

from __future__ import annotations

from carbonlink.cloud.rules_eval import CloudRules
from carbonlink.kernel.wire import Reading
from tests.rules.helpers import ListSink

DOC = {"rules": [{"id": "so2-high", "text": "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"}]}


def test_commits_from_two_gateways_out_of_order_raise_per_gateway() -> None:
    sinks: dict[str, ListSink] = {}
    derived: list = []
    cloud = CloudRules(sink_for=lambda t: sinks.setdefault(t, ListSink()),
                       derived=lambda t, g, rs: derived.append((t, g, rs)), lateness_ms=60_000)
    assert cloud.apply("acme", DOC)["ok"]
    t0 = 1_700_000_000_000
    cloud.on_commit("acme", "gw-2", [Reading.make("c1", "so2", t0 + 2000, 250, "mg/m³")])
    cloud.on_commit("acme", "gw-1", [Reading.make("c1", "so2", t0 + 1000, 300, "mg/m³")])
    cloud.on_commit("acme", "gw-1", [Reading.make("c1", "so2", t0, 100, "mg/m³")])  # late but within lateness
    cloud.on_commit("other", "gw-9", [Reading.make("c1", "so2", t0, 900, "mg/m³")])  # no rules for this tenant
    for host in cloud.hosts.values():
        host.flush()
    raised = sinks["acme"].of("alert.raised")
    assert sorted(e["body"]["subject"] for e in raised) == ["gw-1/c1/so2", "gw-2/c1/so2"]
    assert {e["ts_ms"] for e in raised} == {t0 + 1000, t0 + 2000}
    assert "other" not in sinks
