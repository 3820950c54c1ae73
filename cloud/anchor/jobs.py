"""Anchoring jobs: committed readings -> per-site time windows -> Merkle root -> AnchorRegistry.

Works on the cloud's SQLite database (the store's ``batches``, ``readings``, ``gateways`` and ``latest``
tables are only read) and keeps its own state in its own tables:

- ``anchor_scan``: the rowid of the last ``batches`` row looked at. New batches mark the (site, window)
  pairs their readings fall in as dirty (``anchor_dirty``).
- A dirty window is *sealed* once it has ended and ``settle_s`` has passed (time for in-flight batches
  to commit): in one transaction the window's readings that are in no job yet become a job
  (``anchor_jobs``), each with its leaf hash (``anchor_leaves``, keyed by the reading's identity, so a
  reading belongs to exactly one job, ever). Readings that arrive after a window was sealed (a gateway
  that was offline for a day) make it dirty again and go into the next *part* of the same window.
- A job is then sent: ``pending`` -> ``sending`` (a transaction may exist; its hash is recorded as soon
  as the node accepts it) -> ``anchored`` (transaction, block, chain id and contract recorded). Before
  every send the contract is read first, so a restart after a crash at any point finds the root already
  on chain and only records it: never two anchors for one window (and the contract itself refuses a
  second root for a window, the last guard). A chain that holds a *different* root for the window marks
  the job ``conflict`` for a human. Failures are retried with a capped, doubling delay.

Window length is per site (``AnchorSettings.site_window_s``, default ``window_s``) and aligned to the
Unix epoch, so every process computes the same boundaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from carbonlink.kernel.wire import Quality, Reading, WireError, parse_ts

from .chain import AlreadyAnchored, Chain, ChainError, WindowKey
from .merkle import MerkleTree, reading_leaf

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS anchor_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS anchor_dirty (
    site TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, PRIMARY KEY (site, start_ms, end_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS anchor_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, start_ms INTEGER NOT NULL, end_ms INTEGER NOT NULL, part INTEGER NOT NULL,
    window_id TEXT NOT NULL UNIQUE, count INTEGER NOT NULL, root TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    next_try_ms INTEGER NOT NULL DEFAULT 0,
    chain_id INTEGER, contract TEXT, tx_hash TEXT, block INTEGER,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    UNIQUE (site, start_ms, end_ms, part)
);
CREATE INDEX IF NOT EXISTS anchor_jobs_state ON anchor_jobs(state, next_try_ms);
CREATE TABLE IF NOT EXISTS anchor_leaves (
    gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts_ms INTEGER NOT NULL,
    job INTEGER NOT NULL, leaf BLOB NOT NULL,
    PRIMARY KEY (gateway, device, point, ts_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS anchor_leaves_job ON anchor_leaves(job);
"""

PENDING, SENDING, ANCHORED, CONFLICT = "pending", "sending", "anchored", "conflict"

_WINDOW_READINGS = """
SELECT r.gateway, r.device, r.point, r.ts_ms, r.value, r.unit, r.quality, r.seq
FROM (SELECT DISTINCT l.gateway, l.device FROM latest l JOIN gateways g ON g.id = l.gateway
      WHERE g.site = ?) d
JOIN readings r ON r.device = d.device AND r.gateway = d.gateway AND r.ts_ms >= ? AND r.ts_ms < ?
WHERE NOT EXISTS (SELECT 1 FROM anchor_leaves a WHERE a.gateway = r.gateway AND a.device = r.device
                  AND a.point = r.point AND a.ts_ms = r.ts_ms)
"""


@dataclass(frozen=True)
class AnchorSettings:
    window_s: int = 300
    site_window_s: dict[str, int] = field(default_factory=dict)
    settle_s: float = 60.0  # after a window ends, before it is sealed: batches still in flight commit
    retry_initial_s: float = 5.0
    retry_cap_s: float = 600.0
    receipt_wait_s: float = 30.0  # for a transaction recorded as sent before a restart
    scan_batch: int = 500

    def window_ms(self, site: str) -> int:
        seconds = self.site_window_s.get(site, self.window_s)
        if seconds <= 0:
            raise ValueError(f"window length for site {site!r} must be positive, got {seconds}")
        return int(seconds * 1000)


@dataclass(frozen=True)
class Job:
    id: int
    site: str
    start_ms: int
    end_ms: int
    part: int
    window_id: str
    count: int
    root: str
    state: str
    attempts: int
    last_error: str | None
    next_try_ms: int
    chain_id: int | None
    contract: str | None
    tx_hash: str | None
    block: int | None
    created_ms: int
    updated_ms: int

    @property
    def window(self) -> WindowKey:
        return WindowKey(self.site, self.start_ms, self.end_ms, self.part)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class TickResult:
    scanned: int = 0
    sealed: list[Job] = field(default_factory=list)
    anchored: list[Job] = field(default_factory=list)
    failed: list[Job] = field(default_factory=list)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def row_reading(row: Sequence[Any]) -> tuple[str, int, Reading]:
    """(gateway, seq, Reading) from a ``readings`` row: gateway, device, point, ts_ms, value, unit, quality, seq."""
    gateway, device, point, ts_ms, value, unit, quality, seq = row
    return gateway, int(seq), Reading(device, point, int(ts_ms), float(value), unit, Quality(quality))


class AnchorService:
    """Seals windows into jobs and anchors them; every step is safe to repeat after a crash."""

    def __init__(self, db_path: str | Path, chain: Chain | None = None,
                 settings: AnchorSettings | None = None) -> None:
        self.path = Path(str(db_path).removeprefix("sqlite:///"))
        self.chain = chain
        self.settings = settings or AnchorSettings()
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("anchor service is not open; call await service.open() first")
        return self._db

    async def open(self) -> None:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} does not exist: start the cloud store first")
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA busy_timeout=5000")
        row = await (await self._db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type='table' AND name IN ('batches','readings','gateways')"
        )).fetchone()
        if not row or row[0] != 3:
            await self.close()
            raise RuntimeError(f"{self.path} has no cloud store tables: open the store (carbonlink cloud serve) first")
        await self._db.executescript(SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> AnchorService:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- state ----------------------------------------------------------------------------

    async def _get_state(self, key: str) -> str | None:
        row = await (await self.db.execute("SELECT value FROM anchor_state WHERE key = ?", (key,))).fetchone()
        return None if row is None else str(row[0])

    async def _set_state(self, key: str, value: str) -> None:
        await self.db.execute("INSERT INTO anchor_state(key, value) VALUES (?, ?)"
                              " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    async def ensure_registry(self, deploy: bool = True) -> str:
        """The registry address for this chain: the chain's, the recorded one, or a new deployment."""
        chain = self._need_chain()
        chain_id = await chain.chain_id()
        if chain.registry is None:
            known = await self._get_state(f"contract:{chain_id}")
            if known:
                chain.use(known)
            elif deploy:
                address = await chain.deploy()
                await self._set_state(f"contract:{chain_id}", address)
                log.info("deployed AnchorRegistry at %s on chain %s", address, chain_id)
            else:
                raise ChainError(f"no AnchorRegistry known for chain {chain_id}: pass --contract or allow deploy")
        code = await chain.w3.eth.get_code(chain.address)  # type: ignore[arg-type]
        if not code:
            raise ChainError(f"no contract at {chain.address} on chain {chain_id} (was the demo chain journal"
                             " deleted?); point to the right node or contract")
        await self._set_state(f"contract:{chain_id}", chain.address)
        return chain.address

    def _need_chain(self) -> Chain:
        if self.chain is None:
            raise ChainError("the anchor service has no chain connection")
        return self.chain

    # --- scan and seal ----------------------------------------------------------------------

    async def scan(self) -> int:
        """Mark the windows touched by batches committed since the last scan as dirty.

        A rowid watermark is enough: SQLite has one writer at a time, so a batch committed later
        always has a larger rowid than every batch already visible.
        """
        total = 0
        while True:
            mark = int(await self._get_state("batches_rowid") or 0)
            rows = list(await (await self.db.execute(
                "SELECT b.rowid, b.payload, g.site FROM batches b JOIN gateways g ON g.id = b.gateway"
                " WHERE b.rowid > ? ORDER BY b.rowid LIMIT ?", (mark, self.settings.scan_batch))).fetchall())
            if not rows:
                return total
            dirty: set[tuple[str, int, int]] = set()
            for rowid, payload, site in rows:
                width = self.settings.window_ms(site)
                try:
                    stamps = {parse_ts(r["ts"]) for r in json.loads(payload)["readings"]}
                except (ValueError, KeyError, TypeError, WireError) as exc:
                    # committed batches were validated by ingest; one that is not parseable now is logged
                    log.error("batch rowid %s cannot be read for anchoring: %s", rowid, exc)
                    continue
                for ts in stamps:
                    start = ts - ts % width
                    dirty.add((site, start, start + width))
                mark = rowid
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.executemany(
                    "INSERT OR IGNORE INTO anchor_dirty(site, start_ms, end_ms) VALUES (?,?,?)", sorted(dirty))
                await self._set_state("batches_rowid", str(mark))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            total += len(rows)

    async def seal(self, now_ms: int | None = None) -> list[Job]:
        """Turn every dirty window that has ended (plus settle time) into a job with its root."""
        now = _now_ms() if now_ms is None else now_ms
        settle = int(self.settings.settle_s * 1000)
        due = await (await self.db.execute(
            "SELECT site, start_ms, end_ms FROM anchor_dirty WHERE end_ms + ? <= ? ORDER BY start_ms, site",
            (settle, now))).fetchall()
        jobs = []
        for site, start, end in due:
            job = await self._seal_one(site, int(start), int(end), now)
            if job is not None:
                jobs.append(job)
                log.info("sealed window %s [%s, %s) part %s: %s readings, root %s",
                         site, start, end, job.part, job.count, job.root)
        return jobs

    async def _seal_one(self, site: str, start: int, end: int, now: int) -> Job | None:
        db = self.db
        # Read and hash outside the write transaction so ingest is not held up by a large window; a
        # reading committed meanwhile marks the window dirty again and goes into the next part.
        rows = list(await (await db.execute(_WINDOW_READINGS, (site, start, end))).fetchall())
        leaves: list[bytes] = []
        tree: MerkleTree | None = None
        if rows:
            leaves, tree = await asyncio.to_thread(_leaves_and_tree, rows)
        job_id = None
        await db.execute("BEGIN IMMEDIATE")
        try:
            if tree is not None:
                row = await (await db.execute(
                    "SELECT count(*) FROM anchor_jobs WHERE site = ? AND start_ms = ? AND end_ms = ?",
                    (site, start, end))).fetchone()
                part = int(row[0]) if row else 0
                key = WindowKey(site, start, end, part)
                cur = await db.execute(
                    "INSERT INTO anchor_jobs(site, start_ms, end_ms, part, window_id, count, root, state,"
                    " created_ms, updated_ms) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (site, start, end, part, "0x" + key.id.hex(), len(rows), "0x" + tree.root.hex(), PENDING,
                     now, now))
                job_id = cur.lastrowid
                # the primary key makes a reading part of one job only, even with two services racing
                await db.executemany(
                    "INSERT INTO anchor_leaves(gateway, device, point, ts_ms, job, leaf) VALUES (?,?,?,?,?,?)",
                    [(r[0], r[1], r[2], r[3], job_id, leaf) for r, leaf in zip(rows, leaves, strict=True)])
            await db.execute("DELETE FROM anchor_dirty WHERE site = ? AND start_ms = ? AND end_ms = ?",
                             (site, start, end))
            await db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            await db.execute("ROLLBACK")
            log.warning("window %s [%s, %s) changed while sealing, retried next tick: %s", site, start, end, exc)
            return None
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return None if job_id is None else await self.job(job_id)

    # --- send -------------------------------------------------------------------------------

    async def send(self, now_ms: int | None = None) -> tuple[list[Job], list[Job]]:
        """Anchor every job that is due; returns (anchored, failed this time)."""
        now = _now_ms() if now_ms is None else now_ms
        rows = await (await self.db.execute(
            "SELECT id FROM anchor_jobs WHERE state IN (?, ?) AND next_try_ms <= ? ORDER BY id",
            (PENDING, SENDING, now))).fetchall()
        if not rows:
            return [], []
        await self.ensure_registry()
        anchored: list[Job] = []
        failed: list[Job] = []
        for (job_id,) in rows:
            job = await self.job(int(job_id))
            try:
                done = await self._anchor(job)
            except ChainError as exc:
                delay = min(self.settings.retry_cap_s, self.settings.retry_initial_s * 2 ** job.attempts)
                await self._update(job.id, last_error=str(exc), next_try_ms=_now_ms() + int(delay * 1000))
                log.warning("anchoring job %s (%s) failed, retry in %.0f s: %s", job.id, job.window_id, delay, exc)
                failed.append(await self.job(job.id))
                continue
            (anchored if done.state == ANCHORED else failed).append(done)
        return anchored, failed

    async def _anchor(self, job: Job) -> Job:
        chain = self._need_chain()
        key, root = job.window, bytes.fromhex(job.root[2:])
        onchain = await chain.get_window(key.id)
        if onchain is None and job.tx_hash:  # sent before a restart: it may still be mined
            await chain.wait_for(job.tx_hash, self.settings.receipt_wait_s)
            onchain = await chain.get_window(key.id)
        if onchain is None:
            await self._update(job.id, state=SENDING, attempts=job.attempts + 1)

            async def record(tx_hash: str) -> None:
                await self._update(job.id, tx_hash=tx_hash)

            try:
                receipt = await chain.anchor(key, root, job.count, on_sent=record)
                return await self._mark_anchored(job.id, receipt.tx_hash, receipt.block)
            except AlreadyAnchored:
                onchain = await chain.get_window(key.id)
                if onchain is None:
                    raise ChainError("the registry says the window is anchored but returns no root") from None
        if onchain.root != root:
            error = f"chain holds root 0x{onchain.root.hex()} for this window, ours is {job.root}"
            await self._update(job.id, state=CONFLICT, last_error=error)
            log.error("job %s: chain holds another root for window %s", job.id, job.window_id)
            return await self.job(job.id)
        found = await chain.find_anchor_tx(key.id)
        return await self._mark_anchored(job.id, found.tx_hash if found else job.tx_hash, onchain.anchored_block)

    async def _mark_anchored(self, job_id: int, tx_hash: str | None, block: int) -> Job:
        chain = self._need_chain()
        await self._update(job_id, state=ANCHORED, tx_hash=tx_hash, block=block, last_error=None,
                           chain_id=await chain.chain_id(), contract=chain.address)
        return await self.job(job_id)

    async def _update(self, job_id: int, **values: Any) -> None:
        values["updated_ms"] = _now_ms()
        sets = ", ".join(f"{k} = ?" for k in values)
        await self.db.execute(f"UPDATE anchor_jobs SET {sets} WHERE id = ?", (*values.values(), job_id))

    # --- run ----------------------------------------------------------------------------------

    async def run_once(self, now_ms: int | None = None) -> TickResult:
        result = TickResult(scanned=await self.scan())
        result.sealed = await self.seal(now_ms)
        if self.chain is not None:
            result.anchored, result.failed = await self.send(now_ms)
        return result

    async def run(self, interval_s: float = 10.0) -> None:
        """Scan, seal and send forever; a failing tick is logged and the next one tries again."""
        while True:
            try:
                await self.run_once()
            except (ChainError, aiosqlite.Error, OSError) as exc:
                log.warning("anchoring tick failed, next in %.0f s: %s", interval_s, exc)
            await asyncio.sleep(interval_s)

    # --- queries ------------------------------------------------------------------------------

    async def job(self, job_id: int) -> Job:
        rows = await self.jobs(job_id=job_id)
        if not rows:
            raise KeyError(f"no anchor job {job_id}")
        return rows[0]

    async def jobs(self, *, state: str | None = None, site: str | None = None, job_id: int | None = None,
                   limit: int = 100) -> list[Job]:
        where, args = [], []
        for col, val in (("state", state), ("site", site), ("id", job_id)):
            if val is not None:
                where.append(f"{col} = ?")
                args.append(val)
        sql = ("SELECT " + ", ".join(Job.__dataclass_fields__) + " FROM anchor_jobs"
               + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
        rows = await (await self.db.execute(sql, (*args, limit))).fetchall()
        return [Job(*r) for r in rows]

    async def job_leaves(self, job_id: int) -> list[bytes]:
        rows = await (await self.db.execute("SELECT leaf FROM anchor_leaves WHERE job = ?", (job_id,))).fetchall()
        return [bytes(r[0]) for r in rows]


def _leaves_and_tree(rows: Sequence[Sequence[Any]]) -> tuple[list[bytes], MerkleTree]:
    leaves = [reading_leaf(*row_reading(r)) for r in rows]
    return leaves, MerkleTree.build(leaves)


@contextlib.asynccontextmanager
async def running_anchor(db: str | Path, chain_url: str, *, settings: AnchorSettings | None = None,
                         contract: str | None = None, keystore: Path | None = None,
                         interval_s: float = 10.0) -> AsyncIterator[AnchorService]:
    """Run the anchoring loop in the background (for ``carbonlink demo`` / ``cloud serve``).

    Connects the chain (signing key from ``keystore`` or the environment, see ``chain.load_signer``),
    deploys or finds the registry, then scans, seals and sends every ``interval_s`` until the block exits.
    """
    from .chain import load_signer

    chain = await Chain.connect(chain_url, signer=load_signer(keystore), contract=contract)
    service = AnchorService(db, chain, settings)
    try:
        await service.open()
        await service.ensure_registry()
        task = asyncio.create_task(service.run(interval_s), name="anchor")
        try:
            yield service
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    finally:
        await service.close()
        await chain.close()
