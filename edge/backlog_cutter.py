"""Backlog batches cut in a pipeline, for draining a large backlog at the speed of two cores.

A cut has two phases (``Outbox.prepare_cut``, ``Outbox.commit_cut``): reading, joining and signing
its rows, then, under the write lock, checking, writing and committing them. One after the other, a
drain runs at the speed of their sum on one core. Here the next cut's first phase runs on one
connection while this cut's second phase runs on another, in a second thread: SQLite releases the GIL
while it reads, writes and syncs, so the two overlap.

The next cut reads only rows above the last id of the one being committed, so the two never take the
same rows. Each commit is the same single transaction as a plain cut: a kill at any moment leaves
every batch either whole and stored or its rows still pending, and a sequence number is never reused.
Batches may take their sequence numbers out of id order (a live cut can come between): to the cloud a
batch is a set of readings under a seq, and its idempotence is by (gateway, seq) and reading identity.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future, ThreadPoolExecutor

from carbonlink.edge.outbox import MAX_BATCH_BYTES, Outbox, PreparedCut, Signer, StoredBatch

# A cut whose rows changed before its commit (a rollup) starts the pipeline again; this many times at most.
MAX_RESTARTS = 5


class BacklogCutter:
    """Cuts up to ``count`` backlog batches per call, the next read overlapping this commit.

    Owns two connections to the outbox and one thread for commits; ``close`` releases them. Not for use by
    two callers at once (the uplink calls it from one worker thread at a time).
    """

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._reader = outbox.second_connection()
        self._writer = outbox.second_connection()
        self._commits = ThreadPoolExecutor(1, thread_name_prefix="outbox-commit")

    def cut(self, count: int, max_readings: int, sign: Signer, *, live_after_ms: int,
            max_bytes: int = MAX_BATCH_BYTES) -> list[StoredBatch]:
        """Up to ``count`` backlog batches of up to ``max_readings`` each, committed (fewer when the backlog
        runs out). Raises what the outbox raises; the batches committed before the error stay committed and
        are found by the uplink as unacked batches."""
        if count <= 1:  # nothing to overlap (a rate-limited drain cuts one at a time): one connection, no handoff
            one = self._writer.cut_batch(max_readings, sign, lane="backlog", live_after_ms=live_after_ms,
                                         max_bytes=max_bytes)
            return [] if one is None else [one]
        out: list[StoredBatch] = []
        restarts = 0

        def prepare(after: PreparedCut | None) -> PreparedCut | None:
            """The next cut: from the first pending row, or above ``after`` (still committing) under the seq
            after its guess."""
            guess = after.seq_guess if after is not None else None
            return self._reader.prepare_cut(max_readings, sign, lane="backlog", live_after_ms=live_after_ms,
                                            max_bytes=max_bytes, after_id=after.hi if after is not None else 0,
                                            seq_guess=None if guess is None else guess + 1)

        cut = prepare(None)
        while cut is not None and len(out) < count:
            committing: Future[StoredBatch | None] = self._commits.submit(self._writer.commit_cut, cut, sign)
            following: PreparedCut | None = None
            try:
                if len(out) + 1 < count:
                    following = prepare(cut)
            finally:
                batch = committing.result()  # the commit's own error, if any, is raised here
            if batch is None:  # its rows changed under it: read again from the first pending row
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise sqlite3.OperationalError("the outbox kept changing under a batch cut; try again")
                cut = prepare(None)
                continue
            out.append(batch)
            cut = following
        return out

    def close(self) -> None:
        self._commits.shutdown(wait=True)
        self._reader.close()
        self._writer.close()
