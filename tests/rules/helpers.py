"""Small builders shared by the rules tests."""

from __future__ import annotations

from typing import Any

from carbonlink.kernel.wire import Quality, Reading
from carbonlink.rules import Engine, RuleDoc, RuleSetDoc, compile_ruleset
from carbonlink.rules.compiler import Catalogue


class ListSink:
    """An EventSink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        self.events.append((kind, {"ts_ms": ts_ms, "severity": severity, "device": device, "point": point,
                                   "body": body or {}}))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for k, e in self.events if k == kind]


def R(device: str, point: str, ts: int, value: float, unit: str = "mg/m³", q: str = "N") -> Reading:
    return Reading(device, point, ts, float(value), unit, Quality(q))


def engine(*texts: str, catalogue: Catalogue | None = None, lateness_ms: int = 0, source: str = "gw-1",
           sink: ListSink | None = None, **doc: Any) -> Engine:
    docs = [RuleDoc(id=f"r{i + 1}", text=t, **doc) for i, t in enumerate(texts)]
    return Engine(compile_ruleset(RuleSetDoc(rules=docs), catalogue), source=source, lateness_ms=lateness_ms,
                  sink=sink)


def rows(out: list[Any], rule: str | None = None) -> list[Any]:
    from carbonlink.rules import Row
    return [o for o in out if isinstance(o, Row) and (rule is None or o.rule == rule)]
