"""The forest plot simulator: daily stem cycle with growth, drying soil, draining battery, faults, CLI."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import yaml
from typer.testing import CliRunner

from carbonlink.codecs.bthome import decode
from carbonlink.edge.drivers.ble import BleBthomeDevice
from carbonlink.simulators.forest import DAY, Fault, Forest, Tree, local_hour, run_forest
from carbonlink.simulators.forest_cli import app
from tests.simulators.clocks import NOON, NOON_ISO

MIDNIGHT = 1_718_899_200 - 8 * 3600  # 2024-06-21 00:00 local (UTC+8)


def day_series(tree: Tree, days: int, step_h: float = 0.5) -> list[tuple[float, dict[str, float]]]:
    out = []
    for i in range(int(days * 24 / step_h)):
        t = MIDNIGHT + i * step_h * 3600
        out.append((t, tree.values(t)))
    return out


def test_stem_shrinks_by_day_swells_by_night_and_grows() -> None:
    tree = Tree("D2:FC:00:00:00:01", "tree-001", seed=3)
    series = day_series(tree, 10)
    maxima = []
    for d in range(10):
        lo, hi = MIDNIGHT + d * DAY, MIDNIGHT + (d + 1) * DAY
        day = [(local_hour(t), v["dendrometer"]) for t, v in series if lo <= t < hi]
        h_max = max(day, key=lambda x: x[1])[0]
        h_min = min(day, key=lambda x: x[1])[0]
        assert 4 <= h_max <= 9, f"day {d}: fullest at {h_max} h, expected near dawn"
        assert 13 <= h_min <= 18, f"day {d}: most shrunk at {h_min} h, expected in the afternoon"
        amplitude = max(v for _, v in day) - min(v for _, v in day)
        assert 20 <= amplitude <= 130  # tens of micrometres, as point dendrometers see
        maxima.append(max(v for _, v in day))
    # Zero-growth method: the running maximum rises, by a few micrometres a day.
    gain = maxima[-1] - maxima[0]
    assert 9 * 1.0 < gain < 9 * 15.0 and sum(b > a for a, b in pairwise(maxima)) >= 7


def test_climate_soil_and_battery() -> None:
    tree = Tree("D2:FC:00:00:00:01", "tree-001", seed=5)
    series = day_series(tree, 30, step_h=1)
    by_hour = {h: [v["temperature"] for t, v in series if round(local_hour(t)) == h] for h in (3, 15)}
    assert min(by_hour[15]) > max(by_hour[3]) + 8  # warm afternoons, cool nights
    hum = {h: [v["humidity"] for t, v in series if round(local_hour(t)) == h] for h in (3, 15)}
    assert min(hum[3]) > max(hum[15])
    moisture = [v["soil_moisture"] for _, v in series]
    assert all(5 <= m <= 50 for m in moisture) and max(moisture) - min(moisture) > 2  # dries, rains refill
    battery = [v["battery"] for _, v in series]
    assert battery[0] - battery[-1] >= 1 and all(b2 <= b1 for b1, b2 in pairwise(battery))
    assert 2.9 <= series[-1][1]["voltage"] <= 3.0


def test_packet_id_and_counter_advance_and_wrap() -> None:
    forest = Forest.plot(2, encrypted=True, repeats=3, start=MIDNIGHT, wall=lambda: 0.0)
    adverts = forest.tick()
    assert len(adverts) == 6 and adverts[0] == adverts[1] == adverts[2]
    tree = forest.trees[0]
    for _ in range(300):
        tree.advert(forest.now())
    assert tree.packet_id == 301 % 256 and tree.counter == 301
    assert decode(tree.advert(forest.now()) or b"", tree.mac, tree.key).packet_id == 302 % 256


def test_faults() -> None:
    forest = Forest.plot(5, start=MIDNIGHT)
    t = MIDNIGHT + 3600.0
    for tr in forest.trees:
        tr.values(t)
    stuck, drift, spikes, dropout, dead = forest.trees
    stuck.set_fault(Fault.STUCK)
    drift.set_fault("drift", per_day=24.0)
    spikes.set_fault(Fault.SPIKES, probability=1.0)
    dropout.set_fault(Fault.DROPOUT)
    dead.set_fault(Fault.BATTERY_DEATH)
    frozen = stuck.values(t)
    base = Tree(drift.mac, drift.device_id, seed=drift.seed)  # the same tree without the fault
    base.values(t)
    later = t + 0.5 * DAY
    assert {k: v for k, v in stuck.values(later).items() if k not in ("battery", "voltage")} == {
        k: v for k, v in frozen.items() if k not in ("battery", "voltage")}
    assert abs(drift.values(later)["dendrometer"] - base.values(later)["dendrometer"] - 12.0) < 8  # +24 µm/day
    ok = Tree(spikes.mac, spikes.device_id, seed=spikes.seed)
    ok.values(t)
    jumped = spikes.values(later)
    clean = ok.values(later)
    assert max(abs(jumped[k] - clean[k]) for k in ("temperature", "soil_moisture", "dendrometer")) > 10
    assert dropout.advert(later) is None and stuck.advert(later) is not None
    adverts = [dead.advert(later + i) for i in range(8)]
    assert adverts[0] is not None and adverts[-1] is None and dead.dead
    dead.clear_fault(Fault.BATTERY_DEATH)  # a new battery: the sensor restarts
    assert dead.advert(later + 10) is not None and dead.battery > 99
    dropout.clear_fault("dropout")
    assert dropout.advert(later) is not None


async def test_run_forest_prints_hex_lines_until_stopped() -> None:
    lines: list[str] = []
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.15, stop.set)
    n = await run_forest(3, 0.05, stop, out=lines.append, start=NOON)
    assert n == len(lines) >= 6
    mac, rssi, data = lines[0].split(" ")
    assert mac == "D2:FC:00:00:00:01" and rssi.startswith("rssi=-") and data.startswith("fcd2=40")


def test_cli_config_validates_as_driver_settings_and_run_prints_json() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["--trees", "3", "--encrypted", "--config", "--start", NOON_ISO])
    assert res.exit_code == 0, res.output
    entry = yaml.safe_load(res.output)["devices"][0]
    dev = BleBthomeDevice.model_validate(entry)
    assert len(dev.sensors) == 3 and all(s.key for s in dev.sensors)
    res = runner.invoke(app, ["--trees", "2", "--interval", "0.05", "--duration", "0.12", "--json", "--encrypted",
                                 "--start", NOON_ISO])
    assert res.exit_code == 0, res.output
    rows = [yaml.safe_load(line) for line in res.output.splitlines()]
    assert len(rows) >= 4 and rows[0]["encrypted"] and set(rows[0]["values"]) == {
        "battery", "temperature", "humidity", "voltage", "moisture", "dendrometer"}
    res = runner.invoke(app, ["--trees", "2", "--fault", "3:stuck", "--start", NOON_ISO])
    assert res.exit_code == 2 and "1..2" in res.output
