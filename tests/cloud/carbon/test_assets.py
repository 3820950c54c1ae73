"""Solar and forest hours kept in the store (cloud/carbon/assets.py) on both back ends: figures against
hand computations from the facts.md formulas, coverage, and late data through the refresh pass."""

from __future__ import annotations

from decimal import Decimal as D

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.cloud.carbon import assets
from carbonlink.cloud.carbon.forest import TreeConfig
from carbonlink.cloud.carbon.sqlstore import attach, periods
from carbonlink.cloud.store import Store
from carbonlink.edge.identity import public_key_hex
from carbonlink.kernel.wire import Batch, Reading, sign_batch

KEY = Ed25519PrivateKey.generate()
H0 = 1_677_628_800_000  # 2023-03-01 00:00 UTC = 08:00 at UTC+8: the grid factor of 2023
M = 60_000
HOUR = 3_600_000
EF_2023 = 0.5306  # t CO2/MWh, MEE/NBS China average 2023 (facts.md §5)


class Gateway:
    def __init__(self, store: Store) -> None:
        self.store, self.seq = store, 0

    async def send(self, readings: list[Reading]) -> None:
        self.seq += 1
        b = sign_batch(Batch("gw-1", self.seq, H0 + self.seq, tuple(readings)), KEY)
        assert (await self.store.data.commit_batch(b, b.to_bytes(), H0)).status == "committed"


def inverter(minutes: range, wh_per_5min: int = 1000) -> list[Reading]:
    out = []
    for m in minutes:
        out += [Reading.make("inv-1", "energy", H0 + m * M, 5_000_000 + wh_per_5min * m // 5, "Wh"),
                Reading.make("inv-1", "ac_power", H0 + m * M, 12_000, "W")]
    return out


def dendro(tree: str, values: dict[int, float]) -> list[Reading]:
    return [Reading.make(tree, "dendrometer", H0 + m * M, v, "µm") for m, v in values.items()]


def co2_g_of_growth(d0: float, d1: float) -> float:
    """facts.md §5: AGB = 0.0673·(ρD²H)^0.976 (Chave 2014 Eq. 4); ΔCO2 = ΔAGB·(1+R)·CF·44/12 (generic_ipcc:
    ρ 0.5, R 0.24, CF 0.47; H 15 m)."""
    def agb(d: float) -> float:
        return 0.0673 * (0.5 * d * d * 15) ** 0.976

    return (agb(d1) - agb(d0)) * 1.24 * 0.47 * 44 / 12 * 1000  # kg → g


async def setup(store: Store) -> tuple[Gateway, list[int]]:
    await store.registry.register_gateway("gw-1", "farm", "ed25519", public_key_hex(KEY), tenant="acme")
    clock = [H0 + 5 * HOUR]
    attach(store, clock=lambda: clock[0])
    return Gateway(store), clock


async def hours(store: Store, source: str) -> dict[tuple[str, int], dict[str, object]]:
    rows = await store.db.fetch("SELECT h.* FROM carbon_asset_hours h JOIN carbon_sources c ON c.src = h.src"
                                " WHERE c.source_id = ?", source)
    return {(r["member"], int(r["hour_ms"]) - H0): r for r in rows}


async def test_solar_hours_are_energy_times_the_grid_factor_and_a_late_reading_redoes_its_hour(
        any_store: Store) -> None:
    gw, clock = await setup(any_store)
    # Every 5 minutes +1000 Wh; hour 1 has only its end points at first (a 60-minute step: a gap).
    await gw.send(inverter(range(0, 61, 5)) + inverter(range(120, 121)))
    await assets.register_inverter(any_store.db, tenant="acme", site="farm", source_id="pv-1", gateway="gw-1",
                                   device="inv-1", rated_w=D(100_000))
    assert {h for _, h in await any_store.data.refresh_hours(clock[0])} == {H0, H0 + HOUR, H0 + 2 * HOUR}
    got = await hours(any_store, "pv-1")
    # 12 steps of 1000 Wh = 0.012 MWh × 0.5306 t/MWh = 0.0063672 t = 6,367 g (GB/T 8170, 1 g)
    assert int(got[("", 0)]["wh_milli"]) == 12_000_000 and int(got[("", 0)]["co2_g"]) == round(0.012 * EF_2023 * 1e6)
    assert got[("", 0)]["status"] == "valid" and "CN/average/2023" in str(got[("", 0)]["factor"])
    assert got[("", HOUR)]["status"] == "substituted" and int(got[("", HOUR)]["wh_milli"]) == 12_000_000
    assert got[("", 2 * HOUR)]["status"] == "missing" and int(got[("", 2 * HOUR)]["co2_g"]) == 0
    # the backlog of hour 1 arrives: that hour is recomputed (now valid), hour 0 keeps its figures
    await gw.send(inverter(range(65, 120, 5)))
    clock[0] += HOUR
    assert await any_store.data.refresh_hours(clock[0]) == [("gw-1", H0 + HOUR)]
    again = await hours(any_store, "pv-1")
    assert again[("", HOUR)]["status"] == "valid" and int(again[("", HOUR)]["co2_g"]) == 6367
    assert again[("", 0)] == got[("", 0)]
    revs = await any_store.db.fetch("SELECT hour_ms, field, before_v, after_v FROM carbon_revisions"
                                    " WHERE source_id = 'pv-1'")
    assert {(int(r["hour_ms"]) - H0, r["field"], r["before_v"], r["after_v"]) for r in revs} >= {
        (HOUR, "status", "substituted", "valid")}
    assert {int(r["hour_ms"]) - H0 for r in revs} == {HOUR}
    # the accounts the console reads: MWh, avoided t and coverage beside scope 1
    (row,) = await periods(any_store.db, "acme", "day", H0 - 8 * HOUR, H0 + 16 * HOUR)
    assert row["mwh_generated"] == "0.024" and row["avoided_t"] == "0.012734" and row["scope1_t"] == "0"
    assert row["coverage_solar"] == {"valid": 2, "substituted": 0, "missing": 1}


async def test_forest_hours_count_growth_of_the_maximum_and_late_data_moves_it_between_hours(
        any_store: Store) -> None:
    gw, clock = await setup(any_store)
    steady = {m: 1000.0 for m in range(0, 51, 10)}
    rising = {60 + m: 1002.0 + 2 * i for i, m in enumerate(range(0, 51, 10))}  # 1002 … 1012 µm
    flat = {120 + m: 1010.0 for m in range(0, 51, 10)}
    await gw.send(dendro("tree-001", steady | rising | flat) + dendro("tree-002", steady))
    trees = [TreeConfig(t, "generic_ipcc", D(20), D(15), plot="p-1") for t in ("tree-001", "tree-002")]
    await assets.register_plot(any_store.db, tenant="acme", site="farm", source_id="p-1", gateway="gw-1", trees=trees)
    await any_store.data.refresh_hours(clock[0])
    got = await hours(any_store, "p-1")
    # hour 1: the five-reading median's maximum is 1010 µm, 10 µm above the first reading (the reference):
    # a point dendrometer reads radius, ΔD = 2Δr = 0.002 cm
    assert int(got[("tree-001", 0)]["co2_g"]) == 0 and got[("tree-001", 0)]["status"] == "valid"
    assert abs(int(got[("tree-001", HOUR)]["co2_g"]) - co2_g_of_growth(20, 20.002)) <= 1
    assert int(got[("tree-001", 2 * HOUR)]["co2_g"]) == 0  # below the maximum: water deficit, not growth
    assert got[("tree-002", HOUR)]["status"] == "missing" and int(got[("tree-002", HOUR)]["co2_g"]) == 0
    total = sum(int(r["co2_g"]) for r in got.values())
    # late readings raise hour 0's maximum to 1004 µm: that growth moves from hour 1 to hour 0, hour 2 is untouched
    await gw.send(dendro("tree-001", {m: 1004.0 for m in range(51, 60, 2)}))
    clock[0] += HOUR
    assert await any_store.data.refresh_hours(clock[0]) == [("gw-1", H0)]
    again = await hours(any_store, "p-1")
    assert abs(int(again[("tree-001", 0)]["co2_g"]) - co2_g_of_growth(20, 20.0008)) <= 1
    assert abs(int(again[("tree-001", HOUR)]["co2_g"]) - co2_g_of_growth(20.0008, 20.002)) <= 1
    assert abs(sum(int(r["co2_g"]) for r in again.values()) - total) <= 1
    revs = await any_store.db.fetch("SELECT hour_ms, field FROM carbon_revisions WHERE source_id = 'p-1'")
    assert {(int(r["hour_ms"]) - H0, r["field"]) for r in revs} >= {(0, "tree-001.co2_g"), (HOUR, "tree-001.co2_g")}
    assert {int(r["hour_ms"]) - H0 for r in revs} == {0, HOUR}
    (row,) = await periods(any_store.db, "acme", "day", H0 - 8 * HOUR, H0 + 16 * HOUR)
    assert D(row["sinks_t"]) == D(sum(int(r["co2_g"]) for r in again.values())) / 1_000_000
    assert D(row["net_t"]) == -D(row["sinks_t"])
    assert row["coverage_forest"] == {"valid": 4, "substituted": 0, "missing": 2}  # tree-002 read only in hour 0
    by_tree = {r["tree"]: r for r in await assets.tree_figures(any_store.db, "acme", H0, H0 + 3 * HOUR)}
    assert by_tree["tree-002"]["coverage"] == {"valid": 1, "substituted": 0, "missing": 2}


async def test_registration_names_what_is_missing(any_store: Store) -> None:
    import pytest

    from carbonlink.cloud.carbon.errors import CarbonInputError

    with pytest.raises(CarbonInputError, match="no series gw-9/inv-1/energy"):
        await assets.register_inverter(any_store.db, tenant="acme", site="farm", source_id="pv-1", gateway="gw-9",
                                       device="inv-1", rated_w=D(1000))
    with pytest.raises(CarbonInputError, match="species"):
        await assets.register_plot(any_store.db, tenant="acme", site="farm", source_id="p-1", gateway="gw-9",
                                   trees=[TreeConfig("t-1", "no_such_tree", D(20))])


async def test_a_year_without_a_grid_factor_keeps_the_energy_and_says_why_the_avoided_co2_is_missing(
        any_store: Store) -> None:
    gw, _ = await setup(any_store)
    y2020 = H0 - 3 * 365 * 24 * HOUR  # 2020: the factor table starts with 2022, and no later year stands in
    await gw.send([Reading.make("inv-1", "energy", y2020 + m * M, 1000 + 100 * m, "Wh") for m in range(0, 61, 5)])
    pv = await assets.register_inverter(any_store.db, tenant="acme", site="farm", source_id="pv-1",
                                        gateway="gw-1", device="inv-1", rated_w=D(100_000))
    assert await any_store.data.refresh_hours(y2020 + 5 * HOUR) == [("gw-1", y2020), ("gw-1", y2020 + HOUR)]
    row = await any_store.db.fetchrow("SELECT * FROM carbon_asset_hours WHERE src = ? AND hour_ms = ?", pv.src, y2020)
    assert row is not None and row["status"] == "missing" and int(row["wh_milli"]) == 6_000_000
    assert int(row["co2_g"]) == 0 and "no factor for 2020" in row["note"]


async def test_a_backfill_in_one_pass_writes_what_hour_by_hour_writes(any_store: Store) -> None:
    """The writes go by runs of hours per member (one DELETE per run): a day backfilled at once, or hour by
    hour (in order: a tree carries its maximum from the hour before), or again over itself, leaves the same
    rows, and redoing it revises nothing."""
    gw, _ = await setup(any_store)
    await gw.send(inverter(range(0, 24 * 60, 5)))
    await gw.send(dendro("tree-001", {m: 1000.0 + (m // 90) * 0.7 for m in range(0, 24 * 60, 15)})
                  + dendro("tree-002", {m: 1000.0 + (m % 240 == 0) * 3.0 for m in range(0, 24 * 60, 30)}))
    pv = await assets.register_inverter(any_store.db, tenant="acme", site="farm", source_id="pv-1",
                                        gateway="gw-1", device="inv-1", rated_w=D(100_000))
    trees = [TreeConfig(t, "generic_ipcc", D(20), D(15), plot="p-1") for t in ("tree-001", "tree-002")]
    plot = await assets.register_plot(any_store.db, tenant="acme", site="farm", source_id="p-1", gateway="gw-1",
                                      trees=trees)
    day = (H0, H0 + 24 * HOUR)
    await assets.account_assets(any_store.db, [pv, plot], *day)
    whole = {s: await hours(any_store, s) for s in ("pv-1", "p-1")}
    days = await any_store.db.fetch("SELECT * FROM carbon_asset_days ORDER BY src, day")
    assert len(whole["pv-1"]) == 24 and len(whole["p-1"]) == 48
    assert sum(int(r["co2_g"]) for r in whole["p-1"].values()) > 0
    await any_store.db.execute("DELETE FROM carbon_asset_hours")
    for h in range(24):
        await assets.account_assets(any_store.db, [pv, plot], H0 + h * HOUR, H0 + (h + 1) * HOUR)
    await assets.account_assets(any_store.db, [pv, plot], H0 + 5 * HOUR, H0 + 9 * HOUR)  # over itself
    assert {s: await hours(any_store, s) for s in ("pv-1", "p-1")} == whole
    assert await any_store.db.fetch("SELECT * FROM carbon_asset_days ORDER BY src, day") == days
    # the refresh pass's way (revisions kept): the same figures change no field
    assert await assets.recompute(any_store.db, [("gw-1", H0 + h * HOUR) for h in range(24)], at_ms=H0) == 0
    assert await any_store.db.fetchval("SELECT count(*) FROM carbon_revisions") == 0
