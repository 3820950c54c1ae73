"""Shadow rules without a broker: merge patch, delta, versions, limits, and the gateway's plan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from carbonlink.cloud.shadows import MAX_SHADOW_BYTES, ShadowError, ShadowService, compute_delta, merge_patch
from carbonlink.cloud.store import Store, open_store
from carbonlink.edge.shadow import plan


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'cloud.sqlite'}")
    await s.open()
    await s.registry.register_gateway("gw-1", "site-1", "ed25519", "00" * 32)
    yield s
    await s.close()


def test_merge_patch_and_delta() -> None:
    doc = {"a": 1, "b": {"c": 2, "d": 3}}
    assert merge_patch(doc, {"b": {"c": None, "e": 4}, "f": [1]}) == {"a": 1, "b": {"d": 3, "e": 4}, "f": [1]}
    desired = {"log_level": "DEBUG", "batch": {"max_readings": 50, "max_age_s": 2}, "devices": {"x": {"enabled": True}}}
    reported = {"log_level": "INFO", "batch": {"max_readings": 50, "max_age_s": 2.0}, "devices": {"x": {"enabled": 1}}}
    # 2 == 2.0 is no difference; 1 is not the boolean true.
    assert compute_delta(desired, reported) == {"log_level": "DEBUG", "devices": {"x": {"enabled": True}}}
    assert compute_delta(desired, desired) == {}


async def test_versions_types_size_and_unknown_gateway(store: Store) -> None:
    svc = ShadowService(store)
    s0 = await svc.get("gw-1")
    assert s0["version"] == 0 and s0["state"] == {"desired": {}, "reported": {}, "delta": {}}
    s1 = await svc.update("gw-1", desired={"log_level": "DEBUG"}, version=0)
    assert s1["version"] == 1 and s1["state"]["delta"] == {"log_level": "DEBUG"}
    assert set(s1["metadata"]["desired"]) == {"log_level"}
    s2 = await svc.update("gw-1", reported={"log_level": "DEBUG"})
    assert s2["version"] == 2 and s2["state"]["delta"] == {}
    assert (await svc.update("gw-1", reported={"log_level": "DEBUG"}))["version"] == 2  # no change, no bump
    bad = [
        (dict(desired={"log_level": "LOUD"}, version=2), 422, "log_level"),
        (dict(desired={"batch": {"max_readings": "50"}}), 422, "max_readings"),
        (dict(desired={"devices": {"x": {"enabled": "yes"}}}), 422, "enabled"),
        (dict(desired={"log_level": "INFO"}, version=1), 409, "stale"),
        (dict(desired=["not", "an", "object"]), 400, "JSON object"),
        (dict(desired={"blob": "x" * MAX_SHADOW_BYTES}), 413, "limit"),
    ]
    for kwargs, status, words in bad:
        with pytest.raises(ShadowError) as err:
            await svc.update("gw-1", **kwargs)  # type: ignore[arg-type]
        assert err.value.status == status and words in err.value.message, err.value.message
    assert (await svc.get("gw-1"))["version"] == 2  # none of them changed anything
    with pytest.raises(ShadowError) as err:
        await svc.get("gw-nobody")
    assert err.value.status == 404
    # Deleting a key with null drops it and its timestamp.
    s3 = await svc.update("gw-1", desired={"log_level": None, "devices": {"d1": {"poll_interval_s": 2}}})
    assert s3["state"]["desired"] == {"devices": {"d1": {"poll_interval_s": 2}}}
    assert set(s3["metadata"]["desired"]) == {"devices.d1.poll_interval_s"}


def test_gateway_plan_rejects_what_it_cannot_apply() -> None:
    ok, rejected = plan({"log_level": "DEBUG", "batch": {"max_readings": 0, "max_age_s": 2, "zip": 1},
                         "devices": {"cems": {"poll_interval_s": 0.5, "points": ["so2", "bogus"], "colour": "red"},
                                     "ghost": {"enabled": False}},
                         "firmware": "2.0"},
                        {"cems": {"so2", "nox"}})
    assert ok == {"log_level": "DEBUG", "batch": {"max_age_s": 2.0}, "devices": {"cems": {"poll_interval_s": 0.5}}}
    assert set(rejected) == {"batch.max_readings", "batch.zip", "devices.cems.points", "devices.cems.colour",
                             "devices.ghost", "firmware"}
    assert rejected["firmware"] == "unknown key" and "bogus" in rejected["devices.cems.points"]
