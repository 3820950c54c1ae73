"""Stopping tasks for certain.

A task can lose a cancellation: a library that catches CancelledError mid-request
(pymodbus does), or Python 3.11's asyncio.wait_for when the awaited thing finishes
at the same moment. Whoever owns a task's lifecycle cancels until it really ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, attempts: int = 20, wait_s: float = 0.5,
                          what: str = "task") -> list[asyncio.Task[Any]]:
    """Cancel ``tasks`` and wait for them, cancelling again those that keep running.

    Returns the tasks that still run after ``attempts`` rounds (logged as errors). If the caller is
    itself cancelled meanwhile (an owner being stopped the same way, from its ``finally``), the rounds go
    on to the end and the cancellation is raised after them: a cleanup cut short would leave the tasks
    running with no owner.
    """
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    for _ in range(attempts):
        if not pending:
            break
        for t in pending:
            t.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=wait_s)
        except asyncio.CancelledError:  # asyncio.wait itself cancels none of them
            interrupted = True
            pending = {t for t in pending if not t.done()}
    for t in pending:
        log.error("%s %s did not stop after %d cancellations; abandoning it", what, t.get_name(), attempts)
    if interrupted:
        raise asyncio.CancelledError
    return list(pending)


def failure(task: asyncio.Task[Any]) -> BaseException | None:
    """The exception ``task`` ended with by itself: None while it runs, when it returned or was cancelled.
    Reading it marks it retrieved (asyncio then does not report it as never retrieved)."""
    return task.exception() if task.done() and not task.cancelled() else None
