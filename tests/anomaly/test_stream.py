"""The window stream: one row per reading once its buffer is full; bad input is an Issue, never a crash."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from carbonlink.anomaly.features import BUFFER, window_features
from carbonlink.anomaly.model import load_default
from carbonlink.anomaly.stream import Windows, WindowStream
from carbonlink.kernel.wire import Quality, Reading
from tests.anomaly.fakes import POINTS, T0, cems_polls


def test_rows_once_buffer_full_and_same_however_fed() -> None:
    polls = cems_polls(BUFFER + 10)
    a = WindowStream()
    counts = [len(a.features(p)[0]) for p in polls]
    assert counts[: BUFFER - 1] == [0] * (BUFFER - 1) and counts[BUFFER - 1:] == [len(POINTS)] * 11
    # all polls in one call give the same last rows as poll by poll
    b, c = WindowStream(), WindowStream()
    for p in polls[:-1]:
        b.features(p)
    last_b = b.features(polls[-1])[1]
    flat = [r for p in polls for r in p]
    _, rows_c, _ = c.features(flat)
    assert np.array_equal(rows_c[-len(POINTS):], last_b)


def test_stuck_stack_is_flagged_and_clean_stack_mostly_not() -> None:
    model = load_default()
    clean, stuck = WindowStream(), WindowStream()
    flagged_clean = flagged_stuck = judged_stuck = 0
    for p in cems_polls(240):
        flagged_clean += sum(s.anomalous for s in clean.score(p, model).scored)
    for m, p in enumerate(cems_polls(240, stuck_from=150)):
        res = stuck.score(p, model)
        if m >= 170:
            judged_stuck += len(res.scored)
            flagged_stuck += sum(s.anomalous for s in res.scored)
    assert flagged_stuck > 0.5 * judged_stuck
    assert flagged_clean < 0.05 * (240 - BUFFER + 1) * len(POINTS)


def test_each_row_is_its_own_series_last_buffer_in_time_order() -> None:
    """Hundreds of series (the ring buffers grow), polls larger than a feature chunk, a restart after a gap."""
    rng = np.random.default_rng(5)
    n_series, minutes = 300, 74 + BUFFER + 10
    values = rng.normal(50, 3, (n_series, minutes)).cumsum(axis=1)
    stream = WindowStream()
    last_rows = np.zeros((0, 0))
    for m in range(minutes):
        if 70 <= m < 74:
            continue  # five minutes between readings, for everyone: every series restarts
        poll = [Reading(f"d{i // 10}", f"p{i % 10}", T0 + m * 60_000, float(values[i, m]), "") for i in range(n_series)]
        ready, last_rows, _ = stream.features(poll)
        assert len(ready) == (n_series if BUFFER - 1 <= m < 70 or m >= 74 + BUFFER - 1 else 0)
    want = window_features(values[:, -BUFFER:], np.zeros((n_series, BUFFER)), np.zeros(n_series),
                           np.zeros(n_series))
    assert np.array_equal(last_rows, want)


@pytest.mark.parametrize("seed", [3, 4])
def test_a_single_spike_is_flagged_and_the_hour_after_it_is_not(seed: int) -> None:
    """One so2 reading eight times its value: the packaged model flags it (the rules baseline's strength,
    which model v1 matched only by flagging the whole hour after it as well)."""
    model = load_default()
    stream = WindowStream()
    scores: dict[int, tuple[float, bool]] = {}
    for m, p in enumerate(cems_polls(230, seed=seed, spike_at=170)):
        for s in stream.score(p, model).scored:
            if s.reading.point == "so2":
                scores[m] = (s.score, s.anomalous)
    assert scores[170][1] and scores[170][0] > max(sc for m, (sc, _) in scores.items() if m != 170)
    assert sum(bad for m, (_, bad) in scores.items() if 170 < m <= 220) <= 5
    assert not any(bad for m, (_, bad) in scores.items() if m < 170)


def test_episodes_start_and_end() -> None:
    model = load_default()
    st = WindowStream()
    eps = []
    for p in cems_polls(300, stuck_from=150):
        eps += st.score(p, model).episodes
    started = [e for e in eps if e.started]
    assert started and all(e.count == 1 for e in started)


def test_nan_gap_order_and_flagged_readings() -> None:
    st = WindowStream()
    polls = cems_polls(BUFFER + 5)
    for p in polls[:BUFFER]:
        st.features(p)
    nan = [replace(polls[BUFFER][0], value=math.nan), *polls[BUFFER][1:]]
    ready, _, issues = st.features(nan)
    assert len(ready) == len(POINTS) - 1
    assert [(i.kind, i.point) for i in issues] == [("window_incomplete", "so2")] and "finite" in issues[0].reason
    # the same instant again: not newer, not judged
    ready, _, issues = st.features(polls[BUFFER])
    assert not ready and len(issues) == len(POINTS) and "not newer" in issues[0].reason
    # a 20-minute hole: every series restarts
    late = [Reading(r.device, r.point, r.ts_ms + 20 * 60_000, r.value, r.unit) for r in polls[BUFFER + 1]]
    ready, _, issues = st.features(late)
    assert not ready and {i.kind for i in issues} == {"window_incomplete"} and "missing points" in issues[-1].reason
    # readings the device flagged itself (calibration) are neither judged nor added
    cal = [Reading("stack-1", p, T0 + 10**9, 1.0, "", Quality.CALIBRATION) for p in POINTS]
    ready, rows, issues = st.features(cal)
    assert ready == [] and rows.size == 0 and issues == []


def test_readings_are_never_changed() -> None:
    model = load_default()
    st = WindowStream()
    for p in cems_polls(200, spike_at=150):
        before = list(p)
        res = st.score(p, model)
        assert p == before and all(s.reading in before for s in res.scored)


def test_windows_batched_give_the_rows_of_features_poll_by_poll() -> None:
    """Training featurises many polls' windows at once (``windows``); the rows equal the gateway's."""
    polls = cems_polls(BUFFER + 40, stuck_from=BUFFER + 10)
    a, b = WindowStream(), WindowStream()
    rows_a = [a.features(p)[1] for p in polls]
    wins = [b.windows(p)[1] for p in polls]
    assert [len(w.values) for w in wins] == [len(r) for r in rows_a]
    assert np.array_equal(Windows.join(wins).features(), np.concatenate([r for r in rows_a if len(r)]))
