"""The ci fault profile: every fault row must show nothing lost and nothing stored twice."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from carbonlink.commands.faults.scenarios import PROFILES, run_profile
from tests.services import require


@pytest.mark.timeout(600)  # seven faults in sequence with real outages: ~65 s idle, more on a loaded machine
async def test_ci_profile_loses_nothing_and_doubles_nothing() -> None:
    require(bool(shutil.which("mosquitto")) or Path("/usr/sbin/mosquitto").exists(), "the mosquitto binary",
            "apt-get install -y mosquitto")
    rows = await run_profile(PROFILES["ci"])
    assert len(rows) == 7
    for r in rows:
        assert r.produced > 0 and r.lost == 0 and r.duplicated == 0, r
        assert r.stored == r.produced and not r.note.count("still in the outbox"), r
    dup = next(r for r in rows if r.fault.startswith("duplicated"))
    assert dup.redelivered > 0
    cut = next(r for r in rows if r.fault.startswith("gateway cut off"))
    assert cut.produced >= PROFILES["ci"].buffered
