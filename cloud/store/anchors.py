"""Anchoring's state in the store: pending hours, dirty windows, jobs, leaves, and what a proof reads.

The ingest marks every (gateway, hour) it commits in ``anchor_pending``; the anchor service turns
marks into dirty (site, window) rows, seals ended windows into jobs (each reading's leaf keyed by
its identity, so a reading belongs to one job only, ever) and records what the chain says. The SQL
is the same on SQLite and PostgreSQL, so proofs work on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .db import Database

JOB_COLS = ("id", "site", "start_ms", "end_ms", "part", "window_id", "count", "root", "state", "attempts",
            "last_error", "next_try_ms", "chain_id", "contract", "tx_hash", "block", "created_ms", "updated_ms")


class Anchors:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_state(self, key: str) -> str | None:
        value = await self.db.fetchval("SELECT value FROM anchor_state WHERE key = ?", key)
        return None if value is None else str(value)

    async def set_state(self, key: str, value: str) -> None:
        await self.db.execute("INSERT INTO anchor_state(key, value) VALUES (?, ?)"
                              " ON CONFLICT(key) DO UPDATE SET value = excluded.value", key, value)

    # --- pending hours -> dirty windows -------------------------------------------------------------

    async def pending_hours(self, limit: int = 500) -> list[dict[str, Any]]:
        """Hours with new readings since anchoring last looked, with the site of their gateway."""
        return await self.db.fetch(
            "SELECT p.gateway, p.hour_ms, p.gen, g.site FROM anchor_pending p JOIN gateways g ON g.id = p.gateway"
            " ORDER BY p.hour_ms, p.gateway LIMIT ?", limit)

    async def mark_windows(self, windows: set[tuple[str, int, int]], consumed: list[dict[str, Any]]) -> None:
        """Record dirty windows and clear the marks they came from (unless a commit touched them meanwhile)."""
        async with self.db.transaction() as tx:
            await tx.bulk("INSERT INTO anchor_dirty(site, start_ms, end_ms) {rows} ON CONFLICT DO NOTHING",
                          ("text", "bigint", "bigint"), sorted(windows))
            for m in consumed:
                await tx.execute("DELETE FROM anchor_pending WHERE gateway = ? AND hour_ms = ? AND gen = ?",
                                 m["gateway"], m["hour_ms"], m["gen"])

    async def due_windows(self, settle_ms: int, now: int) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT site, start_ms, end_ms FROM anchor_dirty WHERE end_ms + ? <= ?"
                                   " ORDER BY start_ms, site", settle_ms, now)

    async def window_readings(self, site: str, start: int, end: int) -> list[dict[str, Any]]:
        """The window's readings that are in no job yet, with the fields a leaf is made of."""
        return await self.db.fetch(
            "SELECT s.id AS series, s.gateway, s.device, s.point, r.ts_ms, r.value, s.unit, r.quality, r.seq"
            " FROM series s JOIN gateways g ON g.id = s.gateway"
            " JOIN readings r ON r.series = s.id AND r.ts_ms >= ? AND r.ts_ms < ?"
            " WHERE g.site = ? AND NOT EXISTS (SELECT 1 FROM anchor_leaves a WHERE a.series = r.series"
            " AND a.ts_ms = r.ts_ms) ORDER BY s.id, r.ts_ms", start, end, site)

    async def seal(self, site: str, start: int, end: int, window_id: Callable[[int], str] | None,
                   root: str | None, leaves: list[tuple[int, int, bytes]], now: int) -> int | None:
        """Make the window's next part a job with its leaves (or only clear the window when there are none).

        ``window_id(part)`` gives the on-chain id of the part this seal creates.

        Returns the job id; None when another sealer took a reading first (the caller retries next tick).
        """
        try:
            async with self.db.transaction() as tx:
                job_id = None
                if root is not None and window_id is not None:
                    part = int(await tx.fetchval("SELECT count(*) FROM anchor_jobs WHERE site = ? AND start_ms = ?"
                                                 " AND end_ms = ?", site, start, end) or 0)
                    job_id = int(await tx.fetchval(
                        "INSERT INTO anchor_jobs(site, start_ms, end_ms, part, window_id, count, root, state,"
                        " created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,'pending',?,?) RETURNING id",
                        site, start, end, part, window_id(part), len(leaves), root, now, now))
                    await tx.bulk("INSERT INTO anchor_leaves(series, ts_ms, job, leaf) {rows}",
                                  ("int", "bigint", "bigint", "bytea"),
                                  [(s, ts, job_id, leaf) for s, ts, leaf in leaves])
                await tx.execute("DELETE FROM anchor_dirty WHERE site = ? AND start_ms = ? AND end_ms = ?",
                                 site, start, end)
                return job_id
        except Exception as exc:
            if type(exc).__name__ in ("IntegrityError", "UniqueViolationError"):
                return None
            raise

    async def next_part(self, site: str, start: int, end: int) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM anchor_jobs WHERE site = ? AND start_ms = ?"
                                          " AND end_ms = ?", site, start, end) or 0)

    # --- jobs ---------------------------------------------------------------------------------------

    async def due_jobs(self, states: tuple[str, ...], now: int) -> list[int]:
        rows = await self.db.fetch(f"SELECT id FROM anchor_jobs WHERE state IN ({','.join('?' * len(states))})"
                                   " AND next_try_ms <= ? ORDER BY id", *states, now)
        return [int(r["id"]) for r in rows]

    async def update_job(self, job_id: int, **values: Any) -> None:
        if set(values) - set(JOB_COLS):
            raise ValueError(f"not job columns: {sorted(set(values) - set(JOB_COLS))}")
        sets = ", ".join(f"{k} = ?" for k in values)
        await self.db.execute(f"UPDATE anchor_jobs SET {sets} WHERE id = ?", *values.values(), job_id)

    async def jobs(self, *, state: str | None = None, site: str | None = None, job_id: int | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        where, args = [], []
        for col, val in (("state", state), ("site", site), ("id", job_id)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        return await self.db.fetch("SELECT " + ", ".join(JOB_COLS) + " FROM anchor_jobs"
                                   + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?",
                                   *args, limit)

    async def job_leaves(self, job_id: int) -> list[bytes]:
        rows = await self.db.fetch("SELECT leaf FROM anchor_leaves WHERE job = ? ORDER BY series, ts_ms", job_id)
        return [bytes(r["leaf"]) for r in rows]

    async def leaf_of(self, series: int, ts_ms: int) -> tuple[int, bytes] | None:
        row = await self.db.fetchrow("SELECT job, leaf FROM anchor_leaves WHERE series = ? AND ts_ms = ?",
                                     series, ts_ms)
        return (int(row["job"]), bytes(row["leaf"])) if row else None

    async def batch_payload(self, gateway: str, seq: int) -> bytes | None:
        value = await self.db.fetchval("SELECT payload FROM batches WHERE gateway = ? AND seq = ?", gateway, seq)
        return None if value is None else bytes(value)

    async def anchored_count(self) -> tuple[int, int]:
        """(anchored windows, readings in them): what the demo reports."""
        row = await self.db.fetchrow("SELECT count(*) AS w, coalesce(sum(count), 0) AS r FROM anchor_jobs"
                                     " WHERE state = 'anchored'")
        return (int(row["w"]), int(row["r"])) if row else (0, 0)
