"""The durable outbox: readings are written here before anything else happens.

SQLite in WAL mode. Cutting a batch is one transaction: the pending readings
move into a signed batch under the next sequence number, which is persisted in
the same commit, so a kill -9 at any moment leaves no torn batch and never
reuses a sequence number. A batch leaves only when the cloud acknowledges it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from carbonlink.wire import Batch, Quality, Reading, now_ms

Signer = Callable[[Batch], Batch]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    value REAL NOT NULL, unit TEXT NOT NULL, quality TEXT NOT NULL,
    added_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    n INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO meta(k, v) VALUES ('next_seq', 1);
"""


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    n: int
    payload: bytes


class Outbox:
    def __init__(self, path: Path, gateway_id: str, *, synchronous: str = "FULL") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.gateway_id = gateway_id
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def append(self, readings: Iterable[Reading]) -> int:
        now = now_ms()
        rows = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, now) for r in readings]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
                rows,
            )
        return len(rows)

    def pending_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM pending").fetchone()[0])

    def oldest_pending_ms(self) -> int | None:
        row = self.db.execute("SELECT min(added_ms) FROM pending").fetchone()
        return row[0]

    def cut_batch(self, max_readings: int, sign: Signer) -> StoredBatch | None:
        """Move up to ``max_readings`` pending readings into one signed batch, atomically."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            rows = self.db.execute(
                "SELECT id, device, point, ts_ms, value, unit, quality FROM pending ORDER BY id LIMIT ?",
                (max_readings,),
            ).fetchall()
            if not rows:
                return None
            seq = int(self.db.execute("SELECT v FROM meta WHERE k='next_seq'").fetchone()[0])
            readings = tuple(Reading(r[1], r[2], r[3], r[4], r[5], Quality(r[6])) for r in rows)
            batch = sign(Batch(gateway=self.gateway_id, seq=seq, created_ms=now_ms(), readings=readings))
            payload = batch.to_bytes()
            self.db.execute("INSERT INTO batches(seq, created_ms, n, payload) VALUES (?,?,?,?)",
                            (seq, batch.created_ms, len(rows), payload))
            self.db.execute("DELETE FROM pending WHERE id <= ?", (rows[-1][0],))
            self.db.execute("UPDATE meta SET v = ? WHERE k='next_seq'", (seq + 1,))
        return StoredBatch(seq, len(rows), payload)

    def unacked(self, limit: int = 100, after_seq: int = 0) -> list[StoredBatch]:
        rows = self.db.execute(
            "SELECT seq, n, payload FROM batches WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [StoredBatch(r[0], r[1], bytes(r[2])) for r in rows]

    def unacked_count(self) -> tuple[int, int]:
        row = self.db.execute("SELECT count(*), coalesce(sum(n), 0) FROM batches").fetchone()
        return int(row[0]), int(row[1])

    def ack(self, seq: int) -> int:
        """Forget a batch the cloud has committed; returns its reading count (0 if unknown)."""
        with self.db:
            row = self.db.execute("DELETE FROM batches WHERE seq = ? RETURNING n", (seq,)).fetchone()
        return int(row[0]) if row else 0

    def next_seq(self) -> int:
        return int(self.db.execute("SELECT v FROM meta WHERE k='next_seq'").fetchone()[0])
