"""The gateway's rules: the rule set from the shadow, run on every reading, offline too.

The agent calls ``feed`` with each device's readings after they are in the outbox; derived readings
go back into the outbox (signed and delivered like any reading), alert changes and diagnostics go to
the agent's event sink, notifications to the executors. The rule set arrives as the shadow's
``desired.rules`` (a rule-set document); the last set that compiled is kept in ``rules.json`` in the
data folder, so a gateway that restarts with a broken desired set still runs its last good one.
The applied hash is reported in the shadow's ``reported.rules``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Reading
from carbonlink.rules import RuleHost, RuleSetDoc
from carbonlink.rules.actions import DirSecrets, Executor, RepublishExecutor, WebhookExecutor
from carbonlink.rules.compiler import Catalogue

log = logging.getLogger(__name__)

REPORTED_RULES = 50  # rules listed in the shadow's reported.rules (all of them are named by the hash)
HOLD_MS = 2000  # the gateway's watermark trails its clock by this much: a poll's readings arrive together


class LogSink:
    """Until the agent has its signed event pipeline: events are logged, never lost silently."""

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        level = logging.WARNING if severity != "info" else logging.INFO
        log.log(level, "event %s device=%s point=%s %s", kind, device, point, json.dumps(body or {})[:500])


class _Publisher:
    def __init__(self, publish: Callable[[str, bytes], Awaitable[None]]) -> None:
        self._publish = publish

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self._publish(topic, payload)


class RulesRunner:
    def __init__(self, *, gateway: str, site: str, data_dir: Path, sink: EventSink,
                 derived: Callable[[list[Reading]], Any],
                 publish: Callable[[str, bytes], Awaitable[None]] | None = None,
                 catalogue: Catalogue | None = None, tags: Mapping[str, Mapping[str, str]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = data_dir / "rules.json"
        self.clock = clock
        self._derived_out = derived
        self._pending: list[Reading] = []
        self.executors: dict[str, Executor] = {}
        self.host = RuleHost(source=gateway, sink=sink, derived=self._pending.append, executors=self.executors,
                             catalogue=catalogue, tags=tags)
        secrets = DirSecrets(data_dir / "secrets")
        kw: dict[str, Any] = {"on_dead_letter": self.host.dead_letter}
        self.executors["webhook"] = WebhookExecutor(secrets=secrets, **kw)
        if publish is not None:
            self.executors["republish"] = RepublishExecutor(publisher=_Publisher(publish),
                                                            prefix=f"cl/{site}/{gateway}/rules/", **kw)
        self.last_error: list[dict[str, Any]] = []
        self._load()

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.error("ignoring unreadable %s (%s)", self.path, exc)
            return
        result = self.host.apply(doc)
        if not result.ok:
            log.error("the saved rule set in %s no longer compiles; running none until the cloud sends one",
                      self.path)

    def _save(self, doc: RuleSetDoc) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(doc.model_dump_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def apply(self, doc: Any) -> str | None:
        """The shadow's ``desired.rules``; None when applied, else why it was refused (last good set kept)."""
        result = self.host.apply(doc, ts_ms=int(self.clock() * 1000))
        if not result.ok:
            self.last_error = result.errors
            first = result.errors[0] if result.errors else {}
            at = f" at line {first.get('line')}, column {first.get('column')}" if first.get("line") else ""
            return f"rule {first.get('rule')}{at}: {first.get('message')}; kept rule set {result.hash[:12] or 'none'}"
        self.last_error = []
        if self.host.applied is not None:
            self._save(self.host.applied)
        return None

    def feed(self, readings: Iterable[Reading]) -> None:
        self.host.feed(readings)
        self._flush_derived()

    def _flush_derived(self) -> None:
        if self._pending:
            batch, self._pending[:] = list(self._pending), []
            try:
                self._derived_out(batch)
            except Exception:
                log.exception("derived readings could not be written to the outbox")

    def state(self) -> dict[str, Any]:
        """What the shadow reports: the hash says which set runs; the list is cut so a large set fits the shadow."""
        applied = self.host.applied
        rules = applied.rules if applied else []
        disabled = dict(list(self.host.disabled.items())[:20])
        return {"hash": self.host.applied_hash, "count": len(rules),
                "rules": [{"id": r.id, "version": r.version} for r in rules[:REPORTED_RULES]],
                "disabled": {k: v[:200] for k, v in disabled.items()}, "errors": self.last_error[:5]}

    async def run(self) -> None:
        """Executors up, and the watermark advanced by the clock so windows close without new data."""
        async with contextlib.AsyncExitStack() as stack:
            for ex in self.executors.values():
                await stack.enter_async_context(ex)
            while True:
                self.host.advance(int(self.clock() * 1000) - HOLD_MS)
                self._flush_derived()
                await asyncio.sleep(1.0)
