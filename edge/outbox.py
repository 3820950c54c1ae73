"""The durable outbox: readings are written here before anything else happens.

SQLite in WAL mode. Cutting a batch is one transaction: the chosen pending
readings move into a signed batch under the next sequence number, which is
persisted in the same commit, so a kill -9 at any moment leaves no torn batch
and never reuses a sequence number. A batch leaves only when the cloud acks it.

Two lanes, one sequence. Pending readings younger than the live window are the
*live* lane, older ones the *backlog* lane. The uplink cuts batches on demand,
live first, backlog oldest-first under a rate limit; whichever lane a batch comes
from, it takes the next sequence number at the moment it is cut. So seq always
increases per gateway (in cut order, not in reading time order) and the cloud's
idempotence by (gateway, seq) and by reading identity is unaffected. Because
batches are only cut when they can be sent, the number of cut-but-unacked
batches stays bounded by the uplink's windows and the backlog stays as raw
pending rows, which the quota policy below can still act on.

Overflow policy (disk quota). When the outbox uses more than its quota, the
stored wire texts are dropped first, oldest first (a cache of each reading's
canonical text that makes cutting a backlog batch a join: without it the
readings are rendered from their columns when cut, as before). If it is still
over quota, the oldest raw backlog readings are rolled up to 1-minute aggregates: per device,
point, unit and minute, one reading ``{point}@1m`` holding the mean (stamped at
the start of the minute, with the group's worst quality flag) and one
``{point}@1m.n`` holding how many raw readings it replaces. Nothing is dropped
silently: every rollup is counted (``rolled_up_raw`` persisted in the outbox),
logged, and queued as an ``outbox.overflow`` event for the cloud. If the
outbox is still over quota when no raw backlog is left, it keeps accepting
readings and raises ``outbox.quota_exceeded``: data is never thrown away.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.kernel.events import Event, Severity, new_event_id, sign_event
from carbonlink.kernel.wire import (
    MAX_BATCH_BYTES,
    WIRE_VERSION,
    Batch,
    Quality,
    Reading,
    WireError,
    batch_body,
    format_ts,
    now_ms,
    parse_batch,
    reading_text,
    sig_alg,
    sign_batch,
    signature,
    with_sig,
)

log = logging.getLogger(__name__)

Signer = Callable[[Batch], Batch]


class KeySigner:
    """A Signer that can also produce the published bytes while canonicalising the readings only once.

    ``sign_batch(b).to_bytes()`` renders every reading twice (to sign, then to publish); for a
    5000-reading backlog batch that was half the gateway's CPU. The bytes are the same: a test
    holds ``payload`` to ``sign_batch(...).to_bytes()``.
    """

    def __init__(self, key: Ed25519PrivateKey | bytes) -> None:
        self.key = key

    def __call__(self, batch: Batch) -> Batch:
        return sign_batch(batch, self.key)

    def event(self, event: Event) -> Event:
        return sign_event(event, self.key)

    def payload(self, batch: Batch) -> bytes:
        body = replace(batch, alg=sig_alg(self.key), sig="").signing_bytes()
        return with_sig(body, signature(body, self.key), batch.v)

    def payload_from(self, gateway: str, seq: int, created_ms: int, readings: list[str]) -> bytes:
        """The same bytes as ``payload`` from readings already in canonical text (``Reading.canonical``)."""
        body = batch_body(sig_alg(self.key).value, created_ms, gateway, readings, seq, WIRE_VERSION)
        return with_sig(body, signature(body, self.key), WIRE_VERSION)
Lane = Literal["live", "backlog", "any"]
# A signed batch's bytes besides its readings and gateway id: field names, created, seq (up to 16 digits) and
# an ed25519 signature (128 hex digits), with room to spare.
_BATCH_FRAME = 300

ROLLUP_SUFFIX = "@1m"
COUNT_SUFFIX = "@1m.n"
# Worst first: the aggregate carries the most severe flag found in its minute.
_SEVERITY = "DBFMCTSN"

# Each entry migrates PRAGMA user_version n → n+1; never edit one that has shipped.
_MIGRATIONS: list[str] = [
    """
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
    """,
    """
    CREATE INDEX IF NOT EXISTS pending_added ON pending(added_ms);
    ALTER TABLE batches ADD COLUMN lane TEXT NOT NULL DEFAULT 'live';
    CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,
                                       body TEXT NOT NULL);
    INSERT OR IGNORE INTO meta(k, v) VALUES ('rolled_up_raw', 0);
    INSERT OR IGNORE INTO meta(k, v) VALUES ('rolled_up_agg', 0);
    INSERT OR IGNORE INTO meta(k, v) VALUES ('quota_exceeded', 0);
    CREATE INDEX IF NOT EXISTS pending_ts ON pending(ts_ms);
    CREATE TABLE IF NOT EXISTS rollups (device TEXT NOT NULL, point TEXT NOT NULL, minute INTEGER NOT NULL,
                                        agg_id INTEGER NOT NULL, cnt_id INTEGER NOT NULL,
                                        PRIMARY KEY (device, point, minute)) WITHOUT ROWID;
    """,
    # Signed events (kernel/events.py) with their own id, and the quarantine of refused batches.
    """
    ALTER TABLE events ADD COLUMN eid TEXT;
    ALTER TABLE events ADD COLUMN kind TEXT;
    ALTER TABLE events ADD COLUMN severity TEXT NOT NULL DEFAULT 'warning';
    ALTER TABLE events ADD COLUMN device TEXT;
    ALTER TABLE events ADD COLUMN point TEXT;
    UPDATE events SET eid = lower(hex(randomblob(16))),
                      kind = 'gateway.' || coalesce(json_extract(body, '$.type'), 'notice') WHERE eid IS NULL;
    CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        seq INTEGER NOT NULL, n INTEGER NOT NULL, lane TEXT NOT NULL, payload BLOB NOT NULL,
        reason TEXT NOT NULL, quarantined_ms INTEGER NOT NULL
    );
    INSERT OR IGNORE INTO meta(k, v) VALUES ('quarantine_overflow', 0);
    """,
    # Each reading's canonical wire text (Reading.canonical), rendered once when it is stored, so cutting a
    # backlog batch is a join rather than a re-render of every row. A cache beside the columns, which stay
    # the reading's truth: keyed by pending.id (AUTOINCREMENT: never reused, so a text can only ever belong
    # to its own reading); a reading without one (older files, rollups, salvage, shed) is rendered from its
    # columns when cut. A table of its own so that over quota it can be dropped, oldest first, freeing whole
    # pages, before any raw reading is rolled up.
    """
    CREATE TABLE IF NOT EXISTS wire (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
    """,
    # The send loop polls the unacked batches' (seq, n, lane) on every turn. lane was added after payload, so
    # reading it walked each batch's whole payload (~500 KB of overflow pages for a 5000-reading batch; ~2.4 ms
    # a poll with 24 batches waiting): a covering index answers the poll without touching the rows.
    """
    CREATE INDEX IF NOT EXISTS batches_heads ON batches(seq, n, lane);
    """,
    # No per-reading index on pending: a drain deletes every row it cuts, and each index made that delete
    # write one more b-tree entry per reading (with both, the range delete cost ~3.5x a bare one). The live
    # lane is found through arrivals instead, one row per write that added readings: its first id and the
    # newest added_ms among them. Every pending row has an arrival at or below its id whose added_ms is at
    # least its own, so the live rows (added_ms >= a cutoff) all lie at or above the first id of the first
    # arrival at or after that cutoff. The quota's rollup walks raw backlog in id order (the order stored)
    # instead of by reading time, so it needs no time index either.
    """
    CREATE TABLE IF NOT EXISTS arrivals (first_id INTEGER PRIMARY KEY, added_ms INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS arrivals_added ON arrivals(added_ms);
    INSERT OR IGNORE INTO arrivals(first_id, added_ms) SELECT min(id), added_ms FROM pending GROUP BY added_ms;
    DROP INDEX IF EXISTS pending_added;
    DROP INDEX IF EXISTS pending_ts;
    """,
]


@dataclass(frozen=True)
class StoredBatch:
    seq: int
    n: int
    payload: bytes
    lane: str = "live"


@dataclass(frozen=True)
class QuarantinedBatch:
    """A batch the cloud refused, kept as it was sent, with the cloud's reason."""

    id: int
    seq: int
    n: int
    lane: str
    reason: str
    quarantined_ms: int
    payload: bytes

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "readings": self.n, "bytes": len(self.payload),
                "quarantined": format_ts(self.quarantined_ms), "reason": self.reason}


@dataclass(frozen=True)
class QuarantineResult:
    kept: bool  # False: the quarantine was full and the batch was dropped (loudly, by the caller)
    id: int | None
    seq: int
    n: int
    size: int  # batches in quarantine now
    overflow_total: int  # batches dropped because the quarantine was full, ever


@dataclass(frozen=True)
class RollupReport:
    raw: int  # raw readings replaced
    aggregates: int  # readings written in their place
    first_ts_ms: int
    last_ts_ms: int
    used_bytes: int
    quota_bytes: int
    still_over: bool

    @property
    def kind(self) -> str:
        return "outbox.quota_exceeded" if self.still_over and self.raw == 0 else "outbox.overflow"

    def event(self) -> dict[str, Any]:
        return {"policy": "oldest raw backlog rolled up to 1-minute means ({point}@1m, count {point}@1m.n)",
                **self.__dict__}


class _IntegrityFailed(sqlite3.DatabaseError):
    pass


def is_corruption(exc: BaseException) -> bool:
    """A damaged or foreign file, as opposed to a busy, locked, full or unwritable one."""
    if isinstance(exc, _IntegrityFailed):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.DatabaseError) and code is not None and \
        code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


class OutboxCorrupt(Exception):
    """The outbox file fails its integrity check (or is not a database at all)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"outbox {path} is corrupt: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class OutboxReset:
    """What happened when a corrupt outbox was set aside and a fresh one started."""

    path: Path
    moved_to: Path
    reason: str
    next_seq: int
    seq_source: str  # lease | old-file | clock
    salvaged_readings: int
    salvaged_quarantine: int
    salvaged_events: int
    unreadable_regions: int

    def event(self) -> dict[str, Any]:
        return {"file": str(self.path), "moved_to": str(self.moved_to), "reason": self.reason[:500],
                "next_seq": self.next_seq, "seq_source": self.seq_source,
                "salvaged_readings": self.salvaged_readings, "salvaged_quarantine": self.salvaged_quarantine,
                "salvaged_events": self.salvaged_events, "unreadable_regions": self.unreadable_regions}


class SeqLease:
    """The highest sequence number this gateway may have used, kept in a small file beside the outbox.

    The outbox reserves numbers in blocks and writes the block's end here (atomically, fsynced) before
    using any of them, so a fresh outbox that replaces a lost or corrupt one starts above every seq the
    cloud can hold: it never reuses one (the cloud would refuse it as a conflict). One write per block.
    """

    BLOCK = 1024
    _MAGIC = "carbonlink-seq-lease 1"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int | None:
        try:
            parts = self.path.read_text().split()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("sequence lease %s cannot be read (%s); ignoring it", self.path, exc)
            return None
        if len(parts) != 4 or " ".join(parts[:2]) != self._MAGIC or not parts[2].isdigit() \
                or parts[3] != _crc(parts[2]):
            log.warning("sequence lease %s is damaged; ignoring it", self.path)
            return None
        return int(parts[2])

    def write(self, ceiling: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{self._MAGIC} {ceiling} {_crc(str(ceiling))}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


def _tune(db: sqlite3.Connection, synchronous: str) -> None:
    """The settings of every connection to an outbox (they are per connection, not stored in the file).

    secure_delete=FAST: Debian's SQLite (and so a Raspberry Pi's) is built to zero every freed page by
    default, which made each ack write the acknowledged batch's whole payload (about 500 KB for a
    5000-reading batch) to the WAL again, as zeros, and then to the file at the next checkpoint. FAST still
    zeroes deleted rows inside the pages a change writes anyway, but does not write freed pages just to
    clear them: those hold readings the cloud already has and are reused by the next batches. Durability
    and crash recovery do not depend on it.
    """
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute("PRAGMA busy_timeout=5000")
    db.execute("PRAGMA secure_delete=FAST")


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Read:
    """The rows a cut read in its first phase: their id span and count, and how to sign them under a seq
    (returning the last id and the count actually taken, fewer if the signed bytes had to be trimmed)."""

    lo: int
    hi: int
    n: int
    sign: Callable[[int, int], tuple[int, int, bytes]]


@dataclass
class PreparedCut:
    """A cut between its two phases (``Outbox.prepare_cut``, ``Outbox.commit_cut``)."""

    lane: Lane
    where: str  # the lane's condition, which the commit checks the rows against again
    args: tuple[int, ...]
    read: _Read
    generation: int  # rollups so far: one since the read means the rows may have changed
    signed: tuple[int, int, tuple[int, int, bytes]] | None  # (seq guessed, created, (last id, n, payload))

    @property
    def hi(self) -> int:
        return self.read.hi

    @property
    def seq_guess(self) -> int | None:
        return self.signed[0] if self.signed is not None else None


# group_concat follows the rows' order in practice; SQLite 3.44+ can be told so (a batch's readings are a set to
# the cloud either way: the order only decides which bytes are signed).
_IN_ID_ORDER = " ORDER BY id" if sqlite3.sqlite_version_info >= (3, 44, 0) else ""


class Outbox:
    def __init__(self, path: Path, gateway_id: str, *, synchronous: str = "FULL", recover: bool = True,
                 clock: Callable[[], int] = now_ms) -> None:
        """Open (or create) the outbox, checking its integrity first.

        A corrupt file raises OutboxCorrupt when ``recover`` is False (tools that only look); the agent
        passes True: the file is moved aside (never deleted), what can still be read from it is
        salvaged, and a fresh outbox continues above the sequence lease (``self.reset`` says what was done).
        """
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # the gateway's data folder holds its key too
        if not path.exists():  # readings are the operator's data: owner only (SQLite gives -wal/-shm the same mode)
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.path = path
        self.gateway_id = gateway_id
        self.clock = clock
        self.synchronous = "FULL" if synchronous == "FULL" else "NORMAL"
        self.lease = SeqLease(path.with_name(path.name + ".seq"))
        self.reset: OutboxReset | None = None
        existed = path.exists() and path.stat().st_size > 0
        try:
            self.db = self._open()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise  # locked, full, no permission: not a reason to set the file aside
            if not recover:
                raise OutboxCorrupt(path, str(exc)) from None
            self.reset = self._set_aside(str(exc))
            return
        self._lease_ceiling = self._sync_lease(fresh=not existed)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            _tune(db, self.synchronous)
            problems = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                text = "; ".join(line for p in problems for line in p.splitlines() if not line.startswith("***"))
                raise _IntegrityFailed("integrity check failed: " + text[:300])
            self.db = db
            self._migrate()
        except BaseException:
            db.close()
            raise
        return db

    def _sync_lease(self, *, fresh: bool) -> int:
        """Make the lease cover next_seq; a new outbox beside an existing lease continues above it."""
        next_seq = self.next_seq()
        ceiling = self.lease.read()
        if fresh and ceiling is not None and ceiling >= next_seq:
            log.warning("no outbox was at %s but its sequence lease says seqs up to %d may have been used:"
                        " numbering continues at %d", self.path, ceiling, ceiling + 1)
            with self.db:
                self.db.execute("UPDATE meta SET v = ? WHERE k = 'next_seq'", (ceiling + 1,))
            next_seq = ceiling + 1
        if ceiling is None or ceiling < next_seq:
            ceiling = next_seq - 1 + SeqLease.BLOCK
            self.lease.write(ceiling)
        return ceiling

    def _take_seq(self) -> int:
        """The next seq, inside the caller's write transaction; extends the lease first when needed."""
        seq = int(self.db.execute("SELECT v FROM meta WHERE k='next_seq'").fetchone()[0])
        if seq > self._lease_ceiling:
            on_file = self.lease.read() or 0  # another process (the CLI) may have extended it
            self._lease_ceiling = max(on_file, seq - 1 + SeqLease.BLOCK)
            if self._lease_ceiling > on_file:
                self.lease.write(self._lease_ceiling)
        return seq

    def _set_aside(self, reason: str) -> OutboxReset:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self.clock() / 1000))
        aside = self.path.with_name(f"{self.path.stem}.corrupt-{stamp}{self.path.suffix}")
        n = 1
        while aside.exists():
            aside = self.path.with_name(f"{self.path.stem}.corrupt-{stamp}-{n}{self.path.suffix}")
            n += 1
        for tail in ("", "-wal", "-shm", "-journal"):  # the WAL may hold committed data: it goes along
            src = Path(str(self.path) + tail)
            if src.exists():
                os.replace(src, Path(str(aside) + tail))
        _fsync_dir(self.path.parent)
        old = _salvage(aside)
        lease = self.lease.read()
        candidates = {"lease": lease + 1 if lease is not None else 0,
                      "old-file": old.next_seq or 0}
        if lease is None:
            # No lease (an outbox from before leases, or one lost with it): the wall clock in ms is above
            # any seq a gateway can have used counting from 1 since 1970 at under one batch per ms.
            candidates["clock"] = self.clock()
        source, next_seq = max(candidates.items(), key=lambda kv: kv[1])
        next_seq = max(1, next_seq)
        self.db = self._open()
        with self.db:
            self.db.execute("UPDATE meta SET v = ? WHERE k = 'next_seq'", (next_seq,))
        self._lease_ceiling = next_seq - 1 + SeqLease.BLOCK
        self.lease.write(self._lease_ceiling)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._insert_pending(old.readings, [None] * len(old.readings))  # rendered when cut
            self.db.executemany("INSERT INTO quarantine(seq, n, lane, payload, reason, quarantined_ms)"
                                " VALUES (?,?,?,?,?,?)", old.quarantine)
            self.db.executemany("INSERT INTO events(ts_ms, body, eid, kind, severity, device, point)"
                                " VALUES (?,?,?,?,?,?,?)", old.events)
        reset = OutboxReset(self.path, aside, reason, next_seq, source, len(old.readings), len(old.quarantine),
                            len(old.events), old.unreadable)
        self.add_event("outbox.reset", severity="critical", body=reset.event())
        log.error("outbox %s is corrupt (%s). It was moved aside to %s (kept, never deleted) and a fresh outbox"
                  " started: %d readings, %d quarantined batches and %d events were salvaged from it and queued"
                  " again (the cloud stores each reading once; %d unreadable region(s) skipped); numbering"
                  " continues at seq %d (from the %s). Check the disk (SD card or filesystem errors in the"
                  " system log); keep the old file for inspection (`sqlite3 %s .recover`) or delete it when"
                  " done.", self.path, reason, aside, len(old.readings), len(old.quarantine), len(old.events),
                  old.unreadable, next_seq, {"lease": "sequence lease", "old-file": "old file",
                                             "clock": "clock, as no lease was found"}[source], aside)
        return reset

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        for n, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in (s for s in sql.split(";") if s.strip()):
                    self.db.execute(stmt)
                self.db.execute(f"PRAGMA user_version={n}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()

    # --- readings in ---------------------------------------------------------------------

    def append(self, readings: Iterable[Reading], *, added_ms: int | None = None) -> int:
        now = now_ms() if added_ms is None else added_ms
        rows = [(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, now) for r in readings]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._insert_pending(rows, [_wire(r) for r in readings])
        return len(rows)

    def _insert_pending(self, rows: list[tuple[Any, ...]], texts: list[str | None]) -> None:
        """Insert readings and their wire texts, inside the caller's write transaction."""
        if not rows:
            return
        # executemany gives no ids: under the write lock the rows' ids are consecutive from the first one's.
        first = int(self.db.execute("INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms)"
                                    " VALUES (?,?,?,?,?,?,?)", rows[0]).lastrowid or 0)
        self.db.executemany(
            "INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
            rows[1:])
        if self.db.execute("SELECT last_insert_rowid()").fetchone()[0] != first + len(rows) - 1:
            raise sqlite3.IntegrityError("outbox rows were not numbered consecutively")  # never seen; rolls back
        self.db.executemany("INSERT INTO wire(id, text) VALUES (?,?)",
                            [(first + i, t) for i, t in enumerate(texts) if t is not None])
        self._arrived(first, max(r[6] for r in rows))

    def _arrived(self, first_id: int, newest_added_ms: int) -> None:
        """Record a write that added pending rows from ``first_id`` on, the newest added_ms among them
        (inside the caller's write transaction): what lets the live lane be found without a per-row index."""
        self.db.execute("INSERT INTO arrivals(first_id, added_ms) VALUES (?,?) ON CONFLICT(first_id)"
                        " DO UPDATE SET added_ms = max(added_ms, excluded.added_ms)", (first_id, newest_added_ms))

    def append_spilled(self, rows: list[tuple[Reading, int]]) -> int:
        """Readings kept in the spill file, with the time each was first accepted, in one transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self._insert_pending([(r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, added)
                                  for r, added in rows], [_wire(r) for r, _ in rows])
        return len(rows)

    def pending_count(self, lane: Lane = "any", live_after_ms: int = 0) -> int:
        where, args = self._lane(lane, live_after_ms)
        return int(self.db.execute(f"SELECT count(*) FROM pending WHERE {where}", args).fetchone()[0])

    def pending_summary(self, lane: Lane = "any", live_after_ms: int = 0) -> tuple[int, int | None]:
        """How many readings of ``lane`` are pending and the oldest ``added_ms`` among them, in one query."""
        where, args = self._lane(lane, live_after_ms)
        n, oldest = self.db.execute(f"SELECT count(*), min(added_ms) FROM pending WHERE {where}", args).fetchone()
        return int(n), oldest

    def _lane(self, lane: Lane, live_after_ms: int) -> tuple[str, tuple[int, ...]]:
        """The SQL condition (and its arguments) for the pending rows of ``lane``.

        The live lane starts at the first id of the first arrival at or after the cutoff (see migration 6):
        a rowid range from there, so finding it never walks the backlog.
        """
        if lane == "live":
            start = self.db.execute("SELECT min(first_id) FROM arrivals INDEXED BY arrivals_added"
                                    " WHERE added_ms >= ?", (live_after_ms,)).fetchone()[0]
            if start is None:
                return "0", ()
            return "pending.id >= ? AND added_ms >= ?", (int(start), live_after_ms)
        if lane == "backlog":
            return "added_ms < ?", (live_after_ms,)
        return "1", ()

    def _prune_arrivals(self) -> None:
        """Forget arrivals no pending row needs (inside the caller's write transaction): all of them below the
        one that covers the oldest pending row, or all when nothing is pending."""
        oldest = self.db.execute("SELECT min(id) FROM pending").fetchone()[0]
        if oldest is None:
            self.db.execute("DELETE FROM arrivals")
        else:
            self.db.execute("DELETE FROM arrivals WHERE first_id < (SELECT max(first_id) FROM arrivals"
                            " WHERE first_id <= ?)", (oldest,))

    # --- batches -----------------------------------------------------------------------

    def cut_batch(self, max_readings: int, sign: Signer, *, lane: Lane = "any", live_after_ms: int = 0,
                  max_bytes: int = MAX_BATCH_BYTES) -> StoredBatch | None:
        """Move up to ``max_readings`` pending readings of ``lane`` into one signed batch, atomically.

        The rows taken are the first ``max_readings`` (by insertion order) matching the lane,
        shrunk if the signed message would exceed ``max_bytes``.

        Two phases, so the write lock is held only briefly (the agent's own writes wait for it):
        ``prepare_cut`` reads, joins and (with a KeySigner) signs the rows outside the lock; ``commit_cut``
        checks inside it that they are still exactly as read and commits. If they changed in between (rare:
        a rollup), it reads again.
        """
        for _ in range(5):
            cut = self.prepare_cut(max_readings, sign, lane=lane, live_after_ms=live_after_ms, max_bytes=max_bytes)
            if cut is None:
                return None
            self._between_phases()
            if (batch := self.commit_cut(cut, sign)) is not None:
                return batch
        raise sqlite3.OperationalError("the outbox kept changing under a batch cut; try again")

    def prepare_cut(self, max_readings: int, sign: Signer, *, lane: Lane = "any", live_after_ms: int = 0,
                    max_bytes: int = MAX_BATCH_BYTES, after_id: int = 0, seq_guess: int | None = None
                    ) -> PreparedCut | None:
        """Phase one of a cut, outside the write lock: the next rows of ``lane`` (above ``after_id``, when a
        cut of the rows before is still being committed), joined and, with a KeySigner, signed under the seq
        the cut will most likely take (``seq_guess``, else the next one). None when there are no such rows.
        """
        # The backlog is most of the table: walk it in rowid order and stop at the limit. The live lane is the
        # newest few rows: a rowid range from its first arrival (``_lane``), never a walk through the backlog.
        where, args = self._lane(lane, live_after_ms)
        generation = self._rollup_generation()
        read_where, read_args = (f"pending.id > ? AND ({where})", (after_id, *args)) if after_id else (where, args)
        read = self._read_rows(sign, read_where, read_args, max_readings, max_bytes)
        if read is None:
            return None
        signed: tuple[int, int, tuple[int, int, bytes]] | None = None
        if isinstance(sign, KeySigner):
            # A live cut on another connection may take the guessed seq first: then commit_cut signs again.
            guess, created = self.next_seq() if seq_guess is None else seq_guess, now_ms()
            signed = (guess, created, read.sign(guess, created))
        return PreparedCut(lane, where, args, read, generation, signed)

    def commit_cut(self, cut: PreparedCut, sign: Signer) -> StoredBatch | None:
        """Phase two, under the write lock: if the rows are still exactly as ``prepare_cut`` read them (no
        rollup since, the same count in their id range), take the seq (signing again if another cut took the
        expected one), store the batch and remove its rows, in one transaction. None if they changed."""
        read, where, args = cut.read, cut.where, cut.args
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            count = self.db.execute(f"SELECT count(*) FROM pending WHERE id BETWEEN ? AND ? AND {where}",
                                    (read.lo, read.hi, *args)).fetchone()[0]
            if count != read.n or self._rollup_generation() != cut.generation:
                return None  # leaves the with block: nothing written, the transaction ends
            seq = self._take_seq()
            if cut.signed is not None and cut.signed[0] == seq:
                _, created, (hi, n, payload) = cut.signed
            else:
                created = now_ms()
                hi, n, payload = read.sign(seq, created)
            self.db.execute("INSERT INTO batches(seq, created_ms, n, payload, lane) VALUES (?,?,?,?,?)",
                            (seq, created, n, payload, cut.lane))
            # The rows taken are exactly those matching the lane up to the last id taken.
            self.db.execute(f"DELETE FROM pending WHERE id BETWEEN ? AND ? AND {where}", (read.lo, hi, *args))
            # Their texts, as one range: a few other-lane rows in it lose theirs and are rendered when cut.
            self.db.execute("DELETE FROM wire WHERE id BETWEEN ? AND ?", (read.lo, hi))
            self._prune_arrivals()
            self.db.execute("UPDATE meta SET v = ? WHERE k='next_seq'", (seq + 1,))
        return StoredBatch(seq, n, payload, cut.lane)

    def _read_rows(self, sign: Signer, where: str, args: tuple[int, ...], limit: int, max_bytes: int
                   ) -> _Read | None:
        """Phase one of a cut: the next ``limit`` rows of a lane (None if there are none), fitted to the byte limit.

        With a KeySigner and every row's text stored (the usual case), SQLite joins the texts itself, in one
        statement: no Python object per reading. Otherwise the rows come one by one (texts rendered where
        missing, or the readings themselves for another signer) and are trimmed to fit.
        """
        budget = max_bytes - _BATCH_FRAME - len(self.gateway_id)
        if isinstance(sign, KeySigner):
            n, with_text, lo, hi, chars, joined = self.db.execute(
                "SELECT count(*), count(text), min(id), max(id), sum(length(text)),"
                f" group_concat(text, ','{_IN_ID_ORDER}) FROM (SELECT pending.id AS id, wire.text AS text"
                f" FROM pending LEFT JOIN wire ON wire.id = pending.id WHERE {where} ORDER BY pending.id LIMIT ?)",
                (*args, limit)).fetchone()
            if n == 0:
                return None
            # ASCII (the usual case): characters are bytes, so within the budget it fits. Else row by row.
            if with_text == n and joined.isascii() and chars + n - 1 <= budget:
                def joined_payload(seq: int, created: int) -> tuple[int, int, bytes]:
                    return hi, n, sign.payload_from(self.gateway_id, seq, created, [joined])
                return _Read(lo, hi, n, joined_payload)
        texts: list[str] = []
        full: dict[int, Reading] = {}
        if isinstance(sign, KeySigner):
            rows, texts = self._wire_texts(where, args, limit)
        else:
            rows = self.db.execute(f"SELECT id, device, point, ts_ms, value, unit, quality FROM pending"
                                   f" WHERE {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall()
            full = {r[0]: Reading(r[1], r[2], r[3], r[4], r[5], Quality(r[6])) for r in rows}
        if not rows:
            return None
        if texts and sum(map(len, texts)) + len(texts) > budget:
            # Fit the batch to the byte limit before it is signed rather than after (texts are counted in
            # characters: a non-ASCII unit can still overshoot, and _signed trims the rest).
            used, keep = 0, 0
            for t in texts:
                used += len(t) + 1
                if used > budget:
                    break
                keep += 1
            rows, texts = rows[: max(1, keep)], texts[: max(1, keep)]

        def row_payload(seq: int, created: int) -> tuple[int, int, bytes]:
            taken, payload = self._signed(sign, seq, created, rows, texts, full, max_bytes)
            return int(taken[-1][0]), len(taken), payload
        return _Read(int(rows[0][0]), int(rows[-1][0]), len(rows), row_payload)

    def _signed(self, sign: Signer, seq: int, created: int, rows: list[Any], texts: list[str],
                full: dict[int, Reading], max_bytes: int) -> tuple[list[Any], bytes]:
        """The batch of ``rows`` signed under ``seq`` (from their ``texts`` with a KeySigner, else their
        ``full`` readings), rows dropped from its end until it fits ``max_bytes``: rare (long names, non-ASCII
        units), it keeps the share of rows that fits, with a margin."""
        while True:
            if isinstance(sign, KeySigner):
                payload = sign.payload_from(self.gateway_id, seq, created, texts[: len(rows)])
            else:
                payload = sign(Batch(gateway=self.gateway_id, seq=seq, created_ms=created,
                                     readings=tuple(full[r[0]] for r in rows))).to_bytes()
            if len(payload) <= max_bytes or len(rows) == 1:
                return rows, payload
            rows = rows[: max(1, int(len(rows) * max_bytes / len(payload) * 0.95))]

    def _wire_texts(self, where: str, args: tuple[int, ...], limit: int
                    ) -> tuple[list[tuple[Any, ...]], list[str]]:
        """The next ``limit`` rows of a lane as (id, …) rows and their canonical texts, in one read snapshot.

        The texts stored with the readings are joined as they are; rows without one (older files, rollups,
        salvage) are rendered from their columns, with one more query over the same id range.
        """
        self.db.execute("BEGIN")  # both reads see the same snapshot (another connection may cut or roll up)
        try:
            rows = self.db.execute(f"SELECT pending.id, wire.text FROM pending LEFT JOIN wire ON wire.id = pending.id"
                                   f" WHERE {where} ORDER BY pending.id LIMIT ?", (*args, limit)).fetchall()
            texts: list[str] = [r[1] for r in rows]
            if rows and None in texts:
                missing = [(r[0],) for r in rows if r[1] is None]
                rendered = {r[0]: reading_text(*r[1:]) for r in self.db.execute(
                    f"SELECT id, device, point, ts_ms, value, unit, quality FROM pending"
                    f" WHERE id BETWEEN ? AND ? AND {where}"
                    " AND NOT EXISTS (SELECT 1 FROM wire WHERE wire.id = pending.id)",
                    (missing[0][0], missing[-1][0], *args))}
                texts = [t if t is not None else rendered[r[0]] for t, r in zip(texts, rows, strict=True)]
        finally:
            self.db.execute("COMMIT")
        return rows, texts

    def _between_phases(self) -> None:
        """A seam for tests: another writer acts between reading the rows and cutting them."""

    def _rollup_generation(self) -> int:
        row = self.db.execute("SELECT v FROM meta WHERE k = 'rolled_up_raw'").fetchone()
        return int(row[0]) if row else 0

    def second_connection(self) -> Outbox:
        """Another connection to this outbox, for cutting in a worker thread (SQLite locks between them).

        No integrity check and no migration: this object is already open and checked.
        """
        other = object.__new__(Outbox)
        other.path, other.gateway_id, other.clock = self.path, self.gateway_id, self.clock
        other.synchronous, other.lease, other.reset = self.synchronous, self.lease, None
        other.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        _tune(other.db, self.synchronous)
        other._lease_ceiling = self.lease.read() or 0
        return other

    def unacked(self, limit: int = 100, after_seq: int = 0) -> list[StoredBatch]:
        rows = self.db.execute(
            "SELECT seq, n, payload, lane FROM batches WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [StoredBatch(r[0], r[1], bytes(r[2]), r[3]) for r in rows]

    def unacked_heads(self, limit: int = 100) -> list[tuple[int, int, str]]:
        """(seq, readings, lane) of the oldest unacked batches, without their payloads (the send loop's poll)."""
        return [(r[0], r[1], r[2]) for r in self.db.execute(
            "SELECT seq, n, lane FROM batches INDEXED BY batches_heads ORDER BY seq LIMIT ?", (limit,))]

    def payload(self, seq: int) -> bytes | None:
        row = self.db.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def unacked_count(self) -> tuple[int, int]:
        row = self.db.execute("SELECT count(*), coalesce(sum(n), 0) FROM batches").fetchone()
        return int(row[0]), int(row[1])

    def ack(self, seq: int) -> int:
        """Forget a batch the cloud has committed; returns its reading count (0 if unknown)."""
        return self.ack_many([seq]).get(seq, 0)

    def ack_many(self, seqs: Iterable[int]) -> dict[int, int]:
        """Forget the batches the cloud has committed, in one transaction; ``{seq: readings}`` of those here.

        Acks come in bursts during a drain: one commit (and one fsync) for the burst instead of one per batch.
        All or nothing: a crash before the commit forgets none of them, so they are only sent again (the cloud
        acks a batch it already holds as a duplicate). Seqs never issued (or outside SQLite's integers) are
        simply not found.
        """
        wanted = [s for s in dict.fromkeys(seqs) if 0 < s < 2**63]
        found: dict[int, int] = {}
        if not wanted:
            return found
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                found.update((int(s), int(n)) for s, n in self.db.execute(
                    f"DELETE FROM batches WHERE seq IN ({','.join('?' * len(chunk))}) RETURNING seq, n",
                    chunk).fetchall())
        return found

    def next_seq(self) -> int:
        return int(self.db.execute("SELECT v FROM meta WHERE k='next_seq'").fetchone()[0])

    # --- events (alerts that must reach the cloud even after an outage) -------------------

    def add_event(self, kind: str, *, severity: str = "info", body: dict[str, Any] | None = None,
                  device: str | None = None, point: str | None = None, ts_ms: int | None = None) -> str:
        """Keep an event until the cloud acks it; returns its id. Validated now, signed when sent."""
        event = Event.make(self.gateway_id, kind, now_ms() if ts_ms is None else ts_ms, severity=severity,
                           device=device, point=point, body=body)
        with self.db:
            self.db.execute("INSERT INTO events(ts_ms, body, eid, kind, severity, device, point)"
                            " VALUES (?,?,?,?,?,?,?)",
                            (event.ts_ms, json.dumps(event.body, separators=(",", ":"), sort_keys=True),
                             event.id, event.kind, event.severity.value, event.device, event.point))
        return event.id

    def events(self, limit: int = 50) -> list[Event]:
        """The oldest events not yet acknowledged by the cloud, unsigned."""
        out = []
        for ts, body, eid, kind, severity, device, point in self.db.execute(
                "SELECT ts_ms, body, eid, kind, severity, device, point FROM events ORDER BY id LIMIT ?",
                (limit,)):
            out.append(Event(self.gateway_id, eid or new_event_id(), kind, ts, Severity(severity), device, point,
                             json.loads(body)))
        return out

    def event_done(self, event_id: str) -> bool:
        """The cloud stored (or refused) the event: forget it. False if it was not here."""
        with self.db:
            return self.db.execute("DELETE FROM events WHERE eid = ?", (event_id,)).rowcount > 0

    # --- quarantine (batches the cloud refused: kept for an operator, never deleted silently) ---

    def quarantine(self, seq: int, reason: str, *, max_entries: int, now: int | None = None
                   ) -> QuarantineResult | None:
        """Move a refused batch into the quarantine, atomically. None if no such batch is waiting.

        The quarantine keeps its oldest entries: when it holds ``max_entries`` batches, a newly
        refused one cannot be kept and is dropped; the result says so and the caller raises it loudly.
        """
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT n, payload, lane FROM batches WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                return None
            size = int(self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0])
            qid: int | None = None
            if size < max_entries:
                qid = self.db.execute(
                    "INSERT INTO quarantine(seq, n, lane, payload, reason, quarantined_ms) VALUES (?,?,?,?,?,?)",
                    (seq, row[0], row[2], row[1], reason[:2000], now_ms() if now is None else now)).lastrowid
                size += 1
            else:
                self.db.execute("UPDATE meta SET v = v + 1 WHERE k = 'quarantine_overflow'")
            self.db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            overflow = int(self.db.execute("SELECT v FROM meta WHERE k = 'quarantine_overflow'").fetchone()[0])
        return QuarantineResult(qid is not None, qid, seq, int(row[0]), size, overflow)

    def quarantined(self, qid: int | None = None) -> list[QuarantinedBatch]:
        where, args = ("WHERE id = ?", (qid,)) if qid is not None else ("", ())
        return [QuarantinedBatch(r[0], r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in self.db.execute(
            f"SELECT id, seq, n, lane, reason, quarantined_ms, payload FROM quarantine {where} ORDER BY id", args)]

    def resend_quarantined(self, qid: int, sign: Signer) -> StoredBatch:
        """Put a quarantined batch's readings back on the way, re-signed under a new sequence number.

        Raises KeyError if there is no such entry, ValueError if its readings cannot be read back.
        """
        found = self.quarantined(qid)
        if not found:
            raise KeyError(qid)
        try:
            readings = parse_batch(found[0].payload).readings
        except (WireError, ValueError) as exc:
            raise ValueError(f"quarantined batch {qid} (seq {found[0].seq}) cannot be read back: {exc}") from None
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("DELETE FROM quarantine WHERE id = ?", (qid,)).rowcount == 0:
                raise KeyError(qid)  # another process took it meanwhile
            seq = self._take_seq()
            created = now_ms()
            unsigned = Batch(gateway=self.gateway_id, seq=seq, created_ms=created, readings=readings)
            payload = sign.payload(unsigned) if isinstance(sign, KeySigner) else sign(unsigned).to_bytes()
            self.db.execute("INSERT INTO batches(seq, created_ms, n, payload, lane) VALUES (?,?,?,?,?)",
                            (seq, created, len(readings), payload, "backlog"))
            self.db.execute("UPDATE meta SET v = ? WHERE k='next_seq'", (seq + 1,))
        return StoredBatch(seq, len(readings), payload, "backlog")

    def drop_quarantined(self, qid: int) -> QuarantinedBatch | None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            found = self.quarantined(qid)
            if found:
                self.db.execute("DELETE FROM quarantine WHERE id = ?", (qid,))
        return found[0] if found else None

    # --- quota and overflow --------------------------------------------------------------

    def used_bytes(self) -> int:
        page = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page

    def metrics(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.db.execute(
            "SELECT k, v FROM meta WHERE k IN ('rolled_up_raw', 'rolled_up_agg', 'quota_exceeded',"
            " 'quarantine_overflow')")} | {
            "quarantined": int(self.db.execute("SELECT count(*) FROM quarantine").fetchone()[0])}

    def enforce_quota(self, quota_bytes: int, keep_after_ms: int, chunk: int = 20_000) -> RollupReport | None:
        """Roll the oldest raw backlog (added before ``keep_after_ms``) up until under quota.

        Returns what was done (None when already under quota). The caller alerts on it.
        """
        used = self.used_bytes()
        if used <= quota_bytes:
            return None
        shed = 0
        while used > quota_bytes:  # the wire texts first: a cache, rebuilt from the columns when cut
            with self.db:
                n = self.db.execute("DELETE FROM wire WHERE id IN (SELECT id FROM wire ORDER BY id LIMIT ?)",
                                    (chunk,)).rowcount
            if n == 0:
                break
            shed += n
            used = self.used_bytes()
        if shed:
            log.info("outbox over its %d-byte quota: dropped the stored wire texts of %d readings (they are"
                     " rendered again when sent)", quota_bytes, shed)
        if used <= quota_bytes:
            return None
        raw = agg = 0
        first = last = None
        after_id = 0
        while used > quota_bytes:
            r, a, lo, hi, last_id = self._rollup_chunk(keep_after_ms, chunk, after_id)
            if last_id == after_id:
                break  # no raw backlog left
            after_id = last_id
            if r == 0:
                continue  # only late readings whose aggregates already left: they stay raw
            raw, agg = raw + r, agg + a
            first = lo if first is None else min(first, lo)
            last = hi if last is None else max(last, hi)
            used = self.used_bytes()
        still_over = used > quota_bytes
        with self.db:
            if still_over:
                self.db.execute("UPDATE meta SET v = v + 1 WHERE k = 'quota_exceeded'")
        report = RollupReport(raw, agg, first or 0, last or 0, used, quota_bytes, still_over)
        if raw:
            log.warning("outbox over its %d-byte quota: rolled %d raw readings up to %d 1-minute aggregates",
                        quota_bytes, raw, agg)
        if still_over:
            log.error("outbox still over quota (%d bytes) with no raw backlog left to roll up; keeping all data",
                      used)
        self.add_event(report.kind, severity="critical" if still_over else "warning", body=report.event())
        return report

    def _rollup_chunk(self, keep_after_ms: int, chunk: int, after_id: int) -> tuple[int, int, int, int, int]:
        """Roll up the next ``chunk`` raw backlog readings stored after id ``after_id``, oldest stored first.

        Per device, point, unit and minute one aggregate. A minute split between two chunks (or a late raw
        reading for a minute already rolled up) is merged into the aggregate while that is still here, and
        otherwise left raw (its identity differs from the aggregate's, so it is neither lost nor counted
        twice). Walks pending in id order (no per-reading time index: see migration 6); returns (raw rolled
        up, aggregates written, first and last reading time, the last id looked at).
        """
        raw_backlog = "added_ms < ? AND point NOT LIKE '%@1m' AND point NOT LIKE '%@1m.n'"
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            rows = self.db.execute(
                "SELECT id, device, point, ts_ms, value, unit, quality, added_ms FROM pending"
                f" WHERE id > ? AND {raw_backlog} ORDER BY id LIMIT ?", (after_id, keep_after_ms, chunk)).fetchall()
            if not rows:
                return 0, 0, 0, 0, after_id
            groups: dict[tuple[str, str, str, int], list[tuple[Any, ...]]] = defaultdict(list)
            for r in rows:
                groups[(r[1], r[2], r[5], r[3] // 60_000 * 60_000)].append(r)
            taken: list[tuple[Any, ...]] = []
            written = 0
            first_agg: int | None = None
            newest_added = 0
            for (device, point, unit, minute), members in groups.items():
                done = self.db.execute("SELECT agg_id, cnt_id FROM rollups WHERE device=? AND point=? AND minute=?",
                                       (device, point, minute)).fetchone()
                if done is not None and not self._merge(done[0], done[1], members):
                    continue  # its aggregate already left: the late raw readings go as they are
                taken.extend(members)
                if done is not None:
                    continue
                quality = min((m[6] for m in members), key=_SEVERITY.index)
                added = min(m[7] for m in members)
                mean = sum(m[4] for m in members) / len(members)
                agg = self.db.execute(
                    "INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
                    (device, _suffixed(point, ROLLUP_SUFFIX), minute, mean, unit, quality, added)).lastrowid
                cnt = self.db.execute(
                    "INSERT INTO pending(device, point, ts_ms, value, unit, quality, added_ms) VALUES (?,?,?,?,?,?,?)",
                    (device, _suffixed(point, COUNT_SUFFIX), minute, float(len(members)), "", "N", added)).lastrowid
                self.db.execute("INSERT INTO rollups(device, point, minute, agg_id, cnt_id) VALUES (?,?,?,?,?)",
                                (device, point, minute, agg, cnt))
                first_agg = agg if first_agg is None else first_agg
                newest_added = max(newest_added, added)
                written += 2
            if first_agg is not None:
                self._arrived(int(first_agg), newest_added)
            self.db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in taken])
            self.db.executemany("DELETE FROM wire WHERE id = ?", [(r[0],) for r in taken])
            self.db.execute("UPDATE meta SET v = v + ? WHERE k = 'rolled_up_raw'", (len(taken),))
            self.db.execute("UPDATE meta SET v = v + ? WHERE k = 'rolled_up_agg'", (written,))
        last_id = int(rows[-1][0])
        if not taken:
            return 0, 0, 0, 0, last_id
        return len(taken), written, min(r[3] for r in taken), max(r[3] for r in taken), last_id

    def _merge(self, agg_id: int, cnt_id: int, members: list[tuple[Any, ...]]) -> bool:
        agg = self.db.execute("SELECT value, quality FROM pending WHERE id = ?", (agg_id,)).fetchone()
        cnt = self.db.execute("SELECT value FROM pending WHERE id = ?", (cnt_id,)).fetchone()
        if agg is None or cnt is None:
            return False
        n = cnt[0] + len(members)
        mean = (agg[0] * cnt[0] + sum(m[4] for m in members)) / n
        quality = min([agg[1], *(m[6] for m in members)], key=_SEVERITY.index)
        self.db.execute("UPDATE pending SET value = ?, quality = ? WHERE id = ?", (mean, quality, agg_id))
        self.db.execute("UPDATE pending SET value = ? WHERE id = ?", (n, cnt_id))
        self.db.executemany("DELETE FROM wire WHERE id = ?", [(agg_id,), (cnt_id,)])
        return True

    def checkpoint(self) -> None:
        """Fold the WAL back so the file size reflects what is stored (called after big drains)."""
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@dataclass
class _Salvage:
    readings: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    next_seq: int | None = None
    unreadable: int = 0


def _salvage(path: Path) -> _Salvage:
    """Read what can still be read from a corrupt outbox (opened read-only, left as it is).

    Pending readings and the readings of unacknowledged batches go back as pending readings: some of
    them may already be in the cloud (sent, ack lost), which stores each reading identity once.
    """
    out = _Salvage()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        out.unreadable += 1
        return out
    try:
        try:
            v = db.execute("SELECT v FROM meta WHERE k = 'next_seq'").fetchone()
            if v is not None and isinstance(v[0], int) and 1 <= v[0] < 2**52:
                out.next_seq = v[0]
        except sqlite3.Error:
            out.unreadable += 1
        for row in _rows(db, "pending", "device, point, ts_ms, value, unit, quality, added_ms", out):
            try:
                r = Reading.make(*row[:6])
            except (WireError, TypeError, ValueError):
                out.unreadable += 1
                continue
            out.readings.append((r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, int(row[6])))
        for created, payload in _rows(db, "batches", "created_ms, payload", out):
            try:
                batch = parse_batch(bytes(payload))
            except (WireError, ValueError, TypeError):
                out.unreadable += 1
                continue
            out.readings.extend((r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, int(created))
                                for r in batch.readings)
        # A damaged b-tree can hand a row out twice (rowids out of order), and a reading can be both pending
        # and in a batch cut just before the damage: queue each reading identity once.
        seen: set[tuple[str, str, int]] = set()
        unique = []
        for item in out.readings:
            key = (item[0], item[1], item[2])
            if key not in seen:
                seen.add(key)
                unique.append(item)
        out.readings = unique
        out.quarantine = _rows(db, "quarantine", "seq, n, lane, payload, reason, quarantined_ms", out)
        out.events = [e for e in _rows(db, "events", "ts_ms, body, eid, kind, severity, device, point", out)
                      if e[2] is not None]
    finally:
        db.close()
    return out


def _rows(db: sqlite3.Connection, table: str, cols: str, out: _Salvage) -> list[tuple[Any, ...]]:
    """Every row of ``table`` that can be read, in rowid order, stepping over unreadable regions."""
    rows: list[tuple[Any, ...]] = []
    after, failures = -1, 0
    while failures < 400:
        try:
            cur = db.execute(f"SELECT rowid, {cols} FROM {table} NOT INDEXED WHERE rowid > ? ORDER BY rowid",
                             (after,))
            while chunk := cur.fetchmany(1000):
                rows.extend(r[1:] for r in chunk)
                after = max(after, chunk[-1][0])
            return rows
        except sqlite3.Error:
            # A damaged page: its rows are gone; probe past it in small steps, then faster.
            out.unreadable += 1
            failures += 1
            after += 16 if failures < 200 else 16 << min(failures - 200, 40)
    return rows


class Spill:
    """Readings the outbox could not take (disk full, I/O errors, a corrupt file), kept in a second file.

    One JSON array per line, fsynced; imported back into the outbox as soon as it works again. A torn
    last line (a crash while writing) is skipped and counted.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, readings: Iterable[Reading], added_ms: int) -> int:
        lines = [json.dumps([r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, added_ms],
                            separators=(",", ":")) for r in readings]
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return len(lines)

    def load(self) -> tuple[list[tuple[Reading, int]], int]:
        """(readings with their added time, unreadable lines)."""
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return [], 0
        out, bad = [], 0
        for line in text.splitlines():
            try:
                d, p, ts, v, u, q, added = json.loads(line)
                out.append((Reading.make(d, p, ts, v, u, q), int(added)))
            except (ValueError, TypeError, WireError):
                bad += 1
        return out, bad

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _wire(r: Reading) -> str | None:
    """The reading's canonical text as stored beside its columns; None (rendered when cut) if it has none."""
    try:
        return r.canonical()
    except WireError:  # a value out of range: cutting it fails as it always did, not storing it
        return None


def _suffixed(point: str, suffix: str) -> str:
    return point[: 128 - len(suffix)] + suffix


