"""Cloud evaluation of rules over every gateway's committed readings.

One ``RuleHost`` per tenant runs the tenant's cloud rule set with an allowed lateness, partitioned by
gateway and device, so its outputs equal a gateway's for the same readings (docs/rules.md,
"Determinism"): same rows, same derived values, same alert ids. ``on_commit`` is called (by the
ingest's batch listener, synchronously) with the readings of each committed batch and returns what
they produced as plain records for the caller to store: alert changes and derived readings with the
inputs they came from. Notifications go to the tenant's executors (webhook, e-mail, republish).
Diagnostics (``rule.skipped``, ``rules.late``, ``rule.disabled``, ...) are counted and logged.

Readings whose point is a derived one (``rule:…``) are not fed back: a gateway does not feed its own
derived readings to its rules either.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from carbonlink.kernel.wire import Reading
from carbonlink.rules import AlertChange, Derived, Row, RuleHost
from carbonlink.rules.actions import Executor
from carbonlink.rules.compiler import DERIVED_PREFIX

log = logging.getLogger(__name__)

LATENESS_MS = 10 * 60_000


@dataclass(frozen=True)
class DerivedOut:
    """A reading the cloud derived, with what proves where it came from."""

    gateway: str
    reading: Reading
    rule: str
    version: int
    rule_hash: str
    window: tuple[int, int] | None
    inputs: list[list[Any]]  # [device, point, ts_ms] of the readings the row was computed from

    def row(self) -> tuple[Any, ...]:
        r = self.reading
        return (self.gateway, r.device, r.point, r.ts_ms, r.value, r.unit, r.quality.value, self.rule, self.version,
                self.rule_hash, self.window[0] if self.window else None, self.window[1] if self.window else None,
                self.inputs)


@dataclass
class Diagnostics:
    """What a tenant's host reported besides outputs: counted by kind, the last few kept for the API."""

    counts: Counter[str] = field(default_factory=Counter)
    last: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        if kind.startswith("alert."):
            return  # alert changes are taken from the outputs, typed
        self.counts[kind] += 1
        self.last.append({"kind": kind, "ts_ms": ts_ms, "severity": severity, "device": device, "point": point,
                          "body": body or {}})
        del self.last[:-20]
        if severity != "info":
            log.warning("cloud rules: %s %s", kind, body)


class CloudRules:
    def __init__(self, *, lateness_ms: int = LATENESS_MS,
                 executors_for: Callable[[str], Mapping[str, Executor]] | None = None) -> None:
        self.lateness_ms = lateness_ms
        self.executors_for = executors_for
        self.hosts: dict[str, RuleHost] = {}
        self.diagnostics: dict[str, Diagnostics] = {}

    def apply(self, tenant: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Switch a tenant to a rule set (the cloud set); a set that does not compile leaves the last one."""
        host = self.hosts.get(tenant)
        if host is None:
            diag = self.diagnostics[tenant] = Diagnostics()
            executors = self.executors_for(tenant) if self.executors_for is not None else {}
            host = self.hosts[tenant] = RuleHost(source="", sink=diag, executors=executors,
                                                 lateness_ms=self.lateness_ms)
        result = host.apply(doc)
        return {"ok": result.ok, "hash": result.hash, "errors": result.errors}

    def drop(self, tenant: str) -> None:
        self.hosts.pop(tenant, None)

    def on_commit(self, tenant: str, gateway: str, readings: Sequence[Reading]
                  ) -> tuple[list[AlertChange], list[DerivedOut]]:
        host = self.hosts.get(tenant)
        if host is None or not readings:
            return [], []
        inputs = [r for r in readings if not r.point.startswith(DERIVED_PREFIX)]
        return self._collect(host, gateway, host.feed(inputs, source=gateway))

    def flush(self, tenant: str) -> tuple[list[AlertChange], list[DerivedOut]]:
        """Process everything buffered and close open windows (tests, the end of a replay)."""
        host = self.hosts.get(tenant)
        return self._collect(host, "", host.flush()) if host is not None else ([], [])

    @staticmethod
    def _collect(host: RuleHost, gateway: str, outputs: list[Any]) -> tuple[list[AlertChange], list[DerivedOut]]:
        alerts: list[AlertChange] = []
        derived: list[DerivedOut] = []
        row: Row | None = None
        for o in outputs:
            if isinstance(o, Row):
                row = o  # a row's derived readings follow it
            elif isinstance(o, AlertChange):
                alerts.append(o)
            elif isinstance(o, Derived) and row is not None and row.rule == o.rule:
                rule = host.engine.by_id.get(o.rule)
                derived.append(DerivedOut(row.source or gateway, o.reading, o.rule, o.version,
                                          rule.hash if rule is not None else "", row.window,
                                          [[r.device, r.point, r.ts_ms] for r in row.evidence]))
        return alerts, derived

    def state(self, tenant: str) -> dict[str, Any]:
        host = self.hosts.get(tenant)
        diag = self.diagnostics.get(tenant)
        if host is None or diag is None:
            return {"running": False}
        c = host.engine.counters
        return {"running": True, "hash": host.applied_hash, "rules": len(host.engine.rules.rules),
                "disabled": dict(c.disabled), "readings": c.readings, "late": c.late, "invalid": c.invalid,
                "pending": host.engine.pending, "lateness_ms": self.lateness_ms,
                "diagnostics": dict(diag.counts), "recent": list(diag.last[-5:]),
                "dead_letters": len(host.dead_letters)}
