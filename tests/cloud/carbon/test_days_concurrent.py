"""Two cloud processes re-summing the same kept days at once (the refresh loop and an operator's
`carbon account`, or two ingest nodes) both finish, and the days are the sums of their hours: on
PostgreSQL each transaction's DELETE sees none of the other's uncommitted rows, so both INSERTs used
to meet on the primary key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carbonlink.cloud.carbon import sqlstore
from tests.cloud.carbon.test_dashboard import SOURCES, T0, seed
from tests.cloud.store.conftest import throwaway_store

SRCS = [s[1] for s in SOURCES]
SPAN = (T0 - 2 * 86_400_000, T0 + 400 * 86_400_000)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_concurrent_rebuilds_of_the_same_days_all_finish(tmp_path: Path, kind: str) -> None:
    async with throwaway_store(kind, tmp_path, "cldays_") as store:
        await seed(store)
        want = await store.db.fetch("SELECT * FROM carbon_days ORDER BY src, day")
        await store.db.execute("UPDATE carbon_hours SET co2_g = co2_g + 1 WHERE co2_g IS NOT NULL")
        for _ in range(5):
            await asyncio.gather(*(sqlstore.refresh_days(store.db, SRCS, *SPAN) for _ in range(4)))
        got = await store.db.fetch("SELECT * FROM carbon_days ORDER BY src, day")
        assert [(r["src"], r["day"]) for r in got] == [(r["src"], r["day"]) for r in want]
        sums = await store.db.fetch(
            "SELECT d.src, d.day, d.co2_g, (SELECT sum(h.co2_g) FROM carbon_hours h WHERE h.src = d.src"
            " AND (h.hour_ms + 28800000) / 86400000 = d.day) AS hours_g FROM carbon_days d ORDER BY d.src, d.day")
        assert all(r["co2_g"] == r["hours_g"] for r in sums)
        assert any(g["co2_g"] != w["co2_g"] for g, w in zip(got, want, strict=True))  # the new sums were written
