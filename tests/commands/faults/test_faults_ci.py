"""The ci fault profile: every fault row must show nothing lost and nothing stored twice."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest

from carbonlink.cloud.store.postgres import drop_schema
from carbonlink.commands.faults.lab import Row
from carbonlink.commands.faults.scenarios import PROFILES, run_profile
from tests.services import require, require_postgres


@pytest.mark.timeout(600)  # seven faults in sequence with real outages: ~75 s idle, more on a loaded machine
async def test_ci_profile_loses_nothing_and_doubles_nothing() -> None:
    """On the embedded default and on PostgreSQL, which is what production runs: the two labs (each its own
    Mosquitto, workers, gateways and store) run side by side, as most of a fault is waiting for it to pass."""
    require(bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists(), "the mosquitto binary",
            "apt-get install -y mosquitto")
    schema = "clfaults_" + uuid.uuid4().hex[:10]
    db = f"{require_postgres()}?schema={schema}&lock_timeout_ms=1000"
    try:
        results = await asyncio.gather(run_profile(PROFILES["ci"]), run_profile(PROFILES["ci"], db=db),
                                       return_exceptions=True)
    finally:
        await drop_schema(require_postgres(), schema)
    for backend, rows in zip(("sqlite", "postgres"), results, strict=True):
        if isinstance(rows, BaseException):
            raise AssertionError(f"the {backend} lab failed: {rows!r}") from rows
        check(rows)


def check(rows: list[Row]) -> None:
    assert len(rows) == 7
    for r in rows:
        assert r.produced > 0 and r.lost == 0 and r.duplicated == 0, r
        assert r.stored == r.produced and not r.note.count("still in the outbox"), r
    dup = next(r for r in rows if r.fault.startswith("duplicated"))
    assert dup.redelivered > 0
    cut = next(r for r in rows if r.fault.startswith("gateway cut off"))
    assert cut.produced >= PROFILES["ci"].buffered
