"""The gateway's rules: applied from the shadow, run into the real outbox, last good set kept over restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonlink.cloud.shadows import ShadowError, check_desired
from carbonlink.edge.outbox import Outbox
from carbonlink.edge.rules_runner import RulesRunner
from carbonlink.edge.shadow import plan
from carbonlink.kernel.wire import Reading
from tests.rules.helpers import ListSink

RULES = {"rules": [
    {"id": "so2-ref", "version": 2, "text": "SELECT convert(so2, 'mg/m3') * (21 % - 6 %) / (21 % - o2) AS c "
     "FROM '+/so2'", "actions": [{"type": "derive", "point": "so2_o2ref6"}]},
    {"id": "so2-high", "severity": "critical", "text": "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"}]}
BROKEN = {"rules": [{"id": "x", "text": "SELECT value FROM '+/so2' WHERE value >> 3"}]}
T0 = 1_700_000_000_000


def runner(tmp_path: Path, sink: ListSink, outbox: Outbox) -> RulesRunner:
    return RulesRunner(gateway="gw-1", site="site-a", data_dir=tmp_path, sink=sink, derived=outbox.append,
                       clock=lambda: T0 / 1000)


def test_rules_from_the_shadow_run_into_the_outbox_and_survive_a_bad_set_and_a_restart(tmp_path: Path) -> None:
    ok, rejected = plan({"rules": RULES}, {})
    assert rejected == {} and ok["rules"] == RULES
    assert plan({"rules": [1]}, {})[1] == {"rules": "must be a rule-set object"}
    sink = ListSink()
    outbox = Outbox(tmp_path / "outbox.sqlite", "gw-1")
    try:
        r = runner(tmp_path, sink, outbox)
        assert r.apply(RULES) is None
        applied = r.state()["hash"]
        refused = r.apply(BROKEN)
        assert refused is not None and "rule x at line 1, column 40" in refused and applied[:12] in refused
        assert r.state()["hash"] == applied
        r.feed([Reading.make("c1", "o2", T0, 11, "%"), Reading.make("c1", "so2", T0, 250, "mg/m³")])
        r.feed([Reading.make("c1", "so2", T0 + 1000, 100, "mg/m³")])
        assert outbox.pending_count() == 1  # the derived reading; the agent appends the raw ones itself
        raised = sink.of("alert.raised")
        assert len(raised) == 1 and raised[0]["severity"] == "critical" and raised[0]["ts_ms"] == T0

        again = runner(tmp_path, ListSink(), outbox)  # a restart: the last good set is back before any network
        assert again.state()["hash"] == applied
        assert [x["id"] for x in again.state()["rules"]] == ["so2-ref", "so2-high"]
    finally:
        outbox.close()


def test_the_cloud_refuses_a_rule_set_that_would_not_compile() -> None:
    check_desired({"rules": RULES})
    with pytest.raises(ShadowError) as info:
        check_desired({"rules": BROKEN})
    assert info.value.status == 422 and "line 1, column 40" in info.value.message
    with pytest.raises(ShadowError, match=r"desired\.rules\.rules\.0\.id"):
        check_desired({"rules": {"rules": [{"id": "Bad Id", "text": "x"}]}})
