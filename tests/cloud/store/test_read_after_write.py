"""A read issued after a commit sees it, however many reads run at the same time (both back ends)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cloud.store.conftest import throwaway_store

# Sorted, so its first row comes only after the whole table was read: a read whose snapshot precedes the
# commit below and whose statement stays open while the rows are fetched.
BIG = "SELECT n FROM raw_big ORDER BY n % 7, n DESC"
FILL = ("INSERT INTO raw_big(n) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50000)"
        " SELECT x FROM c")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_read_after_a_commit_sees_it_while_other_reads_run(tmp_path: Path, kind: str) -> None:
    async with throwaway_store(kind, tmp_path) as store:
        db = store.db
        await db.execute("CREATE TABLE raw_t (n INTEGER NOT NULL)")
        await db.execute("CREATE TABLE raw_big (n INTEGER NOT NULL)")
        await db.execute(FILL)
        stale = 0
        for i in range(1, 7):
            others = asyncio.create_task(db.fetch(BIG))  # a long read in flight
            await asyncio.sleep(0.005)
            await db.execute("INSERT INTO raw_t(n) VALUES ($1)" if kind == "postgres"
                             else "INSERT INTO raw_t(n) VALUES (?)", i)
            seen = await db.fetchval("SELECT count(*) FROM raw_t")
            stale += int(seen) != i
            assert len(await others) == 50000
        assert stale == 0
