"""Hostile commands run nothing and raise nothing: a JSON object with an id, and a deadline that is an integer."""

from __future__ import annotations

import json
from typing import Any

from carbonlink.edge.commands import CommandRunner
from carbonlink.kernel import topics as T
from carbonlink.kernel.topics import GatewayTopics


class Target:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def read_now(self, device: str | None, wait_s: float) -> dict[str, Any]:
        self.ran.append("read_now")
        return {"readings": 0}

    async def restart_driver(self, device: str) -> dict[str, Any]:
        self.ran.append("restart_driver")
        return {}

    async def reload_config(self) -> dict[str, Any]:
        self.ran.append("reload_config")
        return {}


async def test_malformed_commands_are_dropped_without_running_or_raising() -> None:
    tops = GatewayTopics("site-a", "gw-1")
    target = Target()
    runner = CommandRunner(tops, target)
    sent: list[bytes] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(payload)

    topic = tops.topic(f"{T.COMMAND}/reload_config")
    # Before: deep nesting raised RecursionError out of the handler; a list or a number raised nothing but
    # an id of true, [] or {} was taken as a command id.
    for raw in (b"[" * 5000 + b"]" * 5000, b"[1]", b"7", b"not json", b'{"id": true}', b'{"id": []}',
                b'{"id": {}}', b'{"id": ""}', b'{"args": {}}', b'{"id": "%s"}' % (b"x" * 200),
                b'{"id": "a", "pad": "%s"}' % (b"x" * 70_000)):
        assert await runner.handle(topic, raw, publish)
    assert target.ran == [] and sent == []


async def test_a_deadline_that_is_not_an_integer_is_refused_with_its_reason() -> None:
    tops = GatewayTopics("site-a", "gw-1")
    target = Target()
    runner = CommandRunner(tops, target)
    sent: list[dict[str, Any]] = []

    async def publish(topic: str, payload: bytes) -> None:
        sent.append(json.loads(payload))

    topic = tops.topic(f"{T.COMMAND}/reload_config")
    # Before: true was taken as deadline 1 (long past: "expired"), 1e400 and "5" as no deadline at all.
    for i, deadline in enumerate(("true", "1e400", '"5"', "2.5", "-1", "[1]")):
        assert await runner.handle(topic, f'{{"id": "c{i}", "deadline_ms": {deadline}}}'.encode(), publish)
    assert target.ran == []
    assert [m["status"] for m in sent] == ["rejected"] * 6
    assert all("deadline_ms must be an integer" in m["error"] for m in sent)
    # Absent or a real deadline in the future: the command runs.
    assert await runner.handle(topic, b'{"id": "ok1"}', publish)
    assert await runner.handle(topic, b'{"id": "ok2", "deadline_ms": %d}' % (2**62), publish)
    assert target.ran == ["reload_config", "reload_config"] and [m["status"] for m in sent[-2:]] == ["ok", "ok"]
