"""The dashboard's JSON, written by the database (cloud/carbon/dashboard.py): SQLite and PostgreSQL give
the same bytes for the same data, and the figures are the accounts' (sqlstore.periods, summed in Python)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from carbonlink.cloud.carbon import sqlstore
from carbonlink.cloud.carbon.dashboard import dashboard_json, year_range_ms
from carbonlink.cloud.store import Store
from tests.cloud.store.conftest import throwaway_store

T0 = 1_735_660_800_000  # 2025-01-01 00:00 +08:00
H = 3_600_000
# (source, src, tenant, site): two stacks at one site, a site named in Chinese, another tenant's stack
SOURCES = (("s-a1", 901, "acme", "plant-a"), ("s-a2", 902, "acme", "plant-a"), ("s-b", 903, "acme", "二号厂"),
           ("s-x", 904, "other", "plant-x"))


async def seed(store: Store) -> None:
    db = store.db
    for source_id, src, tenant, site in SOURCES:
        await db.execute("INSERT INTO carbon_sources (source_id, src, tenant, site, kind, p_atm_pa, config,"
                         " created_ms) VALUES (?, ?, ?, ?, 'cems', 101325, '{}', 0)", source_id, src, tenant, site)
    rows = []
    for _, src, _, _ in SOURCES:
        # about 70 days spread over the year, the last hours crossing into 2026 local time
        for h in [*range(0, 24 * 40, 5), *range(24 * 200, 24 * 230, 11), *range(24 * 364, 24 * 366, 3)]:
            status = "valid" if h % 7 else "substituted" if h % 2 else "missing"
            grams = None if status == "missing" else 999_999 * (h % 13) + src  # zero, whole and odd grams
            rows.append((src, T0 + h * H, status, 5, 60, grams, None if h % 3 == 0 else 1_001 * h, 7_000, 3))
    await db.executemany("INSERT INTO carbon_hours (src, hour_ms, status, params_valid, readings, co2_g, so2_g,"
                         " nox_g, dust_g, formula_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 't')", rows)
    await sqlstore.refresh_days(db, [s[1] for s in SOURCES], T0 - 2 * 86_400_000, T0 + 400 * 86_400_000)


CASES = [(g, by, tz) for g in ("day", "month", "year") for by in ("site", "stack") for tz in (480, 0)]


async def bodies(store: Store) -> dict[tuple[str, str, int], bytes]:
    return {(g, by, tz): await dashboard_json(store.db, "acme", 2025, g, tz, by=by)  # type: ignore[arg-type]
            for g, by, tz in CASES}


async def test_sqlite_and_postgresql_write_the_same_bytes(tmp_path: Path) -> None:
    got: dict[str, dict[tuple[str, str, int], bytes]] = {}
    for kind in ("sqlite", "postgres"):
        async with throwaway_store(kind, tmp_path / kind, "cldash_") as store:
            await seed(store)
            got[kind] = await bodies(store)
    assert got["sqlite"] == got["postgres"]
    body = json.loads(got["sqlite"][("day", "stack", 480)])
    assert {x["stack"] for x in body["items"]} == {"s-a1", "s-a2", "s-b"}  # the other tenant's stack is not there
    assert "二号厂" in got["sqlite"][("month", "site", 480)].decode()


async def test_figures_are_the_accounts_summed_exactly(tmp_path: Path) -> None:
    async with throwaway_store("sqlite", tmp_path, "cldash_") as store:
        await seed(store)
        for gran in ("day", "month", "year"):
            for tz in (480, 0):
                start, end = year_range_ms(2025, tz)
                body: dict[str, Any] = json.loads(await dashboard_json(store.db, "acme", 2025, gran, tz))
                # the accounts also carry solar and forest figures; the dashboard's items are the stacks' part
                want = [{k: x[k] for k in ("site", "period", "scope1_t", "pollutants_kg", "coverage", "readings")}
                        for x in await sqlstore.periods(store.db, "acme", gran, start, end, tz_offset_min=tz)]
                assert body["items"] == want and want
                assert [x["period"] for x in body["totals"]] == sorted({x["period"] for x in want})
                for t in body["totals"]:
                    mine = [x for x in want if x["period"] == t["period"]]
                    assert Decimal(t["scope1_t"]) == sum(Decimal(x["scope1_t"]) for x in mine)
                    assert t["sites"] == len(mine)
                    for k in ("valid", "substituted", "missing"):
                        assert t["coverage"][k] == sum(x["coverage"][k] for x in mine)
        stacks = json.loads(await dashboard_json(store.db, "acme", 2025, "year", 480, by="stack"))
        assert [(x["site"], x["stack"]) for x in stacks["items"]] == [("plant-a", "s-a1"), ("plant-a", "s-a2"),
                                                                      ("二号厂", "s-b")]
        assert stacks["totals"][0]["sites"] == 3  # rows, here stacks
        assert json.loads(await dashboard_json(store.db, "nobody", 2025, "day", 480)) == {
            "tenant": "nobody", "year": 2025, "granularity": "day", "by": "site", "items": [], "totals": []}


async def test_decimals_are_written_as_python_writes_them(tmp_path: Path) -> None:
    """Negative, zero, whole and tiny grams on both engines, against ``str(Decimal(units) / 10**scale)``."""
    from carbonlink.cloud.carbon.dashboard import _Dialect

    values = [0, 1, 5, 10, 999_999, 1_000_000, 1_500_000, 123_456_789, -1, -1_500_000, -3_000_000, 2**53 + 1]
    for kind in ("sqlite", "postgres"):
        async with throwaway_store(kind, tmp_path / kind, "cldash_") as store:
            d = _Dialect(store.db.dialect == "postgresql")
            for scale in (3, 6):
                for v in values:
                    got = await store.db.fetchval(f"SELECT {d.concat([d.decimal('t.v', scale)])}"
                                                  " FROM (SELECT CAST(? AS BIGINT) AS v) t", v)
                    assert got == str(Decimal(v) / 10**scale), (kind, v, scale, got)


async def test_shares_and_connections_do_not_change_the_bytes(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL writes the items in shares of the sites on connections of one snapshot: any number of
    shares, down to one connection doing everything, gives the same body."""
    from carbonlink.cloud.carbon import dashboard

    async with throwaway_store("postgres", tmp_path, "cldash_") as store:
        await seed(store)
        want = await bodies(store)
        for parts, pool_size in ((1, 4), (3, 4), (2, 3), (2, 2), (2, 1)):
            monkeypatch.setattr(dashboard, "PARTS", parts)
            monkeypatch.setattr(store.db, "pool_size", pool_size)  # of the real 4; read_snapshot leaves one free
            assert await bodies(store) == want, (parts, pool_size)
