"""Hostile shadow deltas change nothing and raise nothing: the version must be a JSON integer."""

from __future__ import annotations

import json
from pathlib import Path

from carbonlink.edge.shadow import EdgeShadow
from carbonlink.kernel import topics as T
from carbonlink.kernel.topics import GatewayTopics
from tests.edge.shadow_target import NullTarget


async def test_a_delta_with_a_version_that_is_not_an_integer_is_ignored(tmp_path: Path) -> None:
    tops = GatewayTopics("site-a", "gw-1")
    target = NullTarget()
    shadow = EdgeShadow(tmp_path / "shadow.json", tops, target)
    sent: list[bytes] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)

    delta = tops.topic(T.SHADOW_DELTA)
    desired = '"desired":{"log_level":"DEBUG"}'
    # Before: Infinity and 1e400 raised OverflowError out of the handler; true, 2.5 and "3" were versions.
    for version in ("Infinity", "1e400", "NaN", "true", "2.5", '"3"', "null", "[1]"):
        assert await shadow.handle(delta, f'{{"version":{version},{desired}}}'.encode(), publish)
    assert await shadow.handle(delta, b"[" * 5000 + b"]" * 5000, publish)
    assert shadow.version == 0 and target.log_levels == [] and not (tmp_path / "shadow.json").exists()
    # A well-formed delta still applies.
    assert await shadow.handle(delta, f'{{"version":4,{desired}}}'.encode(), publish)
    assert shadow.version == 4 and target.log_levels == ["DEBUG"]
    assert json.loads((tmp_path / "shadow.json").read_text())["version"] == 4
