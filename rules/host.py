"""One place where a host (the edge agent, the cloud's ingest) runs a rule set.

``RuleHost`` keeps the applied set and its hash, keeps the last good set when a new one fails to
compile, feeds the engine and routes its outputs: alert changes become ``alert.raised`` /
``alert.cleared`` events on the host's ``EventSink``; derived readings go to the host's callback
(the edge: the outbox, signed and delivered like any reading); notifications go to the executors.
Nothing here raises into the host: a failure is an event and a log line.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Reading

from .actions import DeadLetter, Executor, Job
from .compiler import Budget, Catalogue, CompiledSet, RuleError, RuleSetError, compile_ruleset
from .document import RuleSetDoc
from .engine import AlertChange, Derived, Engine, Notify, Output

log = logging.getLogger(__name__)


@dataclass
class ApplyResult:
    ok: bool
    hash: str  # the hash now applied (the old one when the new set was refused)
    version: int  # how many sets this host applied since it started
    errors: list[dict[str, Any]] = field(default_factory=list)


class RuleHost:
    def __init__(self, *, source: str, sink: EventSink, derived: Callable[[Reading], None] | None = None,
                 executors: Mapping[str, Executor] | None = None, catalogue: Catalogue | None = None,
                 budget: Budget | None = None, lateness_ms: int = 0,
                 tags: Mapping[str, Mapping[str, str]] | None = None, dead_letters: int = 100) -> None:
        self.source = source
        self.sink = sink
        self.derived = derived
        self.executors = dict(executors or {})
        self.catalogue = catalogue
        self.budget = budget
        self.engine = Engine(CompiledSet(RuleSetDoc(), RuleSetDoc().content_hash(), []), source=source,
                             lateness_ms=lateness_ms, sink=sink, tags=tags)
        self.applied: RuleSetDoc | None = None
        self.applied_hash = ""
        self.applied_count = 0
        self.dead_letters: deque[DeadLetter] = deque(maxlen=dead_letters)

    # --- rule sets ------------------------------------------------------------------------

    def apply(self, doc: RuleSetDoc | Mapping[str, Any], ts_ms: int = 0) -> ApplyResult:
        """Compile and switch to a rule set; on any error keep the last good one and say why."""
        errors: list[dict[str, Any]]
        try:
            parsed = doc if isinstance(doc, RuleSetDoc) else RuleSetDoc.model_validate(doc)
        except ValidationError as exc:
            errors = [{"rule": None, "where": ".".join(map(str, e["loc"])), "line": None, "column": None,
                       "message": e["msg"], "expected": []} for e in exc.errors()[:20]]
            return self._refuse(errors, ts_ms, None)
        h = parsed.content_hash()
        if h == self.applied_hash:
            return ApplyResult(True, h, self.applied_count)
        try:
            compiled = compile_ruleset(parsed, self.catalogue, self.budget)
        except RuleSetError as exc:
            return self._refuse([e.to_dict() for e in exc.errors], ts_ms, h)
        except RuleError as exc:  # pragma: no cover - compile_ruleset collects these
            return self._refuse([exc.to_dict()], ts_ms, h)
        self.engine.load(compiled)
        self.applied, self.applied_hash = parsed, h
        self.applied_count += 1
        log.info("rule set %s applied: %d rules", h[:12], len(compiled.rules))
        self.sink.emit("rules.applied", ts_ms=ts_ms, body={"hash": h, "rules": [
            {"id": r.id, "version": r.version} for r in compiled.rules]})
        return ApplyResult(True, h, self.applied_count)

    def _refuse(self, errors: list[dict[str, Any]], ts_ms: int, h: str | None) -> ApplyResult:
        log.error("rule set %s refused, keeping %s: %s", (h or "?")[:12], self.applied_hash[:12] or "none",
                  "; ".join(str(e["message"]) for e in errors[:3]))
        self.sink.emit("rules.rejected", ts_ms=ts_ms, severity="warning",
                       body={"hash": h, "kept": self.applied_hash, "errors": errors[:20]})
        return ApplyResult(False, self.applied_hash, self.applied_count, errors)

    # --- readings -------------------------------------------------------------------------

    def feed(self, readings: Iterable[Reading], source: str | None = None) -> list[Output]:
        return self._guard(lambda: self.engine.feed(readings, source))

    def advance(self, watermark_ms: int) -> list[Output]:
        return self._guard(lambda: self.engine.advance(watermark_ms))

    def flush(self) -> list[Output]:
        return self._guard(self.engine.flush)

    def _guard(self, step: Callable[[], list[Output]]) -> list[Output]:
        try:
            out = step()
        except Exception:  # the engine isolates rules; this is the last line that keeps the host alive
            log.exception("rules engine failed; readings of this call were not evaluated")
            self.sink.emit("rules.error", ts_ms=0, severity="critical", body={"error": "engine failure, see log"})
            return []
        self.route(out)
        return out

    def route(self, outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, AlertChange):
                self.sink.emit(f"alert.{o.kind}", ts_ms=o.ts_ms, severity=o.severity, device=o.device,
                               point=o.point, body=o.body())
            elif isinstance(o, Derived):
                if self.derived is not None:
                    try:
                        self.derived(o.reading)
                    except Exception:
                        log.exception("derived reading %s could not be handed over", o.reading.key)
            elif isinstance(o, Notify):
                self._notify(o)

    def _notify(self, n: Notify) -> None:
        rule = self.engine.by_id.get(n.rule)
        if rule is None:
            return
        action = rule.doc.actions[n.action_index]
        job = Job(n.rule, n.subject, n.kind, action, n.payload)
        ex = self.executors.get(action.type)
        if ex is None:
            self.dead_letter(DeadLetter(action.type, "", n.rule, n.subject, n.kind,
                                        f"no {action.type} executor is configured on this host", 0, n.payload))
            return
        ex.submit(job)

    def dead_letter(self, letter: DeadLetter) -> None:
        """Executors report here: kept (bounded) for inspection and sent as an ``action.dead_letter`` event."""
        self.dead_letters.append(letter)
        self.sink.emit("action.dead_letter", ts_ms=int(letter.payload.get("ts") or 0), severity="warning",
                       body={"action": letter.action, "target": letter.target, "rule": letter.rule,
                             "subject": letter.subject, "kind": letter.kind, "reason": letter.reason[:300],
                             "attempts": letter.attempts})

    @property
    def disabled(self) -> dict[str, str]:
        return dict(self.engine.counters.disabled)
