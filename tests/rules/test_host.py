"""Rules as data: validation, content hash, last good set, events to the host's sink."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from carbonlink.rules import RuleDoc, RuleHost, RuleSetDoc

from .helpers import ListSink, R

GOOD = {"rules": [{"id": "so2-high", "version": 2, "severity": "critical",
                   "text": "SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3"}]}


def test_the_content_hash_is_canonical() -> None:
    a = RuleSetDoc.model_validate(GOOD)
    b = RuleSetDoc.model_validate({"rules": [dict(reversed(list(GOOD["rules"][0].items())))]})
    assert a.content_hash() == b.content_hash() and len(a.content_hash()) == 64
    c = RuleSetDoc.model_validate({"rules": [{**GOOD["rules"][0], "version": 3}]})
    assert c.content_hash() != a.content_hash()


@pytest.mark.parametrize("doc,needle", [
    ({"rules": [{"id": "Bad Id", "text": "SELECT * FROM 'a/b'"}]}, "String should match pattern"),
    ({"rules": [{"id": "a", "text": "SELECT * FROM 'a/b'", "colour": "red"}]}, "Extra inputs"),
    ({"rules": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "appears twice"),
    ({"rules": [{"id": "a", "text": "SELECT * FROM 'a/b'", "actions": [{"type": "webhook", "url": "ftp://x",
                                                                        "secret": "s"}]}]}, "http://"),
    ({"rules": [{"id": "a", "text": "SELECT * FROM 'a/b'", "actions": [{"type": "email", "to": ["not-an-address"]}]}]},
     "not an e-mail"),
    ({"rules": [{"id": "a", "text": "SELECT * FROM 'a/b'", "actions": [{"type": "republish", "topic": "a/#"}]}]},
     "String should match"),
])
def test_malformed_documents_are_refused(doc: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        RuleSetDoc.model_validate(doc)


def test_a_failing_set_keeps_the_last_good_one() -> None:
    sink = ListSink()
    alerts: list = []
    host = RuleHost(source="gw-1", sink=sink)
    first = host.apply(GOOD)
    assert first.ok and host.applied_hash == first.hash
    bad = {"rules": [*GOOD["rules"], {"id": "broken", "text": "SELECT value FROM '+/so2' WHERE value >"}]}
    result = host.apply(bad)
    assert not result.ok and result.hash == first.hash
    assert result.errors[0]["rule"] == "broken" and (result.errors[0]["line"], result.errors[0]["column"]) == (1, 40)
    assert sink.kinds() == ["rules.applied", "rules.rejected"]
    assert sink.of("rules.rejected")[0]["body"]["kept"] == first.hash
    host.feed([R("c1", "so2", 1000, 500), R("c1", "so2", 2000, 1)])
    alerts = sink.of("alert.raised")
    assert len(alerts) == 1 and alerts[0]["severity"] == "critical" and alerts[0]["body"]["version"] == 2
    assert host.apply({"rules": "nope"}).errors[0]["where"] == "rules"


def test_reapplying_the_same_set_keeps_state_and_a_new_version_resets_only_that_rule() -> None:
    sink = ListSink()
    host = RuleHost(source="gw-1", sink=sink)
    doc = RuleSetDoc(rules=[RuleDoc(id="avg", text="SELECT avg(value) AS m FROM '+/so2' GROUP BY TUMBLING(10s)"),
                            RuleDoc(id="hi", text="SELECT value FROM '+/so2' WHERE value > 5")])
    host.apply(doc)
    host.feed([R("c1", "so2", 1000, 2), R("c1", "so2", 2000, 4)])
    assert host.apply(doc).version == 1  # same hash: nothing recompiled
    out = host.feed([R("c1", "so2", 11_000, 9)])
    (row,) = [o for o in out if getattr(o, "rule", "") == "avg"]
    assert row.values["m"] == 3.0


def test_derived_readings_and_alerts_reach_the_host() -> None:
    sink = ListSink()
    derived = []
    host = RuleHost(source="gw-1", sink=sink, derived=derived.append)
    host.apply({"rules": [{"id": "x2", "text": "SELECT convert(value, 'mg/m3') * 2 AS d FROM '+/so2'",
                           "actions": [{"type": "derive", "point": "double"}, {"type": "webhook",
                                                                              "url": "http://127.0.0.1:9/",
                                                                              "secret": "s"}]}]})
    host.feed([R("c1", "so2", 1000, 2), R("c1", "so2", 2000, 3)])
    assert [(r.point, r.value, r.unit) for r in derived] == [("rule:x2:double", 4.0, "mg/m³")]
    dead = sink.of("action.dead_letter")
    assert dead and "no webhook executor" in dead[0]["body"]["reason"]
