"""Carbon accounting in SQL on the hour rollups, the same on SQLite and PostgreSQL, checked against the
Python reference (``cems.account_stack``) on the simulated stack's hours."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from carbonlink.cloud.carbon.cems import HourValue, StackConfig, account_stack
from carbonlink.cloud.carbon.sqlstore import (
    account_hours,
    day_totals,
    hour_provenance,
    recompute,
    register_stack,
    stack_days_sql,
)
from carbonlink.cloud.store import Store
from carbonlink.simulators.cems import CemsStack
from tests.cloud.carbon.simdata import MARCH, H, stack_hours
from tests.cloud.carbon.sqldata import add_series, rollup_rows, write_rollups

HOURS = 48
INVALID = frozenset({5, 6, 30})
CFG = StackConfig("stack-1", p_atm_pa=D(101325))


@pytest.fixture(scope="module")
def sim_hours() -> dict[int, dict[str, HourValue]]:
    stack = CemsStack(seed=7, clock=lambda: MARCH)
    return stack_hours(stack, MARCH, HOURS, step_s=300, invalid=INVALID, fuel=False)


async def setup(store: Store, hours: dict[int, dict[str, HourValue]]):  # type: ignore[no-untyped-def]
    db = store.db
    series = await add_series(db, "gw-1", "cems-1")
    await write_rollups(db, rollup_rows(series, hours))
    return await register_stack(db, tenant="acme", site="plant-a", config=CFG, gateway="gw-1", device="cems-1",
                                pressure_kind="static")


async def test_sql_hours_match_the_python_reference(any_store: Store, sim_hours) -> None:  # type: ignore[no-untyped-def]
    src = await setup(any_store, sim_hours)
    counts = await account_hours(any_store.db, src, MARCH * 1000, (MARCH + HOURS * H) * 1000)
    assert counts == {"valid": HOURS - len(INVALID), "substituted": len(INVALID)}
    ref, period = account_stack(CFG, sim_hours, start=MARCH, end=MARCH + HOURS * H)
    rows = {int(r["hour_ms"]) // 1000: r for r in await any_store.db.fetch(
        "SELECT * FROM carbon_hours ORDER BY hour_ms")}
    for h in ref:
        r = rows[h.hour]
        assert r["status"] == h.status
        assert abs(int(r["co2_g"]) - int(h.co2_measured_t * 1_000_000)) <= 1  # type: ignore[operator]
        for p in ("so2", "nox", "dust"):
            assert abs(int(r[f"{p}_g"]) - int(h.mass_kg[p] * 1000)) <= 1
    days = await day_totals(any_store.db, "acme", MARCH * 1000, (MARCH + HOURS * H) * 1000)
    assert [d["valid"] + d["substituted"] for d in days] == [24, 24]
    total = sum(d["co2_g"] for d in days)
    assert abs(total - int(period.co2_measured_t * 1_000_000)) <= HOURS
    assert sum(d["substituted"] for d in days) == 3 and days[0]["readings"] > 0


async def test_a_late_hour_is_recomputed_alone_with_a_revision(any_store: Store, sim_hours) -> None:  # type: ignore[no-untyped-def]
    src = await setup(any_store, sim_hours)
    db = any_store.db
    await account_hours(db, src, MARCH * 1000, (MARCH + HOURS * H) * 1000)
    before = {int(r["hour_ms"]): r for r in await db.fetch("SELECT * FROM carbon_hours ORDER BY hour_ms")}
    late = (MARCH + 30 * H) * 1000  # the backfill completes hour 30: all its minutes arrive
    await db.execute("UPDATE rollup_hour SET valid_minutes = 60 WHERE hour_ms = ?", late)
    revised = await recompute(db, [("gw-1", late)], at_ms=late + 7 * H * 1000)
    after = {int(r["hour_ms"]): r for r in await db.fetch("SELECT * FROM carbon_hours ORDER BY hour_ms")}
    assert after[late]["status"] == "valid" and before[late]["status"] == "substituted"
    assert {h for h in after if dict(after[h]) != dict(before[h])} == {late}
    revs = await db.fetch("SELECT field, before_v, after_v FROM carbon_revisions ORDER BY field")
    assert revised == len(revs) and ("status", "substituted", "valid") in [tuple(r.values()) for r in revs]
    prov = await hour_provenance(db, "stack-1", late)
    assert {i["role"] for i in prov["inputs"]} >= {"flow", "co2", "so2"} and prov["revisions"]
    assert all(i["valid_minutes"] == 60 for i in prov["inputs"]) and prov["anchored_roots"] == []
    assert await recompute(db, [("gw-1", late)], at_ms=late + 8 * H * 1000) == 0  # nothing new: no revision


async def test_hours_without_rollups_are_missing_or_substituted_never_zero(any_store: Store, sim_hours) -> None:  # type: ignore[no-untyped-def]
    first = {t: row for t, row in sim_hours.items() if t < MARCH + 10 * H}
    src = await setup(any_store, first)
    counts = await account_hours(any_store.db, src, MARCH * 1000, (MARCH + 12 * H) * 1000)
    # hours 10, 11 have no data: the open gap takes the hour before (provisional), marked substituted
    assert counts["substituted"] == len(INVALID - {30}) + 2
    rows = await any_store.db.fetch("SELECT note FROM carbon_hours WHERE hour_ms >= ?", (MARCH + 10 * H) * 1000)
    assert all("provisional" in r["note"] for r in rows)


async def test_warnings_are_raised_once_per_level_and_year(any_store: Store) -> None:
    from carbonlink.cloud.carbon.forecast import forecast_year_end
    from carbonlink.cloud.carbon.sqlstore import raise_warnings

    db = any_store.db
    last = {m: D(1000) for m in range(1, 13)}
    f = forecast_year_end(2023, 6, 30, {m: D(1000) for m in range(1, 7)}, last, D(12_500))  # 96 %
    new = await raise_warnings(db, "acme", f, at_ms=1)
    assert [w["level"] for w in new] == ["notice", "warning"]
    assert await raise_warnings(db, "acme", f, at_ms=2) == []  # raised once
    worse = forecast_year_end(2023, 7, 31, {m: D(1100) for m in range(1, 8)}, last, D(12_500))
    assert [w["level"] for w in await raise_warnings(db, "acme", worse, at_ms=3)] == ["exceeded"]
    rows = await db.fetch("SELECT level, severity FROM carbon_warnings ORDER BY at_ms, level")
    assert [(r["level"], r["severity"]) for r in rows] == [("notice", "info"), ("warning", "warning"),
                                                           ("exceeded", "critical")]


async def _days_kept(db: Any) -> list[tuple[int, ...]]:
    rows = await db.fetch("SELECT src, day, co2_g, so2_g, nox_g, dust_g, valid, substituted, missing, readings"
                          " FROM carbon_days WHERE tz_offset_min = 480 ORDER BY src, day")
    return [tuple(int(v) for v in r.values()) for r in rows]


async def _days_from_hours(db: Any) -> list[tuple[int, ...]]:
    sql, args = stack_days_sql(MARCH * 1000 - 7 * 86_400_000 + 1, (MARCH + HOURS * H) * 1000 + 86_400_000, 480)
    rows = await db.fetch(f"SELECT src, day, co2_g, so2_g, nox_g, dust_g, valid, substituted, missing, readings"
                          f" FROM ({sql}) d ORDER BY src, day", "acme", *args)
    return [tuple(int(v) for v in r.values()) for r in rows]


async def test_kept_days_follow_their_hours_through_substitution_and_late_data(any_store: Store,
                                                                               sim_hours) -> None:  # type: ignore[no-untyped-def]
    src = await setup(any_store, sim_hours)
    db = any_store.db
    await account_hours(db, src, MARCH * 1000, (MARCH + HOURS * H) * 1000)
    kept = await _days_kept(db)
    assert len(kept) == 2 and kept == await _days_from_hours(db)  # misaligned range: read from the hours
    late = (MARCH + 30 * H) * 1000
    await db.execute("UPDATE rollup_hour SET valid_minutes = 60, vsum = vsum * 2 WHERE hour_ms = ?", late)
    await recompute(db, [("gw-1", late)], at_ms=late + 7 * H * 1000)
    after = await _days_kept(db)
    assert after == await _days_from_hours(db) and after[0] == kept[0] and after[1] != kept[1]
    # whole local days at UTC+8 are read from the kept days, with the same figures as from the hours
    whole = await day_totals(db, "acme", MARCH * 1000, (MARCH + 2 * 24 * H) * 1000)
    assert [(d["day"], d["co2_g"], d["valid"], d["substituted"]) for d in whole] == [
        (k[1], k[2], k[6], k[7]) for k in after]
    by_hours = await day_totals(db, "acme", MARCH * 1000, (MARCH + 2 * 24 * H) * 1000, tz_offset_min=465)
    assert sum(d["co2_g"] for d in by_hours) == sum(k[2] for k in after)
