"""Hourly inputs made from the simulators' models, as the rollups would hold them (tests only)."""

from __future__ import annotations

from decimal import Decimal

from carbonlink.cloud.carbon.activity import parse_activity_csv
from carbonlink.cloud.carbon.build import CounterInput, Organisation, StackInput, TreeInput
from carbonlink.cloud.carbon.cems import HourValue, StackConfig, normalise
from carbonlink.cloud.carbon.energy import CounterConfig, CounterReading, PowerReading
from carbonlink.cloud.carbon.forest import DendroReading, TreeConfig
from carbonlink.simulators.cems import CemsStack
from carbonlink.simulators.forest import Tree
from carbonlink.simulators.inverter import SolarInverter
from carbonlink.simulators.meter import ElectricityMeter

H = 3600
# 2023-03-01 00:00 local (UTC+8): a year the grid factor table has
MARCH = 1_677_600_000
CEMS_UNITS = {"flow": "m³/s", "temp": "°C", "pressure": "kPa", "moisture": "%", "o2": "%", "co2": "%",
              "so2": "mg/m³", "nox": "mg/m³", "dust": "mg/m³"}


def stack_hours(stack: CemsStack, start: int, hours: int, *, step_s: int = 30,
                invalid: frozenset[int] = frozenset(), fuel: bool = True) -> dict[int, dict[str, HourValue]]:
    """Hourly means of what the stack's analysers report (sampled every ``step_s``), in the method's units.
    Hours whose offset is in ``invalid`` are marked invalid (as an hour with < 45 valid minutes would be)."""
    out: dict[int, dict[str, HourValue]] = {}
    n = H // step_s
    for i in range(hours):
        t0 = start + i * H
        sums = dict.fromkeys(CEMS_UNITS, 0.0)
        for k in range(n):
            v = stack.true_values(t0 + (k + 0.5) * step_s)
            for p in sums:
                sums[p] += v[p] / n
        ok = i not in invalid
        row = {}
        for p, unit in CEMS_UNITS.items():
            name = "p_static" if p == "pressure" else p
            value = normalise(name, Decimal(repr(sums[p])), unit, pressure_kind="absolute",
                              p_atm_pa=Decimal(repr(stack.p_atm_kpa * 1000)))
            row[name] = HourValue(value, ok, n)
        if fuel:
            row["fuel"] = HourValue(Decimal(repr(stack.truth(t0, t0 + H, step_s)["fuel_t"])), True, n)
        out[t0] = row
    return out


def month_org(days: int = 31, *, start: int = MARCH, allowance: Decimal | None = Decimal(80_000)) -> Organisation:
    """One organisation with a CEMS stack, fuel rows for it and for a gas boiler, a solar inverter, a meter
    and a plot of five trees, all from the simulators' models, for ``days`` days from ``start``."""
    stack = CemsStack(seed=7, clock=lambda: start)
    hours = stack_hours(stack, start, days * 24, step_s=600, invalid=frozenset({30, 31, 100}), fuel=False)
    fuel_csv = "date,site,source,fuel,quantity,unit\n"
    for d in range(days):
        burnt = stack.truth(start + d * 86400, start + (d + 1) * 86400, 600)["fuel_t"]
        day = local_day(start + d * 86400)
        fuel_csv += f"{day},plant-a,stack-1,cn_raw_coal,{burnt:.3f},t\n"
        fuel_csv += f"{day},plant-a,boiler-2,cn_natural_gas,1.5,1e4 Nm3\n"
    activity = parse_activity_csv(fuel_csv.encode())
    assert activity.ok, activity.errors
    inv = SolarInverter(seed=5, clock=lambda: start)
    meter = ElectricityMeter(seed=3, clock=lambda: start)
    inv_c, inv_p, met_c = [], [], []
    for s in range(0, days * 86400 + 1, 300):
        t = start + s
        v = inv.values(t)
        inv_c.append(CounterReading(t * 1000, Decimal(int(v["energy"])), device=inv.serial))
        inv_p.append(PowerReading(t * 1000, Decimal(repr(round(v["ac_power"], 1)))))
        m = meter.values(t)
        met_c.append(CounterReading(t * 1000, Decimal(repr(round(m["import_energy"] * 1000)))))
    trees = []
    for i in range(1, 6):
        tree = Tree(f"D2:FC:00:00:00:{i:02X}", f"tree-{i:03d}", seed=11)
        rs = [DendroReading(t * 1000, Decimal(repr(round(tree.values(t)["dendrometer"], 1))))
              for t in range(start, start + days * 86400, 1800)]
        cfg = TreeConfig(tree.device_id, tree.species, Decimal(repr(tree.dbh_cm)), Decimal(repr(tree.height_m)),
                         "point", "plot-1")
        trees.append(TreeInput(cfg, "forest-1", rs))
    return Organisation(
        "acme", "Acme 电力", allowance,
        stacks=[StackInput(StackConfig("stack-1", fuel=None), "plant-a", hours)],
        counters=[CounterInput(CounterConfig("inverter-1", Decimal(100_000)), "solar-1", "generation", inv_c, inv_p),
                  CounterInput(CounterConfig("meter-1", Decimal(2_000_000), wrap_wh=None), "plant-a", "bought",
                               met_c)],
        trees=trees, activity=activity.rows)


def local_day(ts: int) -> str:
    import datetime as dt

    return (dt.datetime(1970, 1, 1) + dt.timedelta(seconds=ts + 8 * 3600)).date().isoformat()
