"""Window features: scale-free, finite for any finite window, and the physical relations hold on clean data."""

from __future__ import annotations

import numpy as np
import pytest

from carbonlink.anomaly.features import (
    BUFFER,
    FEATURES,
    Family,
    ac_dc_residual,
    family_of,
    neighbour_residual,
    nox_residual,
    o2_co2_residual,
    small_median,
    window_features,
)
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.inverter import SolarInverter

F = {name: i for i, name in enumerate(FEATURES)}


def rows(x: np.ndarray, fam: Family = Family.OTHER) -> np.ndarray:
    x = np.atleast_2d(x)
    return window_features(x, np.zeros_like(x), np.zeros(len(x)), np.full(len(x), int(fam)))


def test_scale_free_and_finite() -> None:
    rng = np.random.default_rng(1)
    x = 50 + rng.normal(0, 2, BUFFER).cumsum() * 0.1 + rng.normal(0, 1, BUFFER)
    a, b = rows(x), rows(x * 1000.0)
    assert np.allclose(a, b, atol=1e-4)
    for weird in (np.zeros(BUFFER), np.full(BUFFER, 1e12), np.r_[np.zeros(BUFFER - 1), 1e9]):
        assert np.all(np.isfinite(rows(weird)))


def test_stuck_noise_and_spike_show() -> None:
    rng = np.random.default_rng(2)
    x = 100 + rng.normal(0, 1, BUFFER)
    stuck = x.copy()
    stuck[BUFFER // 2:] = stuck[BUFFER // 2]
    noisy = x.copy()
    noisy[BUFFER // 2:] += rng.normal(0, 6, BUFFER // 2)
    spike = x.copy()
    spike[-1] += 30
    base, s, n, p = rows(x)[0], rows(stuck)[0], rows(noisy)[0], rows(spike)[0]
    assert s[F["flat_frac"]] == 1.0 and base[F["flat_frac"]] < 0.1 and s[F["flat_tail"]] == 1.0
    assert n[F["log_dsd_ratio"]] > base[F["log_dsd_ratio"]] + 1.0
    assert n[F["log_rdsd_ratio"]] > base[F["log_rdsd_ratio"]] + 1.0
    assert p[F["last_jump"]] > base[F["last_jump"]] + 2.0 and p[F["last_dev"]] > 3.0


def test_spike_features_mark_the_spike_itself_not_the_readings_after_it() -> None:
    rng = np.random.default_rng(7)
    x = 100 + rng.normal(0, 1, BUFFER + 3)
    x[BUFFER - 20] += 12  # an earlier spike in the window: a standard deviation would grow, the MAD does not
    x[BUFFER] += 12  # the spike being judged (window ends there), then two normal readings after it
    base, at, after, later = (rows(x[i:i + BUFFER])[0] for i in (0, 1, 2, 3))
    assert at[F["spike"]] > 2.0 and at[F["last_step_rz"]] > 2.0
    assert base[F["spike"]] < at[F["spike"]] - 1.0
    # the step back down is large, but the value is where it belongs: not a spike
    assert after[F["last_step_rz"]] > 2.0 and after[F["spike"]] < 1.0
    assert later[F["spike"]] < 1.5
    # the window still remembers it saw one
    assert after[F["max_step_rz"]] > 2.0 and later[F["max_step_rz"]] > 2.0
    # two spikes swell the steps' standard deviation like noise does, not their robust spread
    assert later[F["log_dsd_ratio"]] > 0.5 and abs(later[F["log_rdsd_ratio"]]) < 0.3


def test_family_one_hot_and_shape_check() -> None:
    r = rows(np.ones(BUFFER), Family.FOREST)[0]
    assert (r[F["fam_cems"]], r[F["fam_inverter"]], r[F["fam_forest"]]) == (0, 0, 1)
    with pytest.raises(ValueError):
        window_features(np.zeros((1, 10)), np.zeros((1, 10)), np.zeros(1), np.zeros(1))


def test_relations_hold_on_simulated_plants() -> None:
    stack = CemsStack(seed=4, clock=lambda: 0.0)
    for t in range(1_767_225_600, 1_767_225_600 + 86400, 3600):
        v = stack.true_values(t)
        assert abs(float(nox_residual(v["nox"], v["no"], v["no2"]))) < 1e-9
        assert abs(float(o2_co2_residual(v["o2"], v["co2"]))) < 0.01
    inv = SolarInverter(seed=4, clock=lambda: 0.0)
    v = inv.values(1_767_225_600 + 4 * 3600)  # noon in China
    assert v["ac_power"] > 0 and float(ac_dc_residual(v["ac_power"], v["dc_power"])) < 0
    assert float(ac_dc_residual(110.0, 100.0)) > 0
    assert neighbour_residual(5.0, []) == 0.0 and neighbour_residual(50.0, [10.0, 11.0, 9.0]) > 10


def test_family_of_point_names() -> None:
    assert family_of({"so2", "nox", "no", "no2"}) is Family.CEMS
    assert family_of({"ac_power", "dc_power", "energy"}) is Family.INVERTER
    assert family_of({"dendrometer", "battery"}) is Family.FOREST
    assert family_of({"kwh"}) is Family.OTHER


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9])
def test_small_median_equals_numpys(n: int) -> None:
    """The stream's median of recent steps and of a tree's neighbours: the same number as np.median."""
    rng = np.random.default_rng(n)
    for _ in range(200):
        floats = list(rng.normal(0.0, 10.0 ** rng.integers(-3, 6), n))
        ints = [int(v) for v in rng.integers(1, 120_000, n)]
        assert small_median(floats) == float(np.median(floats))
        assert small_median(ints) == float(np.median(ints))
