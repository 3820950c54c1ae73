"""Outbox files as an older release left them, for migration tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from carbonlink.edge.outbox import _MIGRATIONS


def outbox_at_version(path: Path, version: int) -> sqlite3.Connection:
    """A new outbox file with only the first ``version`` migrations applied (an open connection to it)."""
    db = sqlite3.connect(path, isolation_level=None)
    for n, sql in enumerate(_MIGRATIONS[:version], start=1):
        for stmt in (s for s in sql.split(";") if s.strip()):
            db.execute(stmt)
        db.execute(f"PRAGMA user_version={n}")
    return db
