"""Hostile messages through a real Mosquitto to a running ingest, on both back ends (issue 10 §1).

A short fixed-seed run here; the long run is ``carbonlink faults fuzz-ingest --count 100000``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonlink.commands.faults.fuzz import fuzz_ingest
from tests.cloud.store.conftest import throwaway_store
from tests.services import own_mosquitto

pytestmark = pytest.mark.service("mosquitto")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_hostile_messages_through_the_broker_change_nothing_and_ingest_goes_on(kind: str, tmp_path: Path
                                                                                     ) -> None:
    async with throwaway_store(kind, tmp_path, "clfuzz_") as store:  # made and migrated; dropped after
        with own_mosquitto() as (mqtt, _port, _dir):
            result = await fuzz_ingest(store.url, mqtt, seed=7, count=120, settle_s=30)
    assert 100 < result.published <= 120 and result.judged == result.published
    assert result.readings_from_hostile == 0
    assert result.dead_letters >= result.published - 15  # a few commit as batches whose readings were all refused
    assert result.valid_ack_s is not None and result.valid_ack_s < 2.0
