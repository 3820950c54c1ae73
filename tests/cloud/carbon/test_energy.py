"""Energy from counters against the simulated inverter's own integral: resets, wraps, a replaced unit, gaps."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from carbonlink.cloud.carbon.energy import (
    CounterConfig,
    CounterEvent,
    CounterReading,
    PowerReading,
    account_counter,
    certificates,
    grid_emissions,
)
from carbonlink.cloud.carbon.errors import CarbonInputError
from carbonlink.cloud.carbon.factors import FactorSet
from carbonlink.simulators.inverter import WRAP_WH, SolarInverter
from tests.cloud.carbon.simdata import MARCH, H

DAY_MS = (MARCH * 1000, (MARCH + 24 * H) * 1000)
CFG = CounterConfig("inv-1", D(100_000))


def readings(inv: SolarInverter, every_s: int = 60, start: int = MARCH, hours: int = 24,
             events: dict[int, object] | None = None, skip: range = range(0)
             ) -> tuple[list[CounterReading], list[PowerReading]]:
    """Read the inverter like a gateway: counter (as an acc32 on the wire) and power every ``every_s``.
    ``events`` maps a second offset to a callable run just before that reading (a reset, a swap)."""
    counter, power = [], []
    for s in range(0, hours * H + 1, every_s):
        if events and s in events:
            events[s]()  # type: ignore[operator]
        v = inv.values(start + s)
        if s in skip:
            continue
        ts = (start + s) * 1000
        counter.append(CounterReading(ts, D(int(v["energy"]) % int(WRAP_WH)), device=inv.serial))
        power.append(PowerReading(ts, D(repr(v["ac_power"]))))
    return counter, power


def test_a_clean_day_matches_the_inverters_energy() -> None:
    inv = SolarInverter(seed=5, clock=lambda: MARCH)
    c, p = readings(inv)
    period = account_counter(CFG, c, p, start_ms=DAY_MS[0], end_ms=DAY_MS[1])
    truth = inv.energy_between(MARCH, MARCH + 24 * H)
    assert float(period.wh) == pytest.approx(truth, abs=1.0)  # the counter is read in whole Wh
    assert period.estimated_wh == 0 and period.steps == {"counted": 24 * 60}
    assert period.mwh == (period.wh / D(1_000_000)).quantize(D("0.000001"))
    assert sum(h.wh for h in period.hours) == period.wh and len(period.hours) == 24
    night = [h.wh for h in period.hours[:5]]  # 00:00-05:00 local: no sun
    assert night == [0, 0, 0, 0, 0]


def test_reset_wrap_and_replacement_never_double_count() -> None:
    inv = SolarInverter(seed=5, clock=lambda: MARCH, energy_wh=WRAP_WH - 50_000)  # wraps mid-morning
    events = {11 * H: lambda: setattr(inv, "energy_wh", 0.0),  # a counter reset at 11:00
              14 * H: lambda: inv.replace(counter_wh=8_000_000.0, serial="SN-NEW")}  # a used unit fitted
    c, p = readings(inv, events=events)
    period = account_counter(CFG, c, p, start_ms=DAY_MS[0], end_ms=DAY_MS[1])
    truth = inv.energy_between(MARCH, MARCH + 24 * H)
    assert period.steps["wrap"] == 1 and period.steps["reset"] == 1 and period.steps["replaced"] == 1
    total = period.wh + period.estimated_wh
    assert float(total) == pytest.approx(truth, rel=2e-3)  # two one-minute steps estimated from power
    assert period.estimated_wh < D(10_000)  # what was estimated is those two minutes, not the 8 MWh jump
    kinds = {f.kind for f in period.flags}
    assert {"wrap", "reset", "replaced"} <= kinds


def test_a_gap_is_shared_by_power_and_flagged_and_the_tail_estimated() -> None:
    inv = SolarInverter(seed=5, clock=lambda: MARCH)
    c, p = readings(inv, skip=range(10 * H, 13 * H))  # three hours without readings at all
    c = [r for r in c if r.ts_ms < (MARCH + 23 * H) * 1000]  # and no counter in the last hour
    period = account_counter(CFG, c, p, start_ms=DAY_MS[0], end_ms=DAY_MS[1])
    truth = inv.energy_between(MARCH, MARCH + 24 * H)
    assert any(f.kind == "gap" for f in period.flags) and any(f.kind == "estimated" for f in period.flags)
    assert float(period.wh + period.estimated_wh) == pytest.approx(truth, rel=1e-3)
    by_hour = {(h.hour_ms // 1000 - MARCH) // H: h.wh for h in period.hours}
    # the gap's energy (known exactly from the counter) is shared among hours 10, 11, 12 by time here,
    # since there are no power readings inside it either
    assert by_hour[10] > 0 and by_hour[11] > 0 and by_hour[12] > 0


def test_an_unexplained_fall_is_an_error_not_a_number() -> None:
    c = [CounterReading(MARCH * 1000, D(5_000_000)), CounterReading((MARCH + 60) * 1000, D(4_000_000))]
    with pytest.raises(CarbonInputError) as err:
        account_counter(CFG, c, [], start_ms=DAY_MS[0], end_ms=DAY_MS[1])
    assert "inv-1" in err.value.input and "4000000" in err.value.input and "replacement" in err.value.fix
    # the same fall recorded as a replacement is fine: estimated (here: nothing to estimate from)
    ok = account_counter(CFG, c, [], start_ms=DAY_MS[0], end_ms=DAY_MS[1],
                         events=[CounterEvent((MARCH + 30) * 1000, "replaced")])
    assert ok.steps == {"replaced": 1} and ok.wh == 0


def test_invalid_readings_are_left_out_and_counted() -> None:
    c = [CounterReading(MARCH * 1000, D(100)), CounterReading((MARCH + 60) * 1000, D(-5)),
         CounterReading((MARCH + 60) * 1000, D(150), valid=False), CounterReading((MARCH + 120) * 1000, D(200))]
    period = account_counter(CFG, c, [], start_ms=DAY_MS[0], end_ms=DAY_MS[1])
    assert period.invalid_readings == 2 and period.wh == 100


def test_avoided_co2_uses_each_years_factor_and_certificates_carry() -> None:
    # An hour on each side of the new year (local time, UTC+8): 2022's and 2023's factors.
    ny = 1_672_502_400  # 2023-01-01 00:00 +08:00
    c = [CounterReading((ny - H) * 1000, D(0)), CounterReading(ny * 1000, D(1_000_000)),
         CounterReading((ny + H) * 1000, D(2_000_000))]
    cfg = CounterConfig("inv-1", D(2_000_000))
    period = account_counter(cfg, c, [], start_ms=(ny - H) * 1000, end_ms=(ny + H) * 1000)
    t, refs = grid_emissions(period, FactorSet.default(), tz_offset_min=480)
    assert t == D("0.5366") + D("0.5306") and [r.key for r in refs] == ["CN/average/2022", "CN/average/2023"]
    with pytest.raises(CarbonInputError, match="2021"):
        grid_emissions(account_counter(cfg, [CounterReading((ny - 400 * 24 * H) * 1000, D(0)),
                                             CounterReading((ny - 399 * 24 * H) * 1000, D(1))], [],
                                       start_ms=(ny - 400 * 24 * H) * 1000, end_ms=(ny - 399 * 24 * H) * 1000),
                       FactorSet.default())
    assert certificates([("01", D("1.6")), ("02", D("0.7")), ("03", D("2.0"))]) == [
        ("01", 1, D("0.6")), ("02", 1, D("0.3")), ("03", 2, D("0.3"))]
    with pytest.raises(CarbonInputError):
        certificates([("01", D(-1))])
