"""Forest sinks from simulated dendrometers: zero growth, shrinkage, faults, allometry, uncertainty."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon import formulas as f
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.factors import FactorSet
from carbonlink.cloud.carbon.forest import DendroReading, TreeConfig, account_tree, plot_total
from carbonlink.simulators.forest import Fault, Tree
from tests.cloud.carbon.simdata import MARCH, H

DAYS = 20
END = MARCH + DAYS * 24 * H


def read(tree: Tree, start: int = MARCH, end: int = END, every_s: int = 600) -> list[DendroReading]:
    out = []
    for t in range(start, end, every_s):
        v = tree.values(t)
        out.append(DendroReading(t * 1000, D(repr(round(v["dendrometer"], 1)))))
    return out


def config(tree: Tree) -> TreeConfig:
    return TreeConfig(tree.device_id, tree.species, D(repr(tree.dbh_cm)), D(repr(tree.height_m)), "point", "plot-1")


def test_a_trees_uptake_matches_its_true_growth() -> None:
    tree = Tree("D2:FC:00:00:00:01", "tree-001", seed=3)
    tree.values(MARCH)
    g0 = tree.growth_um
    rs = read(tree)
    res = account_tree(config(tree), rs, start_ms=MARCH * 1000, end_ms=END * 1000)
    true_growth = tree.growth_um - g0
    # The zero-growth method sees growth only through new maxima: it trails the truth by at most a
    # day's growth plus the reading noise.
    assert float(res.growth_um) == pytest.approx(true_growth, abs=tree.growth_um_per_day + 5)
    sp = FactorSet.default().tree_species(tree.species)
    d0 = D(repr(tree.dbh_cm))
    want = f.tree_co2(d0, d0 + 2 * D(repr(true_growth)) / 10_000, sp.a, sp.b, sp.root_shoot.value,
                      sp.carbon_fraction.value, D(repr(tree.height_m)))
    assert float(res.co2_t) == pytest.approx(float(want), rel=0.15)
    assert res.co2_low_t < res.co2_t < res.co2_high_t
    assert any("shrinkage" in fl for fl in res.flags)  # the daily dip is seen, not counted
    assert res.dbh_cm_end > res.dbh_cm_start == d0.quantize(D("0.0001"))


def test_faults_are_flagged_and_never_counted_as_growth_or_emission() -> None:
    clean = Tree("D2:FC:00:00:00:02", "tree-002", seed=4)
    spiky = Tree("D2:FC:00:00:00:02", "tree-002", seed=4)
    spiky.set_fault(Fault.SPIKES, probability=0.05)
    a = account_tree(config(clean), read(clean), start_ms=MARCH * 1000, end_ms=END * 1000)
    b = account_tree(config(spiky), read(spiky), start_ms=MARCH * 1000, end_ms=END * 1000)
    assert b.faults.get("spike", 0) > 0 and any("sensor faults" in fl for fl in b.flags)
    assert float(b.growth_um) == pytest.approx(float(a.growth_um), abs=15)
    # a band that slipped: +5 mm in ten minutes is not growth
    rs = read(clean, MARCH, MARCH + 3 * 24 * H)
    jump = [DendroReading(r.ts_ms, r.um + (5000 if r.ts_ms > (MARCH + 36 * H) * 1000 else 0)) for r in rs]
    c = account_tree(config(clean), jump, start_ms=MARCH * 1000, end_ms=(MARCH + 3 * 24 * H) * 1000)
    assert c.faults == {"implausible_growth": 1} and c.growth_um < 100


def test_a_shrinking_tree_takes_up_nothing_and_emits_nothing() -> None:
    rs = [DendroReading((MARCH + i * 600) * 1000, D(5000) - D(i)) for i in range(200)]
    res = account_tree(TreeConfig("t", "generic_ipcc", D(20), D(15)), rs, start_ms=MARCH * 1000,
                       end_ms=(MARCH + 200 * 600) * 1000)
    assert res.co2_t == 0 and res.growth_um == 0 and "zero growth" in res.flags
    assert res.co2_low_t == 0


def test_band_dendrometers_divide_by_pi_and_a_baseline_carries_over() -> None:
    rs = [DendroReading(MARCH * 1000, D(1000)), DendroReading((MARCH + 86400) * 1000, D(1100))]
    cfg = TreeConfig("t", "brown1997_moist", D(30), None, "band")
    res = account_tree(cfg, rs, start_ms=MARCH * 1000, end_ms=(MARCH + 2 * 86400) * 1000)
    assert res.dbh_cm_end - res.dbh_cm_start == (D(100) / f.PI / 10_000).quantize(D("0.0001"))
    # next period: the maximum so far is the baseline; readings below it are not growth
    nxt = account_tree(cfg, [DendroReading((MARCH + 2 * 86400) * 1000, D(1090))], start_ms=(MARCH + 2 * 86400) * 1000,
                       end_ms=(MARCH + 3 * 86400) * 1000, baseline_max_um=res.max_um_end)
    assert nxt.growth_um == 0


def test_bad_tree_inputs_are_refused_with_a_fix() -> None:
    rs = [DendroReading(MARCH * 1000, D(1))]
    with pytest.raises(CarbonInputError, match="baobab"):
        account_tree(TreeConfig("t", "baobab", D(20)), rs, start_ms=MARCH * 1000, end_ms=(MARCH + H) * 1000)
    with pytest.raises(CarbonInputError) as err:
        account_tree(TreeConfig("t", "populus", D(20)), rs, start_ms=MARCH * 1000, end_ms=(MARCH + H) * 1000)
    assert "height" in err.value.input and "height" in err.value.fix
    with pytest.raises(CarbonInputError, match="no valid dendrometer reading"):
        account_tree(TreeConfig("t", "generic_ipcc", D(20), D(10)), [DendroReading(MARCH * 1000, D(1), False)],
                     start_ms=MARCH * 1000, end_ms=(MARCH + H) * 1000)


def test_plot_total_and_its_band() -> None:
    trees = [Tree(f"D2:FC:00:00:00:{i:02X}", f"tree-{i:03d}", seed=9) for i in range(1, 6)]
    res = [account_tree(config(t), read(t, MARCH, MARCH + 5 * 24 * H), start_ms=MARCH * 1000,
                        end_ms=(MARCH + 5 * 24 * H) * 1000) for t in trees]
    plot = plot_total("plot-1", res)
    assert plot.co2_t == sum((r.co2_t for r in res), D(0))
    # independent errors partly cancel: the plot's relative band is narrower than its trees'
    assert plot.rel_uncertainty < min(r.rel_uncertainty for r in res)
    assert plot.co2_low_t <= plot.co2_t <= plot.co2_high_t
