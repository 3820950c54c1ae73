"""Forest sinks: dendrometer readings → diameter growth → biomass → t CO2e per tree, plot and period.

Per tree, in this order (pure, deterministic):

1. invalid readings (flag not N) are left out and counted as faults;
2. every reading is replaced by the median of five (itself and two neighbours each side), so neither a
   spike nor reading noise raises the maximum; a reading further than ``spike_um`` from that median is a
   sensor fault and flagged;
3. zero-growth method (Zweifel 2016): growth is counted only when a reading exceeds the previous maximum;
   dips below it are tree water deficit (stem shrinkage), flagged as information and never counted,
   least of all as an emission; a new maximum rising faster than the species' ``max_radial_growth_um_day``
   (per radius; a band reads circumference) is a sensor fault (a slipped band, a knocked sensor): the
   step is taken out of every later reading as an offset, the tree is flagged, and no growth comes of it;
4. ΔD from the growth of the maximum: band dendrometer ΔD = ΔC/π, point dendrometer ΔD ≈ 2Δr;
   D₀ and D₁ from the tree's measured DBH at its reference reading;
5. ΔCO2 = [B(D₁) − B(D₀)] · (1 + R) · CF · 44/12 with the species' allometric equation
   (``formulas.tree_co2``), rounded to 1 g (0.000001 t);
6. uncertainty (IPCC 2006 Vol. 1 Ch. 3, Approach 1): per tree U = √(U_eq² + U_growth²), with U_eq the
   species equation's relative uncertainty (95 % half-width) and U_growth = 2·σ·√2/Δ (reading noise σ over
   the measured growth Δ, both per radius or circumference); per plot Eq. 3.2, U = √Σ(Uᵢ·xᵢ)²/Σxᵢ.
   The band is value × (1 ± U), never below zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Literal

from . import formulas as fm
from .errors import CarbonInputError
from .factors import FactorRef, FactorSet, Species

DAY_MS = 86_400_000
SIX = 6


@dataclass(frozen=True)
class TreeConfig:
    tree_id: str
    species: str
    dbh_cm: Decimal  # measured (tape) at the reference reading
    height_m: Decimal | None = None
    dendrometer: Literal["point", "band"] = "point"
    plot: str = ""
    ref_um: Decimal | None = None  # the dendrometer reading when dbh_cm was measured (None: the first reading)


@dataclass(frozen=True)
class DendroReading:
    ts_ms: int
    um: Decimal
    valid: bool = True


@dataclass(frozen=True)
class ForestRules:
    spike_um: Decimal = Decimal(300)
    noise_um: Decimal = Decimal(2)  # σ of one reading
    shrink_flag_um: Decimal = Decimal(5)  # dips deeper than this below the maximum are reported


@dataclass(frozen=True)
class TreeResult:
    tree_id: str
    plot: str
    species: str
    dbh_cm_start: Decimal
    dbh_cm_end: Decimal
    growth_um: Decimal  # counted growth of the maximum in the period (radius or circumference)
    co2_t: Decimal
    co2_low_t: Decimal
    co2_high_t: Decimal
    rel_uncertainty: Decimal
    max_um_end: Decimal  # carry to the next period as its baseline
    readings: int
    faults: dict[str, int]
    flags: tuple[str, ...]
    factors: tuple[FactorRef, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class PlotResult:
    plot: str
    co2_t: Decimal
    co2_low_t: Decimal
    co2_high_t: Decimal
    rel_uncertainty: Decimal
    trees: list[TreeResult]


def _median(xs: list[Decimal]) -> Decimal:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def account_tree(cfg: TreeConfig, readings: Sequence[DendroReading], *, start_ms: int, end_ms: int,
                 baseline_max_um: Decimal | None = None, rules: ForestRules | None = None,
                 factors: FactorSet | None = None) -> TreeResult:
    """One tree's uptake in [start, end). Readings before ``start`` (if any) set the starting maximum."""
    rules = rules or ForestRules()
    fs = factors or FactorSet.default()
    sp: Species = fs.tree_species(cfg.species)
    if sp.needs_height and cfg.height_m is None:
        raise CarbonInputError(f"tree {cfg.tree_id} height", f"species {sp.code} uses a·(D²H)^b",
                               "give the tree's height in m, or choose a species entry of form D")
    faults: dict[str, int] = {}
    flags: list[str] = []
    pts = sorted((r for r in readings if r.ts_ms < end_ms), key=lambda r: r.ts_ms)
    good = [r for r in pts if r.valid and r.um.is_finite()]
    if len(good) < len(pts):
        faults["invalid"] = len(pts) - len(good)
    with localcontext(fm.CONTEXT):
        vals = [r.um for r in good]
        clean: list[Decimal] = []
        for i, v in enumerate(vals):
            window = vals[max(0, i - 2): i + 3]
            med = _median(window) if len(window) >= 3 else v  # too few readings to judge: as read
            if abs(v - med) > rules.spike_um:
                faults["spike"] = faults.get("spike", 0) + 1
            clean.append(med)  # the running median: spikes out, and reading noise does not ratchet the maximum
        per_day_limit = sp.max_radial_growth_um_day * (fm.PI if cfg.dendrometer == "band" else 1)
        ref = cfg.ref_um if cfg.ref_um is not None else (clean[0] if clean else None)
        m: Decimal | None = baseline_max_um
        m_at = good[0].ts_ms if good else start_ms
        start_max: Decimal | None = baseline_max_um
        deepest = Decimal(0)
        offset = Decimal(0)  # level shifts (a slipped band, a knocked sensor) taken out of later readings
        for r, raw in zip(good, clean, strict=True):
            v = raw - offset
            if r.ts_ms >= start_ms and start_max is None:
                start_max = m if m is not None else v
            if m is None:
                m, m_at = v, r.ts_ms
                continue
            if v > m:
                allowed = per_day_limit * Decimal(r.ts_ms - m_at) / DAY_MS + 3 * rules.noise_um
                if v - m > allowed:
                    faults["implausible_growth"] = faults.get("implausible_growth", 0) + 1
                    offset += v - m  # the sensor moved, not the tree: no growth from this step on
                    v = m
                m, m_at = v, r.ts_ms
            elif r.ts_ms >= start_ms:
                deepest = max(deepest, m - v)
        if m is None or ref is None:
            raise CarbonInputError(f"tree {cfg.tree_id}", "no valid dendrometer reading",
                                   "check the sensor (battery, radio); the tree's uptake cannot be computed")
        if start_max is None:
            start_max = m
        growth = max(Decimal(0), m - start_max)
        to_cm = (lambda um: fm.dbh_growth_band(um)) if cfg.dendrometer == "band" else fm.dbh_growth_point
        d0 = cfg.dbh_cm + to_cm(max(Decimal(0), start_max - ref))
        d1 = cfg.dbh_cm + to_cm(max(Decimal(0), m - ref))
        if deepest > rules.shrink_flag_um:
            flags.append(f"shrinkage up to {fm.round_fixed(deepest, 1)} µm (water deficit, not counted)")
        if growth == 0:
            flags.append("zero growth")
        if faults:
            flags.append("sensor faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
        co2 = fm.round_fixed(fm.tree_co2(d0, d1, sp.a, sp.b, sp.root_shoot.value, sp.carbon_fraction.value,
                                         cfg.height_m if sp.needs_height else None), SIX)
        u_growth = (2 * rules.noise_um * Decimal(2).sqrt() / growth) if growth > 0 else Decimal(0)
        u = (sp.rel_uncertainty ** 2 + u_growth ** 2).sqrt()
        low, high = max(Decimal(0), co2 * (1 - u)), co2 * (1 + u)
    return TreeResult(cfg.tree_id, cfg.plot, sp.code, fm.round_fixed(d0, 4), fm.round_fixed(d1, 4),
                      fm.round_fixed(growth, 1), co2, fm.round_fixed(low, SIX), fm.round_fixed(high, SIX),
                      fm.round_fixed(u, 4), m, len(pts), faults, tuple(flags),
                      (sp.equation, sp.root_shoot, sp.carbon_fraction))


def plot_total(plot: str, trees: Sequence[TreeResult]) -> PlotResult:
    """A plot's uptake and its band (IPCC 2006 Vol. 1 Ch. 3 Eq. 3.2 for a sum)."""
    with localcontext(fm.CONTEXT):
        total = sum((t.co2_t for t in trees), Decimal(0))
        spread = sum(((t.rel_uncertainty * t.co2_t) ** 2 for t in trees), Decimal(0)).sqrt()
        u = spread / total if total > 0 else Decimal(0)
        low = max(Decimal(0), total * (1 - u))
    return PlotResult(plot, total, fm.round_fixed(low, SIX), fm.round_fixed(total * (1 + u), SIX),
                      fm.round_fixed(u, 4), list(trees))
