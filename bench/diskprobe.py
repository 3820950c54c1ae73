"""The disk's own flush latency while a bench runs: what an ack after commit waits for at the tail.

A thread writes 8 KB to a file and fsyncs it every 10 ms, in the folder given (the database's disk, when it
is this machine's), and keeps each fsync's duration. Commits that wait for the write-ahead log to reach the
disk (PostgreSQL's ``synchronous_commit``, SQLite's ``synchronous=FULL``) cannot be faster than this at the
same moment: a latency tail that matches these figures is the disk's, not the code's.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from bench.stats import percentiles


class FsyncProbe:
    """``with FsyncProbe() as probe: …`` then ``probe.summary()``: fsync p50/p99/max in ms and stalls ≥ 100 ms."""

    def __init__(self, folder: Path | None = None, every_s: float = 0.01) -> None:
        self.folder = Path(folder or tempfile.gettempdir())
        self.every_s = every_s
        self.samples_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)

    def _run(self) -> None:
        fd, name = tempfile.mkstemp(prefix="fsync-probe-", dir=self.folder)
        try:
            block = b"\0" * 8192
            while not self._stop.wait(self.every_s):
                os.pwrite(fd, block, 0)
                t = time.perf_counter()
                os.fsync(fd)
                self.samples_ms.append((time.perf_counter() - t) * 1000)
        finally:
            os.close(fd)
            os.unlink(name)

    def start(self) -> FsyncProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> FsyncProbe:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def summary(self) -> dict[str, float]:
        p = percentiles(self.samples_ms)
        return {"n": p["n"], "p50_ms": round(p["p50_ms"], 2), "p99_ms": round(p["p99_ms"], 1),
                "max_ms": round(p["max_ms"], 1), "stalls_100ms": sum(1 for x in self.samples_ms if x >= 100)}
