"""Energy from counters (solar inverters, electricity meters): MWh per hour that never double counts.

A counter step (two consecutive valid readings of one device) is judged before it is counted:

* ``counted``: the step rose by at most what the device could deliver in that time (rated power × time ×
  ``margin``): the rise is the energy.
* ``wrap``: the counter fell, but rising through the counter's modulus (SunSpec acc32: 2³² Wh) explains it
  within that bound: the rise through the wrap is the energy.
* ``reset``: the counter fell to a value the device could have produced since a restart: the energy is
  estimated from power readings over the step (or, with none, the counter's value since the reset, a
  lower bound), flagged.
* ``replaced``: the device identity changed (a new serial) or a counter event says so, or the counter
  jumped by more than the device could deliver: nothing from the counter; the step is estimated from
  power readings, flagged. A replacement therefore never counts the new counter's history.
* Anything else (a fall that neither a wrap nor a reset explains) is an error naming the device, the two
  readings and the fix (record the replacement, or correct the reading): never a guessed number.

Energy is attributed to the hours a step spans in proportion to the power readings inside it (trapezoid
rule), or to time when there are none; a step longer than ``max_gap_s`` is flagged ``gap``. Parts of the
period before the first or after the last counter reading are estimated from power readings, flagged.
Arithmetic in Decimal Wh; shares are rounded to 0.001 Wh with the last share taking the remainder, so
hours add up exactly to their steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from typing import Any, Literal

from . import formulas as fm
from .errors import CarbonInputError

HOUR_MS = 3_600_000
StepKind = Literal["counted", "wrap", "reset", "replaced", "estimated"]
MILLI = 3


@dataclass(frozen=True)
class CounterReading:
    ts_ms: int
    wh: Decimal
    valid: bool = True
    device: str = ""  # the physical device's identity (serial); a change means it was replaced


@dataclass(frozen=True)
class PowerReading:
    ts_ms: int
    w: Decimal
    valid: bool = True


@dataclass(frozen=True)
class CounterEvent:
    ts_ms: int
    kind: Literal["replaced", "reset"]
    note: str = ""


@dataclass(frozen=True)
class CounterConfig:
    device_id: str
    rated_w: Decimal
    wrap_wh: Decimal | None = Decimal(2**32)  # None: the counter does not wrap
    margin: Decimal = Decimal("1.5")
    max_gap_s: int = 900
    max_power_gap_s: int = 900  # power readings further apart are not bridged

    def __post_init__(self) -> None:
        if self.rated_w <= 0:
            raise CarbonInputError(f"{self.device_id}.rated_w", f"{self.rated_w} W", "give the rated power in W")


@dataclass(frozen=True)
class Flag:
    ts_ms: int
    kind: str
    detail: str


@dataclass(frozen=True)
class EnergyHour:
    hour_ms: int
    wh: Decimal  # counted from the counter
    estimated_wh: Decimal  # estimated from power readings (resets, replacements, uncovered parts)


@dataclass(frozen=True)
class EnergyPeriod:
    device_id: str
    start_ms: int
    end_ms: int
    hours: list[EnergyHour]
    steps: dict[str, int]
    flags: list[Flag] = field(default_factory=list)
    readings: int = 0
    invalid_readings: int = 0

    @property
    def wh(self) -> Decimal:
        return sum((h.wh for h in self.hours), Decimal(0))

    @property
    def estimated_wh(self) -> Decimal:
        return sum((h.estimated_wh for h in self.hours), Decimal(0))

    @property
    def mwh(self) -> Decimal:
        """Counted plus estimated energy, MWh to 6 decimals (1 Wh)."""
        return fm.round_fixed((self.wh + self.estimated_wh) / fm.MILLION, 6)


def power_energy_wh(power: Sequence[PowerReading], a_ms: int, b_ms: int, max_gap_s: int) -> Decimal | None:
    """∫P dt over [a, b] by the trapezoid rule between valid power readings (Wh); None with no coverage."""
    pts = [p for p in power if p.valid]
    total, covered = Decimal(0), False
    with localcontext(fm.CONTEXT):
        for p0, p1 in itertools.pairwise(pts):
            if p1.ts_ms <= a_ms or p0.ts_ms >= b_ms or p1.ts_ms - p0.ts_ms > max_gap_s * 1000:
                continue
            lo, hi = max(a_ms, p0.ts_ms), min(b_ms, p1.ts_ms)
            if hi <= lo:
                continue
            span = Decimal(p1.ts_ms - p0.ts_ms)
            w_lo = p0.w + (p1.w - p0.w) * (lo - p0.ts_ms) / span
            w_hi = p0.w + (p1.w - p0.w) * (hi - p0.ts_ms) / span
            total += (w_lo + w_hi) / 2 * Decimal(hi - lo) / Decimal(HOUR_MS)
            covered = True
    return total if covered else None


def _split(energy: Decimal, a_ms: int, b_ms: int, power: Sequence[PowerReading],
           cfg: CounterConfig) -> dict[int, Decimal]:
    """Energy of [a, b) shared among the hours it spans: by power readings, else by time; exact sum."""
    bounds = []
    t = a_ms
    while t < b_ms:
        nxt = min(b_ms, (t // HOUR_MS + 1) * HOUR_MS)
        bounds.append((t, nxt))
        t = nxt
    if len(bounds) <= 1:
        return {a_ms // HOUR_MS * HOUR_MS: energy}
    with localcontext(fm.CONTEXT):
        weights = [power_energy_wh(power, lo, hi, cfg.max_power_gap_s) for lo, hi in bounds]
        if all(w is not None for w in weights) and sum(weights) > 0:  # type: ignore[arg-type]
            ws: list[Decimal] = [w for w in weights if w is not None]
        else:
            ws = [Decimal(hi - lo) for lo, hi in bounds]
        total = sum(ws, Decimal(0))
        out: dict[int, Decimal] = {}
        given = Decimal(0)
        for i, ((lo, _), w) in enumerate(zip(bounds, ws, strict=True)):
            share = energy - given if i == len(bounds) - 1 else fm.round_fixed(energy * w / total, MILLI)
            out[lo // HOUR_MS * HOUR_MS] = out.get(lo // HOUR_MS * HOUR_MS, Decimal(0)) + share
            given += share
    return out


def account_counter(cfg: CounterConfig, readings: Sequence[CounterReading], power: Sequence[PowerReading], *,
                    start_ms: int, end_ms: int, events: Sequence[CounterEvent] = ()) -> EnergyPeriod:
    """Hourly energy of one device over [start, end) from its counter, power readings and counter events.

    Readings may extend beyond the period on both sides; steps straddling a boundary are split.
    """
    if start_ms % HOUR_MS or end_ms % HOUR_MS or end_ms <= start_ms:
        raise CarbonInputError("period", f"[{start_ms}, {end_ms}) ms is not whole hours", "align it to hours")
    pw = sorted(power, key=lambda p: p.ts_ms)
    valid: list[CounterReading] = []
    invalid = 0
    for r in sorted(readings, key=lambda r: r.ts_ms):
        if not r.valid or not r.wh.is_finite() or r.wh < 0:
            invalid += 1
        elif valid and valid[-1].ts_ms == r.ts_ms:
            invalid += 1  # a second value for the same instant: the first stands
        else:
            valid.append(r)
    hours: dict[int, list[Decimal]] = {h: [Decimal(0), Decimal(0)] for h in range(start_ms, end_ms, HOUR_MS)}
    steps: dict[str, int] = {}
    flags: list[Flag] = []

    def book(energy: Decimal, a: int, b: int, col: int) -> None:
        """Share a step's energy among the hours of the whole step; keep the hours inside the period."""
        if b <= a or energy == 0:
            return
        for h, e in _split(energy, a, b, pw, cfg).items():
            if h in hours:
                hours[h][col] += e

    def estimate(a: int, b: int, why: str) -> None:
        lo, hi = max(a, start_ms), min(b, end_ms)
        if hi <= lo:
            return
        e = power_energy_wh(pw, lo, hi, cfg.max_power_gap_s)
        flags.append(Flag(a, why, f"{(hi - lo) / 1000:.0f} s estimated from power readings"
                          if e is not None else f"{(hi - lo) / 1000:.0f} s with no power readings: not counted"))
        if e is not None:
            book(fm.round_fixed(e, MILLI), lo, hi, 1)

    replaced_at = sorted(e.ts_ms for e in events if e.kind == "replaced")
    reset_at = sorted(e.ts_ms for e in events if e.kind == "reset")
    with localcontext(fm.CONTEXT):
        for r0, r1 in itertools.pairwise(valid):
            if r1.ts_ms <= start_ms or r0.ts_ms >= end_ms:
                continue
            dt_s = Decimal(r1.ts_ms - r0.ts_ms) / 1000
            bound = cfg.rated_w * dt_s / 3600 * cfg.margin + 1  # Wh, plus one count of resolution
            delta = r1.wh - r0.wh
            kind: StepKind
            if r0.device != r1.device or any(r0.ts_ms < t <= r1.ts_ms for t in replaced_at):
                kind = "replaced"
            elif any(r0.ts_ms < t <= r1.ts_ms for t in reset_at) and delta < 0:
                kind = "reset"
            elif 0 <= delta <= bound:
                kind = "counted"
            elif delta > bound:
                kind = "replaced"  # a jump no device of this rating can make: a different counter
            elif cfg.wrap_wh is not None and 0 <= delta + cfg.wrap_wh <= bound:
                kind, delta = "wrap", delta + cfg.wrap_wh
            elif r1.wh <= bound:
                kind = "reset"
            else:
                raise CarbonInputError(
                    f"{cfg.device_id} counter {r0.ts_ms}→{r1.ts_ms} ms ({r0.wh} → {r1.wh} Wh)",
                    "fell by more than a wrap or a reset explains",
                    "record the device replacement (a counter event, or the new serial on its readings) "
                    "or correct the reading; no energy is computed from this step")
            steps[kind] = steps.get(kind, 0) + 1
            if kind in ("counted", "wrap"):
                if dt_s > cfg.max_gap_s:
                    flags.append(Flag(r0.ts_ms, "gap", f"{dt_s:.0f} s between counter readings: the counter's "
                                      "energy is shared among hours by power readings (or time)"))
                if kind == "wrap":
                    flags.append(Flag(r1.ts_ms, "wrap", f"counter wrapped at {cfg.wrap_wh} Wh"))
                book(delta, r0.ts_ms, r1.ts_ms, 0)
            elif kind == "reset":
                e = power_energy_wh(pw, max(r0.ts_ms, start_ms), min(r1.ts_ms, end_ms), cfg.max_power_gap_s)
                flags.append(Flag(r1.ts_ms, "reset", "counter reset: the step is estimated from power readings"
                                  if e is not None else "counter reset: only the energy since the reset counts"))
                if e is not None:
                    book(fm.round_fixed(e, MILLI), max(r0.ts_ms, start_ms), min(r1.ts_ms, end_ms), 1)
                else:
                    book(r1.wh, r0.ts_ms, r1.ts_ms, 1)
            else:
                estimate(r0.ts_ms, r1.ts_ms, "replaced")
        first = valid[0].ts_ms if valid else end_ms
        last = valid[-1].ts_ms if valid else end_ms
        if first > start_ms:
            estimate(start_ms, first, "estimated")
        if valid and last < end_ms:
            estimate(last, end_ms, "estimated")
    out = [EnergyHour(h, fm.round_fixed(v[0], MILLI), fm.round_fixed(v[1], MILLI)) for h, v in sorted(hours.items())]
    return EnergyPeriod(cfg.device_id, start_ms, end_ms, out, steps, flags, len(readings), invalid)


def certificates(mwh_by_period: Sequence[tuple[str, Decimal]], carry_in: Decimal = Decimal(0)
                 ) -> list[tuple[str, int, Decimal]]:
    """Green certificates (China GEC: 1 per MWh), whole certificates per period, remainders carried on.

    Returns (period, certificates issued, MWh carried to the next period)."""
    out = []
    carry = carry_in
    with localcontext(fm.CONTEXT):
        for label, mwh in mwh_by_period:
            if mwh < 0:
                raise CarbonInputError(f"MWh of {label}", f"{mwh} is negative", "give generated energy (≥ 0)")
            total = carry + mwh
            issued = int(total // 1)
            carry = total - issued
            out.append((label, issued, carry))
    return out


def year_of(ts_ms: int, tz_offset_min: int) -> int:
    """The local calendar year of an instant (grid factors are per local year)."""
    import datetime as dt

    return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms + tz_offset_min * 60_000)).year


def grid_emissions(period: EnergyPeriod, factors: Any, *, grid: str = "CN", kind: str = "average",
                   tz_offset_min: int = 480, latest_as_proxy: bool = False) -> tuple[Decimal, list[Any]]:
    """t CO2 of a period's energy at the grid factor of each hour's local year (avoided CO2 of generation,
    or location-based scope 2 of electricity bought): Σ MWh(year) × EF(grid, year), 1 g resolution.

    A year the factor table lacks raises ``CarbonInputError`` naming it and the fix."""
    by_year: dict[int, Decimal] = {}
    for h in period.hours:
        y = year_of(h.hour_ms, tz_offset_min)
        by_year[y] = by_year.get(y, Decimal(0)) + h.wh + h.estimated_wh
    total = Decimal(0)
    refs = []
    with localcontext(fm.CONTEXT):
        for y, wh in sorted(by_year.items()):
            ref = factors.grid_factor(y, grid, kind, latest_as_proxy=latest_as_proxy)
            refs.append(ref)
            total += fm.round_fixed(fm.grid_co2(wh / fm.MILLION, ref.value), 6)
    return total, refs
