"""Alerts: the detector that turns a condition into raise/clear, and the lifecycle of an alert.

Detection (``Tracker``, one per rule and subject) is a pure state machine over rows in event time:

    NORMAL --raise true--> PENDING --held FOR d--> RAISED --clear true--> CLEARING --held FOR d--> NORMAL
                         (raise false: NORMAL)             (clear false: RAISED)

Without CLEAR WHEN, the clear condition is NOT(raise condition); with it there is hysteresis (raise
above 200, clear below 180). NULL never moves the machine. An alert's id is derived from the rule,
the subject and the time the condition first held, so the edge and the cloud evaluating the same
readings name the same alert, and a redelivered event is the same alert.

Lifecycle (``Alert`` and the functions below) is what the cloud keeps: raised -> acknowledged ->
cleared (automatically when the condition ends, or by an operator), deduplicated by id; merging is
order-independent, so an alert raised offline and delivered late keeps its original times.
"""

from __future__ import annotations

import enum
import hashlib
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from carbonlink.kernel.wire import Reading

MAX_EVIDENCE = 5


class Phase(enum.IntEnum):
    NORMAL = 0
    PENDING = 1
    RAISED = 2
    CLEARING = 3


def alert_id(rule: str, subject: str, since_ms: int) -> str:
    return hashlib.sha256(f"{rule}\n{subject}\n{since_ms}".encode()).hexdigest()[:32]


class Tracker:
    __slots__ = ("clear_since", "evidence", "first", "phase", "raised_ts", "since")

    def __init__(self) -> None:
        self.phase = Phase.NORMAL
        self.since = 0
        self.clear_since = 0
        self.raised_ts = 0
        self.first: Reading | None = None
        self.evidence: deque[Reading] = deque(maxlen=MAX_EVIDENCE - 1)

    def step(self, ts: int, raise_v: Any, clear_v: Any, raise_for: int, clear_for: int,
             evidence: tuple[Reading, ...]) -> str | None:
        """Feed one row; returns "raised", "cleared" or None."""
        p = self.phase
        if p is Phase.NORMAL:
            if raise_v is not True:
                return None
            self.phase = p = Phase.PENDING
            self.since = ts
            self.first = evidence[0] if evidence else None
            self.evidence.clear()
        if p is Phase.PENDING:
            if raise_v is False:
                self.phase = Phase.NORMAL
                return None
            if raise_v is True:
                self._keep(evidence)
                if ts - self.since >= raise_for:
                    self.phase = Phase.RAISED
                    self.raised_ts = ts
                    return "raised"
            return None
        if p is Phase.RAISED:
            if raise_v is True:
                self._keep(evidence)
            if clear_v is not True:
                return None
            self.phase = p = Phase.CLEARING
            self.clear_since = ts
        if clear_v is False:
            self.phase = Phase.RAISED
            return None
        if clear_v is True and ts - self.clear_since >= clear_for:
            self.phase = Phase.NORMAL
            return "cleared"
        return None

    def _keep(self, evidence: tuple[Reading, ...]) -> None:
        for r in evidence:
            if r is not self.first and (not self.evidence or self.evidence[-1] is not r):
                self.evidence.append(r)

    def evidence_readings(self) -> tuple[Reading, ...]:
        first = (self.first,) if self.first is not None else ()
        return first + tuple(self.evidence)


# --- lifecycle ---------------------------------------------------------------------------------


class State(enum.StrEnum):
    RAISED = "raised"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"


class LifecycleError(ValueError):
    """An operation that does not fit the alert's state (acknowledging a cleared alert, ...)."""


@dataclass(frozen=True)
class Alert:
    id: str
    rule: str
    subject: str
    version: int = 0
    severity: str = "warning"
    gateway: str = ""
    device: str | None = None
    point: str | None = None
    raised_ms: int | None = None  # None while only the clear has arrived
    since_ms: int | None = None
    cleared_ms: int | None = None
    cleared_by: str | None = None  # "auto" (the condition ended) or who cleared it
    acked_ms: int | None = None
    acked_by: str | None = None
    silenced_by: str | None = None  # the silence that covered it when raised
    values: dict[str, Any] = field(default_factory=dict)
    evidence: tuple[dict[str, Any], ...] = ()

    @property
    def state(self) -> State:
        if self.cleared_ms is not None:
            return State.CLEARED
        if self.acked_ms is not None:
            return State.ACKNOWLEDGED
        return State.RAISED


def merge_raised(existing: Alert | None, incoming: Alert) -> Alert:
    """Record an ``alert.raised``; idempotent, and a clear that arrived first is kept."""
    if existing is None:
        return incoming
    return replace(existing, version=incoming.version, severity=incoming.severity, gateway=incoming.gateway,
                   device=incoming.device, point=incoming.point, raised_ms=incoming.raised_ms,
                   since_ms=incoming.since_ms, values=incoming.values, evidence=incoming.evidence,
                   silenced_by=existing.silenced_by or incoming.silenced_by)


def merge_cleared(existing: Alert | None, alert_id_: str, rule: str, subject: str, ts_ms: int,
                  by: str = "auto") -> Alert:
    """Record an ``alert.cleared`` (the condition ended); the earliest clear wins."""
    if existing is None:
        return Alert(alert_id_, rule, subject, cleared_ms=ts_ms, cleared_by=by)
    if existing.cleared_ms is not None and existing.cleared_ms <= ts_ms:
        return existing
    return replace(existing, cleared_ms=ts_ms, cleared_by=by)


def acknowledge(alert: Alert, by: str, at_ms: int) -> Alert:
    if not by:
        raise LifecycleError("an acknowledgement names who acknowledged")
    if alert.state is State.CLEARED:
        raise LifecycleError(f"alert {alert.id} is already cleared")
    if alert.state is State.ACKNOWLEDGED:
        raise LifecycleError(f"alert {alert.id} was already acknowledged by {alert.acked_by}")
    return replace(alert, acked_ms=at_ms, acked_by=by)


def clear(alert: Alert, by: str, at_ms: int) -> Alert:
    """An operator clears an alert by hand (the detector clears by itself when the condition ends)."""
    if not by:
        raise LifecycleError("a manual clear names who cleared")
    if alert.state is State.CLEARED:
        raise LifecycleError(f"alert {alert.id} is already cleared")
    return replace(alert, cleared_ms=at_ms, cleared_by=by)


def open_for(alerts: list[Alert], rule: str, subject: str) -> Alert | None:
    """The open alert of one rule and subject, if any (there is at most one by construction)."""
    found = [a for a in alerts if a.rule == rule and a.subject == subject and a.state is not State.CLEARED]
    return min(found, key=lambda a: a.raised_ms or 0) if found else None
