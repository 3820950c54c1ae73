"""The alert lifecycle: raise, acknowledge, clear; order-independent merging; silences."""

from __future__ import annotations

import itertools

import pytest

from carbonlink.rules.alerts import (
    Alert,
    LifecycleError,
    State,
    Tracker,
    acknowledge,
    alert_id,
    clear,
    merge_cleared,
    merge_raised,
    open_for,
)
from carbonlink.rules.document import Silence

from .helpers import R


def test_tracker_without_clear_condition_clears_when_the_condition_ends() -> None:
    t = Tracker()
    r = R("c1", "so2", 0, 1)
    assert t.step(0, True, False, 0, 0, (r,)) == "raised"
    assert t.step(1, None, None, 0, 0, (r,)) is None  # NULL never moves the machine
    assert t.step(2, True, False, 0, 0, (r,)) is None  # already raised: deduplicated
    assert t.step(3, False, True, 0, 0, (r,)) == "cleared"
    assert t.step(4, False, True, 0, 0, (r,)) is None


def test_tracker_keeps_bounded_evidence_with_the_first_reading() -> None:
    t = Tracker()
    readings = [R("c1", "so2", i, i) for i in range(20)]
    for r in readings:
        if t.step(r.ts_ms, True, False, 10, 0, (r,)) == "raised":
            break
    ev = t.evidence_readings()
    assert ev[0] is readings[0] and [r.ts_ms for r in ev] == [0, 7, 8, 9, 10]


def _raised(aid: str = "a1") -> Alert:
    return Alert(aid, "so2-high", "gw-1/c1/so2", version=2, severity="critical", gateway="gw-1", device="c1",
                 point="so2", raised_ms=5000, since_ms=2000, values={"value": 250.0})


def test_lifecycle_raise_acknowledge_clear() -> None:
    a = _raised()
    assert a.state is State.RAISED
    a = acknowledge(a, "ada", 6000)
    assert (a.state, a.acked_by, a.acked_ms) == (State.ACKNOWLEDGED, "ada", 6000)
    with pytest.raises(LifecycleError, match="already acknowledged by ada"):
        acknowledge(a, "bob", 6500)
    a = merge_cleared(a, a.id, a.rule, a.subject, 9000)
    assert (a.state, a.cleared_by, a.cleared_ms, a.acked_by) == (State.CLEARED, "auto", 9000, "ada")
    with pytest.raises(LifecycleError, match="already cleared"):
        clear(a, "ada", 9500)
    with pytest.raises(LifecycleError, match="already cleared"):
        acknowledge(a, "ada", 9500)


def test_manual_clear_names_who() -> None:
    with pytest.raises(LifecycleError, match="names who"):
        clear(_raised(), "", 1)
    assert clear(_raised(), "ops", 7000).cleared_by == "ops"


def test_merging_is_order_independent_and_idempotent() -> None:
    """An alert raised offline and its clear may arrive in any order, and more than once."""
    raised = _raised()
    ops = [lambda a: merge_raised(a, raised), lambda a: merge_cleared(a, "a1", raised.rule, raised.subject, 9000),
           lambda a: merge_raised(a, raised)]
    results = set()
    for order in itertools.permutations(ops):
        a = None
        for op in order:
            a = op(a)
        assert a is not None
        results.add((a.state, a.raised_ms, a.since_ms, a.cleared_ms, a.severity))
    assert results == {(State.CLEARED, 5000, 2000, 9000, "critical")}


def test_one_open_alert_per_rule_and_subject() -> None:
    a1, a2 = _raised("a1"), _raised("a2")
    assert open_for([a1], "so2-high", "gw-1/c1/so2") is a1
    closed = merge_cleared(a1, "a1", a1.rule, a1.subject, 9000)
    assert open_for([closed, a2], "so2-high", "gw-1/c1/so2") is a2
    assert open_for([closed], "so2-high", "gw-1/c1/so2") is None


def test_alert_ids_are_stable() -> None:
    assert alert_id("r", "gw-1/c1", 5) == alert_id("r", "gw-1/c1", 5) != alert_id("r", "gw-1/c1", 6)


def test_silences_cover_a_rule_subject_prefix_and_time_range() -> None:
    s = Silence(id="maint-1", rule="so2-high", subject="gw-1/c1", start_ms=1000, end_ms=2000, by="ops")
    assert s.covers("so2-high", "gw-1/c1/so2", 1000)
    assert not s.covers("so2-high", "gw-1/c1/so2", 2000)
    assert not s.covers("other", "gw-1/c1/so2", 1500)
    assert not s.covers("so2-high", "gw-2/c1/so2", 1500)
    assert s.covers("so2-high", "gw-1/c1", 1500)  # a device-grouped rule's subject
    assert not s.covers("so2-high", "gw-1/c10/so2", 1500)  # whole segments, not a string prefix
    assert Silence(id="all", start_ms=0, end_ms=9).covers("any", "gw-9/x", 1)
    with pytest.raises(ValueError, match="end_ms must be after start_ms"):
        Silence(id="x", start_ms=5, end_ms=5)
