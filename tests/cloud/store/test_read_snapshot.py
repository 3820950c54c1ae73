"""PostgresDatabase.read_snapshot: one read split over several connections sees one snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path

from carbonlink.cloud.store.postgres import PostgresDatabase

from .conftest import throwaway_store


async def test_connections_share_one_snapshot_and_leave_one_for_others(tmp_path: Path) -> None:
    async with throwaway_store("postgres", tmp_path, "clsnap_") as store:
        db = store.db
        assert isinstance(db, PostgresDatabase)
        await db.execute("INSERT INTO tenants (id, name, created_ms) VALUES ('a', 'a', 0)")
        async with db.read_snapshot(99) as cons:
            assert len(cons) == db.pool_size - 1  # one connection stays for everybody else
            # a write committed after the snapshot (on that free connection) is seen by none of them
            await db.execute("INSERT INTO tenants (id, name, created_ms) VALUES ('b', 'b', 0)")
            counts = await asyncio.gather(*(c.fetchval("SELECT count(*) FROM tenants") for c in cons))
            assert counts == [1] * len(cons)
        assert await db.fetchval("SELECT count(*) FROM tenants") == 2
        # two readers at once, each wanting all it may have, neither waits for the other's last connection
        async def read() -> int:
            async with db.read_snapshot(db.pool_size) as cons:
                await asyncio.sleep(0)
                return len(cons)

        assert await asyncio.wait_for(asyncio.gather(read(), read()), 30) == [db.pool_size - 1] * 2
