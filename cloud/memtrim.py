"""Give the heap a burst left behind back to the system, once the burst is over.

A worker that took a full-speed burst of large batches kept its high-water mark after it: the batches
and their rows were freed, but glibc's allocator kept the freed pages (209 MB resident after the burst,
63 MB in steady state, bench/ingest.py). ``malloc_trim(0)`` returns free pages from anywhere in the heap,
not only its top. It costs a walk of the heap and a system call per free run (a few ms, up to ~0.2 s
after a large burst on a loaded machine), so the ingest calls it only when it is idle (nothing queued)
and only after ``every_bytes`` of payload went through since the last trim. Elsewhere than glibc it is
a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_TRIM = _malloc_trim()


def trim() -> bool:
    """Return free heap pages to the system now; False where the C library has no malloc_trim."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


class Trimmer:
    """Counts the bytes a worker handled; trims when it is idle after at least ``every_bytes`` of them."""

    def __init__(self, every_bytes: int = 16 << 20) -> None:
        if every_bytes <= 0:
            raise ValueError("every_bytes must be > 0")
        self.every_bytes = every_bytes
        self.pending = 0
        self.trims = 0

    def handled(self, n: int) -> None:
        self.pending += n

    def idle(self) -> bool:
        """Called when nothing is queued: trims if enough went through since the last time."""
        if self.pending < self.every_bytes:
            return False
        self.pending = 0
        self.trims += 1
        return trim()
