"""Anchoring jobs: committed readings -> per-site time windows -> Merkle root -> AnchorRegistry.

Works through the store (``store.anchors``), on SQLite and PostgreSQL alike:

- The ingest marks every (gateway, hour) it commits in ``anchor_pending``; a scan turns those marks into
  the (site, window) pairs they overlap (``anchor_dirty``) and clears each mark unless a commit touched
  it meanwhile.
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
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonlink.kernel.tasks import cancel_and_wait
from carbonlink.kernel.wire import Quality, Reading

from ..store import HOUR_MS, Store
from .chain import AlreadyAnchored, Chain, ChainError, WindowKey
from .merkle import MerkleTree, reading_leaf

log = logging.getLogger(__name__)

PENDING, SENDING, ANCHORED, CONFLICT = "pending", "sending", "anchored", "conflict"

@dataclass(frozen=True)
class AnchorSettings:
    window_s: int = 300
    site_window_s: dict[str, int] = field(default_factory=dict)
    settle_s: float = 60.0  # after a window ends, before it is sealed: batches still in flight commit
    retry_initial_s: float = 5.0
    retry_cap_s: float = 600.0
    receipt_wait_s: float = 30.0  # for a transaction recorded as sent before a restart
    scan_batch: int = 500
    # Late data (a gateway back after an outage, an imported history): an hour that ended more than
    # backfill_after_s ago is anchored in windows of backfill_window_s (epoch-aligned, never shorter than the
    # site's own), so a day of backlog costs 24 transactions, not 288 of 5 minutes. 0 turns this off.
    backfill_after_s: float = 3600.0
    backfill_window_s: int = 3600

    def window_ms(self, site: str, hour_ms: int | None = None, now_ms: int | None = None) -> int:
        """The window length for the site; for an hour given with ``now_ms``, the backfill length when that
        hour is old enough to count as late data."""
        seconds = self.site_window_s.get(site, self.window_s)
        if seconds <= 0:
            raise ValueError(f"window length for site {site!r} must be positive, got {seconds}")
        if (hour_ms is not None and now_ms is not None and self.backfill_after_s > 0
                and hour_ms + HOUR_MS + self.backfill_after_s * 1000 <= now_ms):
            seconds = max(seconds, self.backfill_window_s)
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


def row_reading(row: dict[str, Any]) -> tuple[str, int, Reading]:
    """(gateway, seq, Reading) from a stored reading row (gateway, device, point, ts_ms, value, unit, quality, seq)."""
    return row["gateway"], int(row["seq"]), Reading(row["device"], row["point"], int(row["ts_ms"]),
                                                    float(row["value"]), row["unit"], Quality(row["quality"]))


class AnchorService:
    """Seals windows into jobs and anchors them; every step is safe to repeat after a crash."""

    def __init__(self, store: Store, chain: Chain | None = None, settings: AnchorSettings | None = None) -> None:
        self.store = store
        self.anchors = store.anchors
        self.chain = chain
        self.settings = settings or AnchorSettings()

    # --- state ----------------------------------------------------------------------------

    async def _get_state(self, key: str) -> str | None:
        return await self.anchors.get_state(key)

    async def _set_state(self, key: str, value: str) -> None:
        await self.anchors.set_state(key, value)

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

    async def scan(self, now_ms: int | None = None) -> int:
        """Turn the hours the ingest marked into dirty (site, window) pairs; returns the marks consumed.

        Windows never overlap in readings: a reading goes into exactly one job, whichever window
        (live or backfill length) seals it first.
        """
        now = _now_ms() if now_ms is None else now_ms
        total = 0
        while True:
            marks = await self.anchors.pending_hours(self.settings.scan_batch)
            if not marks:
                return total
            dirty: set[tuple[str, int, int]] = set()
            for m in marks:
                hour = int(m["hour_ms"])
                width = self.settings.window_ms(m["site"], hour, now)
                start = hour - hour % width
                while start < hour + HOUR_MS:
                    dirty.add((m["site"], start, start + width))
                    start += width
            await self.anchors.mark_windows(dirty, marks)
            total += len(marks)
            if len(marks) < self.settings.scan_batch:
                return total

    async def seal(self, now_ms: int | None = None) -> list[Job]:
        """Turn every dirty window that has ended (plus settle time) into a job with its root."""
        now = _now_ms() if now_ms is None else now_ms
        settle = int(self.settings.settle_s * 1000)
        jobs = []
        for w in await self.anchors.due_windows(settle, now):
            site, start, end = w["site"], int(w["start_ms"]), int(w["end_ms"])
            job = await self._seal_one(site, start, end, now)
            if job is not None:
                jobs.append(job)
                log.info("sealed window %s [%s, %s) part %s: %s readings, root %s",
                         site, start, end, job.part, job.count, job.root)
        return jobs

    async def _seal_one(self, site: str, start: int, end: int, now: int) -> Job | None:
        # Read and hash outside the write transaction so ingest is not held up by a large window; a
        # reading committed meanwhile marks the window dirty again and goes into the next part.
        rows = await self.anchors.window_readings(site, start, end)
        tree: MerkleTree | None = None
        leaves: list[bytes] = []
        if rows:
            leaves, tree = await asyncio.to_thread(_leaves_and_tree, rows)
        job_id = await self.anchors.seal(
            site, start, end, (lambda part: "0x" + WindowKey(site, start, end, part).id.hex()) if tree else None,
            "0x" + tree.root.hex() if tree else None,
            [(int(r["series"]), int(r["ts_ms"]), leaf) for r, leaf in zip(rows, leaves, strict=True)], now)
        if job_id is None and tree is not None:
            log.warning("window %s [%s, %s) changed while sealing, retried next tick", site, start, end)
        return None if job_id is None else await self.job(job_id)

    # --- send -------------------------------------------------------------------------------

    async def send(self, now_ms: int | None = None) -> tuple[list[Job], list[Job]]:
        """Anchor every job that is due; returns (anchored, failed this time)."""
        now = _now_ms() if now_ms is None else now_ms
        due = await self.anchors.due_jobs((PENDING, SENDING), now)
        if not due:
            return [], []
        await self.ensure_registry()
        anchored: list[Job] = []
        failed: list[Job] = []
        for job_id in due:
            job = await self.job(job_id)
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
        await self.anchors.update_job(job_id, **values)

    # --- run ----------------------------------------------------------------------------------

    async def run_once(self, now_ms: int | None = None) -> TickResult:
        result = TickResult(scanned=await self.scan(now_ms))
        result.sealed = await self.seal(now_ms)
        if self.chain is not None:
            result.anchored, result.failed = await self.send(now_ms)
        return result

    async def run(self, interval_s: float = 10.0) -> None:
        """Scan, seal and send forever; a failing tick is logged and the next one tries again."""
        while True:
            try:
                await self.run_once()
            except (ChainError, OSError) as exc:
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
        rows = await self.anchors.jobs(state=state, site=site, job_id=job_id, limit=limit)
        return [Job(**r) for r in rows]

    async def job_leaves(self, job_id: int) -> list[bytes]:
        return await self.anchors.job_leaves(job_id)


def _leaves_and_tree(rows: Sequence[dict[str, Any]]) -> tuple[list[bytes], MerkleTree]:
    leaves = [reading_leaf(*row_reading(r)) for r in rows]
    return leaves, MerkleTree.build(leaves)


@contextlib.asynccontextmanager
async def running_anchor(store: Store, chain_url: str, *, settings: AnchorSettings | None = None,
                         contract: str | None = None, keystore: Path | None = None,
                         interval_s: float = 10.0) -> AsyncIterator[AnchorService]:
    """Run the anchoring loop in the background (for ``carbonlink demo`` / ``cloud serve``) on an open store.

    Connects the chain (signing key from ``keystore`` or the environment, see ``chain.load_signer``),
    deploys or finds the registry, then scans, seals and sends every ``interval_s`` until the block exits.
    """
    from .chain import load_signer

    chain = await Chain.connect(chain_url, signer=load_signer(keystore), contract=contract)
    service = AnchorService(store, chain, settings)
    try:
        await service.ensure_registry()
        task = asyncio.create_task(service.run(interval_s), name="anchor")
        try:
            yield service
        finally:
            # cancelled until it really ends: a cancellation that lands as a chain call or a store read
            # finishes can be lost (Python 3.11's wait_for), and a plain cancel-then-await then hung the
            # demo's exit with the loop sleeping between ticks forever
            await cancel_and_wait([task], what="anchoring")
    finally:
        await chain.close()
