"""Commands from the cloud: ``read_now``, ``restart_driver``, ``reload_config``.

Each arrives on ``cmd/{name}`` as {"id", "name", "args", "deadline_ms"} and is
answered once on ``cmd/result`` with status ok, error, rejected (unknown
command or bad arguments) or expired (the deadline passed before it arrived,
for instance while the gateway was offline: it is then not run at all).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from carbonlink.kernel import topics as T
from carbonlink.kernel.topics import GatewayTopics
from carbonlink.kernel.wire import json_object, now_ms

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], Awaitable[None]]
MAX_COMMAND_BYTES = 65_536  # a command is a name, an id, a deadline and a few arguments


class CommandTarget(Protocol):
    async def read_now(self, device: str | None, wait_s: float) -> dict[str, Any]: ...
    async def restart_driver(self, device: str) -> dict[str, Any]: ...
    async def reload_config(self) -> dict[str, Any]: ...


class CommandRejected(Exception):
    pass


class CommandRunner:
    def __init__(self, topics: GatewayTopics, target: CommandTarget) -> None:
        self.topics = topics
        self.target = target
        self.done: dict[str, str] = {}  # id → status, so a redelivered command is not run twice

    @property
    def subscription(self) -> str:
        return self.topics.topic(f"{T.COMMAND}/+")

    async def handle(self, topic: str, raw: bytes, publish: Publish) -> bool:
        prefix = self.topics.topic(T.COMMAND) + "/"
        if not topic.startswith(prefix):
            return False
        name = topic.removeprefix(prefix)
        if name == "result":
            return True  # our own answers come back through the cmd/+ subscription
        msg = json_object(raw, MAX_COMMAND_BYTES)
        cid = msg.get("id") if msg is not None else None
        if msg is None or not isinstance(cid, str | int) or isinstance(cid, bool) or not 0 < len(str(cid)) <= 128:
            log.warning("malformed command on %s (no JSON object with an id): %r", topic, raw[:200])
            return True
        cid = str(cid)
        if cid in self.done:
            return True
        result: dict[str, Any] | None = None
        error = None
        deadline = msg.get("deadline_ms")
        args = msg.get("args") or {}
        try:
            if deadline is not None and (type(deadline) is not int or not 0 <= deadline < 2**63):
                raise CommandRejected("deadline_ms must be an integer (ms since the epoch) or absent")
            if deadline is not None and now_ms() > deadline:
                status, error = "expired", f"arrived {now_ms() - deadline} ms after its deadline; not run"
            elif not isinstance(args, dict):
                raise CommandRejected("args must be an object")
            else:
                result = await self._run(name, args, deadline)
                status = "ok"
        except CommandRejected as exc:
            status, error = "rejected", str(exc)
        except (OSError, TimeoutError, ValueError, RuntimeError) as exc:
            status, error = "error", f"{type(exc).__name__}: {exc}"
        self.done[cid] = status
        if len(self.done) > 1000:
            self.done.pop(next(iter(self.done)))
        log.info("command %s %s: %s", name, cid, status)
        body = {"id": cid, "status": status, "result": result, "error": error}
        await publish(self.topics.topic(T.COMMAND_RESULT), json.dumps(body, separators=(",", ":")).encode())
        return True

    async def _run(self, name: str, args: dict[str, Any], deadline: Any) -> dict[str, Any]:
        device = args.get("device")
        if device is not None and not isinstance(device, str):
            raise CommandRejected("args.device must be a device id")
        if name == "read_now":
            left = (deadline - now_ms()) / 1000 if deadline is not None else 10.0
            return await self.target.read_now(device, max(0.5, left - 0.5))
        if name == "restart_driver":
            if device is None:
                raise CommandRejected("restart_driver needs args.device")
            return await self.target.restart_driver(device)
        if name == "reload_config":
            return await self.target.reload_config()
        raise CommandRejected(f"unknown command {name!r}; known: read_now, restart_driver, reload_config")
