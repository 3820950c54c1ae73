"""The ci fault profile: every fault row must show nothing lost and nothing stored twice."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from carbonlink.cloud.store.postgres import drop_schema
from carbonlink.commands.faults.scenarios import PROFILES, run_profile
from tests.services import require, require_postgres


@pytest.mark.timeout(600)  # seven faults in sequence with real outages: ~65 s idle, more on a loaded machine
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_ci_profile_loses_nothing_and_doubles_nothing(backend: str) -> None:
    """On the embedded default and on PostgreSQL, which is what production runs."""
    require(bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists(), "the mosquitto binary",
            "apt-get install -y mosquitto")
    db = None
    if backend == "postgres":
        schema = "clfaults_" + uuid.uuid4().hex[:10]
        db = f"{require_postgres()}?schema={schema}&lock_timeout_ms=1000"
    try:
        rows = await run_profile(PROFILES["ci"], db=db)
    finally:
        if db is not None:
            await drop_schema(require_postgres(), schema)
    assert len(rows) == 7
    for r in rows:
        assert r.produced > 0 and r.lost == 0 and r.duplicated == 0, r
        assert r.stored == r.produced and not r.note.count("still in the outbox"), r
    dup = next(r for r in rows if r.fault.startswith("duplicated"))
    assert dup.redelivered > 0
    cut = next(r for r in rows if r.fault.startswith("gateway cut off"))
    assert cut.produced >= PROFILES["ci"].buffered
