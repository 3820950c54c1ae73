"""What a driver's session keeps in memory over many polls, measured with tracemalloc."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncGenerator, Sequence
from typing import TypeVar

T = TypeVar("T")


async def session_growth(gen: AsyncGenerator[T, None], warm: int, measured: int,
                         skip: Sequence[tracemalloc.Filter] = ()) -> tuple[int, T]:
    """Bytes still allocated after ``measured`` polls compared with before them (after ``warm`` polls, and
    200 more under tracing), leaving out ``skip``, tracemalloc itself and this module; and the last batch.
    Closes the session."""
    try:
        for _ in range(warm):
            await anext(gen)
        tracemalloc.start(1)
        try:
            for _ in range(200):
                await anext(gen)
            base = tracemalloc.take_snapshot()
            for _ in range(measured):
                batch = await anext(gen)
            end = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    finally:
        await gen.aclose()
    filters = [*skip, tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    diffs = end.filter_traces(filters).compare_to(base.filter_traces(filters), "filename")
    return sum(d.size_diff for d in diffs), batch
