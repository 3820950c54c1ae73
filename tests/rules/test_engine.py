"""The engine on known inputs: filters, windows, aggregates, thresholds, derived readings, bad input."""

from __future__ import annotations

import math

import pytest

from carbonlink.kernel.wire import Reading
from carbonlink.rules import AlertChange, Derived, Notify
from carbonlink.rules.compiler import compile_ruleset
from carbonlink.rules.document import RuleDoc, RuleSetDoc, Silence
from carbonlink.rules.engine import Engine

from .helpers import ListSink, R, engine, rows


def test_filter_with_unit_conversion_and_quality() -> None:
    e = engine("SELECT value, unit FROM '+/so2' WHERE value > 200 mg/m3 AND quality = 'N'")
    out = e.feed([R("c1", "so2", 1000, 0.25, "g/m³"), R("c1", "so2", 2000, 150), R("c1", "so2", 3000, 250, q="C"),
                  R("c1", "so2", 4000, 201), R("c1", "nox", 4000, 900), R("c1", "so2", 5000, 0)])
    got = [(r.ts_ms, r.values["value"]) for r in rows(out)]
    assert got == [(1000, 250.0), (4000, 201.0)]  # the g/m³ reading is compared as 250 mg/m³; 5000 still waits
    assert rows(e.flush()) == []


def test_other_points_of_the_same_device_at_the_same_instant() -> None:
    e = engine("SELECT value, o2 FROM '+/so2' WHERE o2 < 15 %")
    out = e.feed([R("c1", "so2", 1000, 10), R("c1", "o2", 1000, 12, "%"),    # o2 arrives after so2, same instant
                  R("c2", "so2", 1000, 10), R("c2", "o2", 1000, 18, "%")]) + e.flush()
    assert [(r.device, r.values["o2"]) for r in rows(out)] == [("c1", 12.0)]


def test_stale_other_points_are_null() -> None:
    e = engine("SELECT value FROM '+/so2' WHERE o2 IS NULL")
    out = e.feed([R("c1", "o2", 0, 12, "%"), R("c1", "so2", 1000, 1), R("c1", "so2", 400_000, 1)]) + e.flush()
    assert [r.ts_ms for r in rows(out)] == [400_000]


WINDOW_INPUT = [R("c1", "so2", t * 1000, v) for t, v in enumerate([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])]


@pytest.mark.parametrize("window,expected", [
    ("TUMBLING(4s)", [(4000, 2.5, 4.0), (8000, 6.5, 4.0), (12000, 10.5, 4.0)]),
    ("HOPPING(4s, 2s)", [(2000, 1.5, 2.0), (4000, 2.5, 4.0), (6000, 4.5, 4.0), (8000, 6.5, 4.0), (10000, 8.5, 4.0),
                         (12000, 10.5, 4.0), (14000, 11.5, 2.0)]),
    ("COUNT(3)", [(2000, 2.0, 3.0), (5000, 5.0, 3.0), (8000, 8.0, 3.0), (11000, 11.0, 3.0)]),
    ("COUNT(4, 2)", [(3000, 2.5, 4.0), (5000, 4.5, 4.0), (7000, 6.5, 4.0), (9000, 8.5, 4.0), (11000, 10.5, 4.0)]),
])
def test_windows(window: str, expected: list[tuple[int, float, float]]) -> None:
    e = engine(f"SELECT avg(value) AS m, count(*) AS n FROM '+/so2' GROUP BY {window}")
    out = e.feed(WINDOW_INPUT) + e.flush()
    assert [(r.ts_ms, r.values["m"], r.values["n"]) for r in rows(out)] == expected


def test_sliding_window_emits_per_reading_over_the_last_span() -> None:
    e = engine("SELECT sum(value) AS s FROM '+/so2' GROUP BY SLIDING(3s)")
    out = e.feed(WINDOW_INPUT[:5]) + e.flush()
    assert [(r.ts_ms, r.values["s"]) for r in rows(out)] == [(0, 1.0), (1000, 3.0), (2000, 6.0), (3000, 9.0),
                                                            (4000, 12.0)]


def test_session_windows_split_on_gaps_and_at_their_maximum() -> None:
    ts = [0, 1000, 2000, 10_000, 11_000, 30_000, 31_000, 32_000, 33_000]
    e = engine("SELECT count(*) AS n, first(value) AS f FROM '+/so2' GROUP BY SESSION(5s, 2500ms)")
    out = e.feed([R("c1", "so2", t, i) for i, t in enumerate(ts)]) + e.flush()
    assert [(r.values["n"], r.values["f"]) for r in rows(out)] == [(3, 0.0), (2, 3.0), (3, 5.0), (1, 8.0)]


def test_windows_close_by_watermark_on_the_edge_clock() -> None:
    e = engine("SELECT avg(value) AS m FROM '+/so2' GROUP BY TUMBLING(10s)")
    assert rows(e.feed([R("c1", "so2", 1000, 1), R("c1", "so2", 5000, 3)])) == []
    assert rows(e.advance(9_998)) == []
    out = e.advance(9_999)
    assert [(r.ts_ms, r.values["m"], r.window) for r in rows(out)] == [(10_000, 2.0, (0, 10_000))]


def test_every_aggregate() -> None:
    text = ("SELECT avg(value) AS avg, min(value) AS min, max(value) AS max, sum(value) AS sum, count(value) AS n,"
            " stddev(value) AS sd, percentile(value, 50) AS p50, percentile(value, 90) AS p90, first(value) AS f,"
            " last(value) AS l, delta(value) AS d, rate(value) AS rate FROM '+/so2' GROUP BY TUMBLING(1m)")
    vals = [4, 8, 15, 16, 23, 42]
    e = engine(text)
    out = e.feed([R("c1", "so2", 2000 * i, v) for i, v in enumerate(vals)]) + e.flush()
    (row,) = rows(out)
    v = row.values
    assert (v["avg"], v["min"], v["max"], v["sum"], v["n"]) == (18.0, 4.0, 42.0, 108.0, 6.0)
    assert v["sd"] == pytest.approx(13.490737563232042)  # sample standard deviation
    assert (v["p50"], v["p90"]) == (15.5, pytest.approx(32.5))
    assert (v["f"], v["l"], v["d"]) == (4.0, 42.0, 38.0)
    assert v["rate"] == pytest.approx(38 / 10)


def test_threshold_with_hysteresis_and_debounce() -> None:
    e = engine("SELECT value FROM '+/so2' RAISE WHEN value > 200 mg/m3 FOR 3s CLEAR WHEN value < 180 mg/m3 FOR 2s")
    series = [100, 250, 260, 150, 250, 250, 250, 250, 190, 170, 250, 170, 170, 170, 100]
    out = e.feed([R("c1", "so2", i * 1000, v) for i, v in enumerate(series)]) + e.flush()
    changes = [(o.kind, o.ts_ms, o.since_ms) for o in out if isinstance(o, AlertChange)]
    # 250,260 then 150 resets the debounce; raised 3 s after 4000; 190 keeps it (hysteresis); cleared after 2 s < 180
    assert changes == [("raised", 7000, 4000), ("cleared", 13000, 4000)]
    raised = next(o for o in out if isinstance(o, AlertChange))
    assert raised.subject == "gw-1/c1/so2" and raised.evidence[0].ts_ms == 4000
    assert raised.alert_id == next(o for o in out if isinstance(o, AlertChange) and o.kind == "cleared").alert_id


def test_alerts_are_per_subject_and_deduplicated() -> None:
    e = engine("SELECT avg(value) AS m FROM '+/so2' GROUP BY device, TUMBLING(10s) RAISE WHEN m > 100")
    data = [R(d, "so2", t, 500) for t in range(0, 60_000, 5000) for d in ("c1", "c2")]
    out = e.feed(data) + e.flush()
    raised = [o for o in out if isinstance(o, AlertChange)]
    assert sorted(o.subject for o in raised) == ["gw-1/c1", "gw-1/c2"]


def test_derived_reading_hj75_oxygen_correction() -> None:
    """HJ 75-2017 App. A: C = Cdry·(21−O2ref)/(21−O2meas); coal boiler O2ref = 6 %."""
    sink = ListSink()
    doc = RuleDoc(id="so2-ref", version=3, text="SELECT convert(so2, 'mg/m3') * (21 % - 6 %) / (21 % - o2) AS c "
                  "FROM '+/so2' WHERE o2 < 20.5 %", actions=[{"type": "derive", "point": "so2_o2ref6"}])
    e = Engine(compile_ruleset(RuleSetDoc(rules=[doc])), source="gw-1", sink=sink)
    out = e.feed([R("c1", "o2", 1000, 11, "%"), R("c1", "so2", 1000, 0.1, "g/m3"), R("c1", "so2", 2000, 1)]) + e.flush()
    d, d2 = [o.reading for o in out if isinstance(o, Derived)]
    assert (d.device, d.point, d.unit, d.ts_ms) == ("c1", "rule:so2-ref:so2_o2ref6", "mg/m³", 1000)
    assert (d.value, d2.value) == (pytest.approx(100 * 15 / 10), pytest.approx(1 * 15 / 10))
    (ev,) = sink.of("rule.derivation")
    assert ev["body"]["version"] == 3 and ev["body"]["inputs"] == ["o2", "so2"] and ev["point"] == d.point


def test_division_by_zero_and_nan_inputs_are_reported_not_fatal() -> None:
    sink = ListSink()
    e = engine("SELECT value / (value - 5) AS x FROM '+/so2' WHERE value / (value - 5) > 0", sink=sink)
    bad = Reading("c1", "so2", 2000, math.nan, "mg/m³")
    out = e.feed([R("c1", "so2", 1000, 5), bad, R("c1", "so2", 3000, 10), R("c1", "so2", 4000, 5)]) + e.flush()
    assert [r.values["x"] for r in rows(out)] == [2.0]
    reasons = [ev["body"]["reason"] for ev in sink.of("rule.skipped")]
    assert "division by zero" in reasons and "reading value is not a finite number" in reasons
    assert [ev["body"]["count"] for ev in sink.of("rule.skipped") if ev["body"]["reason"] == "division by zero"] == [1]


def test_a_reading_in_an_incompatible_unit_is_skipped_with_an_event() -> None:
    sink = ListSink()
    e = engine("SELECT value FROM '+/+' WHERE value > 200 mg/m3", sink=sink)
    out = e.feed([R("c1", "t", 1000, 500, "°C"), R("c1", "so2", 1000, 500)]) + e.flush()
    assert [r.point for r in rows(out)] == ["so2"]
    assert "cannot be converted" in sink.of("rule.skipped")[0]["body"]["reason"]


def test_a_rule_that_raises_is_disabled_and_the_others_go_on() -> None:
    sink = ListSink()
    e = engine("SELECT value FROM '+/so2'", "SELECT value FROM '+/so2' WHERE value > 1", sink=sink)
    bad = e.active[0]

    def boom(c: object) -> bool:
        raise RuntimeError("bug in a compiled closure")
    bad.where = boom
    out = e.feed([R("c1", "so2", t, 5) for t in (1000, 2000, 3000)]) + e.flush()
    assert {r.rule for r in rows(out)} == {"r2"} and len(rows(out)) == 3
    (ev,) = sink.of("rule.disabled")
    assert ev["body"]["rule"] == "r1" and "bug in a compiled closure" in ev["body"]["error"]
    assert e.counters.disabled == {"r1": "RuntimeError: bug in a compiled closure"}


def test_a_window_that_outgrows_its_budget_at_run_time_disables_the_rule() -> None:
    from carbonlink.rules.compiler import Budget
    sink = ListSink()
    doc = RuleDoc(id="fast", text="SELECT max(value) AS m FROM '+/so2' GROUP BY SLIDING(10s)")
    e = Engine(compile_ruleset(RuleSetDoc(rules=[doc]), budget=Budget(max_window_entries=20)), sink=sink)
    e.feed([R("c1", "so2", t, 1) for t in range(0, 10_000, 10)])  # 100 readings/s, budgeted at 1/s
    assert "fast" in e.counters.disabled and "rules.budget" in sink.of("rule.disabled")[0]["body"]["error"]


def test_late_readings_are_counted_and_reported() -> None:
    sink = ListSink()
    e = engine("SELECT value FROM '+/so2'", lateness_ms=5000, sink=sink)
    e.feed([R("c1", "so2", 20_000, 1), R("c1", "so2", 16_000, 1), R("c1", "so2", 10_000, 1)])
    assert e.counters.late == 0
    e.feed([R("c1", "so2", 30_000, 1), R("c1", "so2", 14_000, 1)])
    assert e.counters.late == 1 and sink.of("rules.late")[0]["body"]["count"] == 1


def test_notifications_follow_rows_or_alert_changes_and_silences() -> None:
    actions = [{"type": "webhook", "url": "http://127.0.0.1:9/x", "secret": "s"}]
    stream = RuleDoc(id="rows", text="SELECT value FROM '+/so2' WHERE value > 5", actions=actions)
    alert = RuleDoc(id="alerts", text="SELECT value FROM '+/so2' RAISE WHEN value > 5", actions=actions,
                    notify_on=["raised"])
    silence = Silence(id="maint", rule="rows", subject="gw-1/c2", start_ms=0, end_ms=10_000)
    e = Engine(compile_ruleset(RuleSetDoc(rules=[stream, alert], silences=[silence])), source="gw-1")
    data = [R(d, "so2", t, v) for d in ("c1", "c2") for t, v in ((1000, 9), (2000, 9), (3000, 1))]
    notes = [(n.rule, n.kind, n.subject) for n in e.feed(data) + e.flush() if isinstance(n, Notify)]
    assert sorted(notes) == [("alerts", "raised", "gw-1/c1/so2"), ("alerts", "raised", "gw-1/c2/so2"),
                             ("rows", "row", "gw-1/c1/so2"), ("rows", "row", "gw-1/c1/so2")]


def test_tags_select_devices() -> None:
    doc = RuleDoc(id="t", text="SELECT value FROM TAG 'family' = 'cems'")
    e = Engine(compile_ruleset(RuleSetDoc(rules=[doc])), tags={"c1": {"family": "cems"}, "i1": {"family": "pv"}})
    out = e.feed([R("c1", "so2", 1000, 1), R("i1", "power", 1000, 1)]) + e.flush()
    assert [r.device for r in rows(out)] == ["c1"]
