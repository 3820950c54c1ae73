"""Windows and aggregates, driven by event time only.

A window's result depends only on the readings inside it, never on when they arrived or when the
host looked: time windows close when the partition's watermark passes their end (``close_until``),
sliding and count windows emit per reading. Readings reach a window in event-time order (the engine
sorts them), so incremental sums are computed in the same order at the edge and in the cloud.

Aggregates ignore NULL arguments (as SQL does); count(*) counts readings. stddev is the sample
standard deviation (n - 1); percentile interpolates linearly between closest ranks; rate is the
change between the first and last value per second of event time.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from carbonlink.kernel.wire import Reading

from .exprs import AggSpec

Key = tuple[str, ...]


class BudgetExceeded(Exception):
    pass


class Acc:
    """One aggregate's running state."""

    __slots__ = ("f", "ft", "kind", "l", "lt", "m2", "mean", "n", "param", "s", "vals", "x")

    def __init__(self, kind: str, param: float) -> None:
        self.kind = kind
        self.param = param
        self.n = 0
        self.s = 0.0
        self.x: float | None = None  # min or max
        self.f: float | None = None
        self.ft = 0
        self.l: float | None = None
        self.lt = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.vals: list[float] | None = [] if kind == "percentile" else None

    def add(self, ts: int, v: Any) -> None:
        k = self.kind
        if k == "count":
            self.n += 1
            return
        if v is None:
            return
        self.n += 1
        if k in ("sum", "avg"):
            self.s += v
        elif k == "min":
            if self.x is None or v < self.x:
                self.x = v
        elif k == "max":
            if self.x is None or v > self.x:
                self.x = v
        elif k == "stddev":
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)
        elif k == "percentile":
            self.vals.append(v)  # type: ignore[union-attr]
        else:  # first, last, delta, rate
            if self.f is None:
                self.f, self.ft = v, ts
            self.l, self.lt = v, ts

    def result(self) -> float | None:
        k, n = self.kind, self.n
        if k == "count":
            return float(n)
        if n == 0:
            return None
        if k == "sum":
            return self.s
        if k == "avg":
            return self.s / n
        if k in ("min", "max"):
            return self.x
        if k == "first":
            return self.f
        if k == "last":
            return self.l
        if k == "delta":
            return self.l - self.f  # type: ignore[operator]
        if k == "rate":
            dt = (self.lt - self.ft) / 1000
            return (self.l - self.f) / dt if dt > 0 else None  # type: ignore[operator]
        if k == "stddev":
            return math.sqrt(self.m2 / (n - 1)) if n > 1 else None
        vals = sorted(self.vals or ())
        pos = (len(vals) - 1) * self.param / 100
        lo = math.floor(pos)
        hi = min(lo + 1, len(vals) - 1)
        return vals[lo] + (vals[hi] - vals[lo]) * (pos - lo)


Entry = tuple[int, tuple[Any, ...], str]  # event time, aggregate arguments, quality flag


def results(aggs: list[AggSpec], entries: Iterator[Entry]) -> list[float | None]:
    accs = [Acc(a.kind, a.param) for a in aggs]
    for ts, vals, _q in entries:
        for acc, v in zip(accs, vals, strict=True):
            acc.add(ts, v)
    return [a.result() for a in accs]


def _finite(vals: list[float | None]) -> list[float | None]:
    return [v if v is None or math.isfinite(v) else None for v in vals]


@dataclass(slots=True)
class Emit:
    """A window's result for one group: the row's time, the window bounds, aggregate values."""

    key: Key
    ts: int
    start: int
    end: int
    values: list[float | None]
    last: Reading
    flag: str


def _worst(entries: Iterator[Entry] | deque[Entry] | list[Entry]) -> str:
    """The first quality flag that is not N among a window's readings, else N."""
    for _ts, _v, q in entries:
        if q != "N":
            return q
    return "N"


class _Group:
    __slots__ = ("accs", "end", "entries", "first_ts", "flag", "last", "last_ts", "since", "start")

    def __init__(self) -> None:
        self.accs: list[Acc] = []
        self.entries: deque[Entry] = deque()
        self.start = 0
        self.end = 0
        self.first_ts = 0
        self.last_ts = 0
        self.since = 0  # count windows: readings since the last emission
        self.last: Reading | None = None
        self.flag = "N"


class WindowState:
    """All groups of one windowed rule within one partition (one device of one source)."""

    __slots__ = ("aggs", "groups", "heap", "kind", "max_entries", "max_groups", "size", "step")

    def __init__(self, kind: str, size: int, step: int | None, aggs: list[AggSpec], max_entries: int,
                 max_groups: int) -> None:
        self.kind = kind
        self.size = size
        self.step = step
        self.aggs = aggs
        self.max_entries = max_entries
        self.max_groups = max_groups
        self.groups: dict[Key, _Group] = {}
        self.heap: list[tuple[int, Key]] = []  # (end, key); stale entries are skipped when popped

    def entries(self) -> int:
        return sum(len(g.entries) for g in self.groups.values())

    def _group(self, key: Key) -> _Group:
        g = self.groups.get(key)
        if g is None:
            if len(self.groups) >= self.max_groups:
                raise BudgetExceeded(f"more than {self.max_groups:,} groups in one window (rules.budget.max_groups)")
            g = self.groups[key] = _Group()
        return g

    def _keep(self, g: _Group, ts: int, vals: tuple[Any, ...], q: str) -> None:
        g.entries.append((ts, vals, q))
        if len(g.entries) > self.max_entries:
            raise BudgetExceeded(f"a window group holds more than {self.max_entries:,} readings: they arrive faster"
                                 " than the budget assumed (rules.budget.assumed_rate_hz)")

    def add(self, key: Key, r: Reading, vals: tuple[Any, ...]) -> Emit | None:
        """Add one reading; sliding and count windows answer at once, time windows when they close."""
        ts = r.ts_ms
        kind = self.kind
        g = self._group(key)
        new = g.last is None
        g.last = r
        q = r.quality.value
        if kind == "tumbling":
            if new:
                g.start = ts - ts % self.size
                g.end = g.start + self.size
                g.accs = [Acc(a.kind, a.param) for a in self.aggs]
                heapq.heappush(self.heap, (g.end, key))
            self._flag(g, q)
            for acc, v in zip(g.accs, vals, strict=True):
                acc.add(ts, v)
            if g.accs and g.accs[0].vals is not None and len(g.accs[0].vals) > self.max_entries:
                raise BudgetExceeded(f"a window group holds more than {self.max_entries:,} readings")
            return None
        if kind == "session":
            if new:
                g.start = g.first_ts = ts
                g.accs = [Acc(a.kind, a.param) for a in self.aggs]
            self._flag(g, q)
            g.last_ts = ts
            g.end = ts + self.size + 1
            if self.step is not None:
                g.end = min(g.end, g.first_ts + self.step)
            heapq.heappush(self.heap, (g.end, key))
            for acc, v in zip(g.accs, vals, strict=True):
                acc.add(ts, v)
            return None
        if kind == "hopping":
            hop = self.step or self.size
            if new or not g.entries:
                g.start = ((ts - self.size) // hop + 1) * hop  # the first window [start, start+size) holding ts
                g.end = g.start + self.size
                heapq.heappush(self.heap, (g.end, key))
            self._keep(g, ts, vals, q)
            return None
        if kind == "sliding":
            self._keep(g, ts, vals, q)
            while g.entries and g.entries[0][0] <= ts - self.size:
                g.entries.popleft()
            return Emit(key, ts, ts - self.size, ts, _finite(results(self.aggs, iter(g.entries))), r,
                        _worst(g.entries))
        # count
        self._keep(g, ts, vals, q)
        while len(g.entries) > self.size:
            g.entries.popleft()
        g.since += 1
        if len(g.entries) >= self.size and g.since >= (self.step or self.size):
            g.since = 0
            return Emit(key, ts, g.entries[0][0], ts, _finite(results(self.aggs, iter(g.entries))), r,
                        _worst(g.entries))
        return None

    @staticmethod
    def _flag(g: _Group, q: str) -> None:
        if g.flag == "N" and q != "N":
            g.flag = q

    def close_until(self, t: int, out: list[Emit]) -> None:
        """Close every window whose end is at or before ``t`` (the watermark plus one)."""
        heap = self.heap
        while heap and heap[0][0] <= t:
            end, key = heapq.heappop(heap)
            g = self.groups.get(key)
            if g is None or g.end != end:
                continue  # stale: the group moved on or is gone
            self._close(key, g, out)

    def close_all(self, out: list[Emit]) -> None:
        for key in sorted(self.groups):
            g = self.groups[key]
            while key in self.groups and self.groups[key] is g:
                self._close(key, g, out)
        self.heap.clear()

    def _close(self, key: Key, g: _Group, out: list[Emit]) -> None:
        assert g.last is not None
        if self.kind in ("tumbling", "session"):
            ts = g.end if self.kind == "tumbling" else g.last_ts
            out.append(Emit(key, ts, g.start, g.end if self.kind == "tumbling" else g.last_ts,
                            _finite([a.result() for a in g.accs]), g.last, g.flag))
            del self.groups[key]
            return
        if self.kind == "hopping":
            start, end = g.start, g.end
            inside = [e for e in g.entries if start <= e[0] < end]
            if inside:
                out.append(Emit(key, end, start, end, _finite(results(self.aggs, iter(inside))), g.last,
                                _worst(inside)))
            hop = self.step or self.size
            g.start += hop
            while g.entries and g.entries[0][0] < g.start:
                g.entries.popleft()
            if not g.entries:
                del self.groups[key]
                return
            first = g.entries[0][0]
            g.start = max(g.start, ((first - self.size) // hop + 1) * hop)
            g.end = g.start + self.size
            heapq.heappush(self.heap, (g.end, key))
            return
        del self.groups[key]  # sliding and count windows have nothing to close
