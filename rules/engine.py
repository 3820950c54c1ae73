"""The engine: readings in, rows, alert changes, derived readings and notifications out.

Deterministic by event time. Readings are partitioned by (source, device) — the source is the
gateway — and each partition is processed strictly in event-time order: arrivals wait in a reorder
buffer until the partition's watermark passes them. The watermark is ``max event time seen minus
the allowed lateness`` (the cloud), or a clock the host advances (the edge, ``advance``); either way
a reading is processed only after every reading of its device with an earlier time, and all readings
of one device and instant are applied together (a rule sees the device's other points as of that
instant). So the same rules over the same readings give the same outputs, in whatever order and
batches they arrived, as long as each arrived within the allowed lateness; a later one is counted
and reported (``rules.late``), never silently mixed in.

The engine does no I/O: it returns outputs and reports diagnostics to an ``EventSink``. A rule that
raises while it runs is disabled with a ``rule.disabled`` event; the others go on.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Reading, WireError

from .alerts import Tracker, alert_id
from .compiler import CompiledRule, CompiledSet
from .document import DeriveAction
from .exprs import Ctx, UnitSkip
from .windows import BudgetExceeded, Emit, Key, WindowState

log = logging.getLogger(__name__)

QUALITY_ORDER = "NSMCTBFD"  # for derived readings: the first input flag that is not N wins


@dataclass(frozen=True, slots=True)
class Row:
    rule: str
    version: int
    ts_ms: int
    source: str
    device: str
    point: str | None
    subject: str
    values: dict[str, Any]
    evidence: tuple[Reading, ...]
    window: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class AlertChange:
    kind: str  # raised | cleared
    alert_id: str
    rule: str
    version: int
    severity: str
    source: str
    device: str
    point: str | None
    subject: str
    ts_ms: int
    since_ms: int
    values: dict[str, Any]
    evidence: tuple[Reading, ...]
    silenced_by: str | None = None

    def body(self) -> dict[str, Any]:
        """The event body of ``alert.raised`` / ``alert.cleared`` (docs/rules.md, "Events")."""
        return {"alert": self.alert_id, "rule": self.rule, "version": self.version, "subject": self.subject,
                "since": self.since_ms, "values": _json_values(self.values),
                "evidence": [r.to_wire() for r in self.evidence], "silenced_by": self.silenced_by}


@dataclass(frozen=True, slots=True)
class Derived:
    reading: Reading
    rule: str
    version: int


@dataclass(frozen=True, slots=True)
class Notify:
    """One call of a notifying action (republish, webhook, e-mail) with its JSON payload."""

    rule: str
    action_index: int
    kind: str  # row | raised | cleared
    subject: str
    ts_ms: int
    payload: dict[str, Any]


Output = Row | AlertChange | Derived | Notify


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in values.items()}


class _NullSink:
    def emit(self, kind: str, *, ts_ms: int, severity: str = "info", device: str | None = None,
             point: str | None = None, body: dict[str, Any] | None = None) -> None:
        pass


class Partition:
    __slots__ = ("ctx", "device", "done", "heap", "latest", "max_ts", "pending", "source", "states", "trackers")

    def __init__(self, source: str, device: str) -> None:
        self.source = source
        self.device = device
        self.pending: dict[int, dict[str, Reading]] = {}
        self.heap: list[int] = []
        self.max_ts = -1
        self.done = -1  # every reading at or before this time was processed; later arrivals there are late
        self.latest: dict[str, Reading] = {}
        self.states: dict[str, WindowState] = {}  # rule hash -> window state
        self.trackers: dict[tuple[str, Key], Tracker] = {}  # (rule hash, group key) -> alert detector
        self.ctx = Ctx()


@dataclass
class Counters:
    readings: int = 0
    late: int = 0
    invalid: int = 0
    forced: int = 0
    disabled: dict[str, str] = field(default_factory=dict)


class Engine:
    def __init__(self, rules: CompiledSet, *, source: str = "", lateness_ms: int = 0,
                 sink: EventSink | None = None, tags: Mapping[str, Mapping[str, str]] | None = None,
                 max_pending: int = 200_000) -> None:
        self.source = source
        self.lateness_ms = lateness_ms
        self.sink: EventSink = sink or _NullSink()
        self.tags = tags or {}
        self.max_pending = max_pending
        self.partitions: dict[tuple[str, str], Partition] = {}
        self.pending = 0
        self.counters = Counters()
        self._skips: dict[tuple[str, str], int] = {}
        self._derivations: set[tuple[str, str, str, str]] = set()
        self.load(rules)

    # --- rule sets ------------------------------------------------------------------------

    def load(self, rules: CompiledSet) -> None:
        """Switch to another compiled set; state of rules whose document did not change is kept."""
        self.rules = rules
        self.by_id = {r.id: r for r in rules.rules}
        self.by_hash = {r.hash: r for r in rules.rules}
        self.active: list[CompiledRule] = [r for r in rules.rules if r.id not in self.counters.disabled]
        self.counters.disabled = {k: v for k, v in self.counters.disabled.items() if k in self.by_id}
        self._routes: dict[tuple[str, str], tuple[CompiledRule, ...]] = {}
        self._needs_latest = any(r.refs for r in self.active)
        hashes = {r.hash for r in self.active}
        for p in self.partitions.values():
            p.states = {h: s for h, s in p.states.items() if h in hashes}
            p.trackers = {k: t for k, t in p.trackers.items() if k[0] in hashes}

    def _route(self, device: str, point: str) -> tuple[CompiledRule, ...]:
        key = (device, point)
        rules = self._routes.get(key)
        if rules is None:
            tags = self.tags.get(device, {})
            rules = tuple(r for r in self.active if r.matcher(device, point, tags))
            if len(self._routes) >= 100_000:
                self._routes.clear()
            self._routes[key] = rules
        return rules

    def disable(self, rule: CompiledRule, reason: str, r: Reading | None = None) -> None:
        if rule.id in self.counters.disabled:
            return
        self.counters.disabled[rule.id] = reason
        self.active = [x for x in self.active if x.id != rule.id]
        self._routes.clear()
        log.error("rule %s v%d disabled: %s", rule.id, rule.version, reason)
        self.sink.emit("rule.disabled", ts_ms=r.ts_ms if r else 0, severity="warning",
                       device=r.device if r else None, point=r.point if r else None,
                       body={"rule": rule.id, "version": rule.version, "hash": rule.hash, "error": reason[:500]})

    # --- input ----------------------------------------------------------------------------

    def feed(self, readings: Iterable[Reading], source: str | None = None) -> list[Output]:
        """Buffer readings and process every one the watermark has passed."""
        src = self.source if source is None else source
        out: list[Output] = []
        touched: dict[tuple[str, str], Partition] = {}
        parts = self.partitions
        for r in readings:
            pk = (src, r.device)
            p = parts.get(pk)
            if p is None:
                p = parts[pk] = Partition(src, r.device)
            v = r.value
            if type(v) is not float or v != v or v in (math.inf, -math.inf):
                if not (isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)):
                    self.counters.invalid += 1
                    self._skip(None, "reading value is not a finite number", r)
                    continue
            ts = r.ts_ms
            if ts <= p.done:
                self.counters.late += 1
                self._late(p, r)
                continue
            group = p.pending.get(ts)
            if group is None:
                group = p.pending[ts] = {}
                heapq.heappush(p.heap, ts)
            prior = group.get(r.point)
            if prior is None:
                self.pending += 1
            elif prior != r:  # the same reading twice with other content: keep one, whatever the order
                r = min(prior, r, key=lambda x: (x.value, x.unit, x.quality.value))
            group[r.point] = r
            if ts > p.max_ts:
                p.max_ts = ts
            touched[pk] = p
            if self.pending > self.max_pending:
                self.counters.forced += 1
                self._release(p, p.heap[0], out)
                self._skip(None, f"reorder buffer over {self.max_pending:,} readings: released early", r)
        for p in touched.values():
            upto = p.max_ts - self.lateness_ms - 1
            if upto > p.done:
                self._release(p, upto, out)
        return out

    def advance(self, watermark_ms: int) -> list[Output]:
        """The edge's clock: everything at or before ``watermark_ms`` is complete, in every partition."""
        out: list[Output] = []
        for p in list(self.partitions.values()):
            if watermark_ms > p.done:
                self._release(p, watermark_ms, out)
        return out

    def flush(self) -> list[Output]:
        """Process everything buffered and close every open window (shutdown, end of a replay)."""
        out: list[Output] = []
        for p in list(self.partitions.values()):
            if p.heap:
                self._release(p, max(p.heap), out)
            emits: list[Emit] = []
            for h, st in list(p.states.items()):
                rule = self._rule_by_hash(h)
                emits.clear()
                st.close_all(emits)
                if rule is not None:
                    for e in emits:
                        self._window_row(rule, p, e, out)
        return out

    # --- processing -----------------------------------------------------------------------

    def _rule_by_hash(self, h: str) -> CompiledRule | None:
        r = self.by_hash.get(h)
        return r if r is not None and r.id not in self.counters.disabled else None

    def _release(self, p: Partition, upto: int, out: list[Output]) -> None:
        heap = p.heap
        while heap and heap[0] <= upto:
            ts = heapq.heappop(heap)
            group = p.pending.pop(ts)
            self.pending -= len(group)
            self._close_windows(p, ts, out)
            self._process(p, ts, group, out)
        if upto > p.done:
            p.done = upto
        self._close_windows(p, upto + 1, out)

    def _close_windows(self, p: Partition, t: int, out: list[Output]) -> None:
        if not p.states:
            return
        for h, st in p.states.items():
            if st.heap and st.heap[0][0] <= t:
                emits: list[Emit] = []
                st.close_until(t, emits)
                rule = self._rule_by_hash(h)
                if rule is not None:
                    for e in emits:
                        self._window_row(rule, p, e, out)

    def _process(self, p: Partition, ts: int, group: dict[str, Reading], out: list[Output]) -> None:
        self.counters.readings += len(group)
        if self._needs_latest:
            p.latest.update(group)
        points = sorted(group) if len(group) > 1 else group
        for point in points:
            r = group[point]
            for rule in self._route(r.device, point):
                c = p.ctx
                c.r = r
                c.latest = p.latest
                try:
                    if rule.window is None:
                        self._stream(rule, p, r, c, out)
                    else:
                        self._windowed(rule, p, r, c, out)
                except UnitSkip as exc:
                    self._skip(rule, str(exc), r)
                except BudgetExceeded as exc:
                    self.disable(rule, str(exc), r)
                except Exception as exc:  # a rule's bug must not stop the host: disable it, report, go on
                    self.disable(rule, f"{type(exc).__name__}: {exc}", r)
                if c.notes:
                    for note in c.notes:
                        self._skip(rule, note, r)
                    c.notes.clear()

    def _stream(self, rule: CompiledRule, p: Partition, r: Reading, c: Ctx, out: list[Output]) -> None:
        if rule.where is not None and rule.where(c) is not True:
            return
        if rule.star:
            values: dict[str, Any] = {"value": r.value, "unit": r.unit, "quality": r.quality.value}
        else:
            values = {name: fn(c) for name, fn in rule.columns}
        if rule.having is not None and rule.having(c) is not True:
            return
        key = (r.device, r.point) if len(rule.group_keys) == 2 else (r.device,)
        flag = r.quality.value
        if rule.refs and flag == "N":
            for ref in rule.refs:
                o = p.latest.get(ref)
                if o is not None and o.quality.value != "N":
                    flag = o.quality.value
                    break
        self._row(rule, p, key, r.ts_ms, values, (r,), None, flag, c, out)

    def _windowed(self, rule: CompiledRule, p: Partition, r: Reading, c: Ctx, out: list[Output]) -> None:
        if rule.where is not None and rule.where(c) is not True:
            return
        st = p.states.get(rule.hash)
        if st is None:
            w = rule.window
            assert w is not None
            st = p.states[rule.hash] = WindowState(w.kind, w.size, w.step, rule.aggs, rule.max_entries or 1 << 62,
                                                   rule.max_groups)
        vals = tuple(a.arg(c) if a.arg is not None else None for a in rule.aggs)
        key = (r.device, r.point) if len(rule.group_keys) == 2 else (r.device,)
        e = st.add(key, r, vals)
        if e is not None:
            self._window_row(rule, p, e, out)

    def _window_row(self, rule: CompiledRule, p: Partition, e: Emit, out: list[Output]) -> None:
        c = p.ctx
        c.r = None
        c.aggs = e.values
        c.key = e.key
        c.row = {"window_start": e.start, "window_end": e.end}
        try:
            values = {name: fn(c) for name, fn in rule.columns}
            if rule.having is None or rule.having(c) is True:
                self._row(rule, p, e.key, e.ts, values, (e.last,), (e.start, e.end), e.flag, c, out)
        except Exception as exc:
            self.disable(rule, f"{type(exc).__name__}: {exc}", e.last)
        if c.notes:
            for note in c.notes:
                self._skip(rule, note, e.last)
            c.notes.clear()

    def _row(self, rule: CompiledRule, p: Partition, key: Key, ts: int, values: dict[str, Any],
             evidence: tuple[Reading, ...], window: tuple[int, int] | None, flag: str, c: Ctx,
             out: list[Output]) -> None:
        subject = "/".join((p.source, *key)) if p.source else "/".join(key)
        point = key[1] if len(key) == 2 else None
        row = Row(rule.id, rule.version, ts, p.source, p.device, point, subject, values, evidence, window)
        out.append(row)
        for spec in rule.derives:
            v = values.get(spec.column)
            if v is None or not isinstance(v, float | int) or isinstance(v, bool):
                c.notes.append(f"derive {spec.point}: column {spec.column} is NULL")
                continue
            try:
                reading = Reading.make(p.device, spec.point, ts, v * spec.scale + spec.offset, spec.unit, flag)
            except WireError as exc:
                c.notes.append(f"derive {spec.point}: {exc}")
                continue
            self._derivation(rule, p, spec.point, spec.unit, ts)
            out.append(Derived(reading, rule.id, rule.version))
        doc = rule.doc
        if rule.raise_when is None:
            if self.rules.doc.silenced(rule.id, subject, ts) is None:
                self._notify(rule, "row", subject, ts, _row_payload(row), out)
            return
        tk = (rule.hash, key)
        tracker = p.trackers.get(tk)
        if tracker is None:
            tracker = p.trackers[tk] = Tracker()
        raise_v = rule.raise_when(c)
        if rule.clear_when is not None:
            clear_v = rule.clear_when(c)
        else:
            clear_v = None if raise_v is None else not raise_v
        change = tracker.step(ts, raise_v, clear_v, rule.raise_for_ms, rule.clear_for_ms, evidence)
        if change is None:
            return
        silence = self.rules.doc.silenced(rule.id, subject, ts)
        ac = AlertChange(change, alert_id(rule.id, subject, tracker.since), rule.id, rule.version,
                         doc.severity.value, p.source, p.device, point, subject, ts, tracker.since, values,
                         tracker.evidence_readings() if change == "raised" else evidence,
                         silence.id if silence else None)
        out.append(ac)
        if silence is None and change in doc.notify_on:
            self._notify(rule, change, subject, ts, _alert_payload(ac), out)

    def _notify(self, rule: CompiledRule, kind: str, subject: str, ts: int, payload: dict[str, Any],
                out: list[Output]) -> None:
        for i, action in enumerate(rule.doc.actions):
            if not isinstance(action, DeriveAction):
                out.append(Notify(rule.id, i, kind, subject, ts, payload))

    # --- diagnostics ------------------------------------------------------------------------

    def _derivation(self, rule: CompiledRule, p: Partition, point: str, unit: str, ts: int) -> None:
        k = (rule.hash, p.source, p.device, point)
        if k in self._derivations:
            return
        if len(self._derivations) > 100_000:
            self._derivations.clear()
        self._derivations.add(k)
        self.sink.emit("rule.derivation", ts_ms=ts, device=p.device, point=point,
                       body={"rule": rule.id, "version": rule.version, "hash": rule.hash, "unit": unit,
                             "text": rule.doc.text[:2000], "inputs": sorted(rule.refs), "from": ts})

    def _skip(self, rule: CompiledRule | None, reason: str, r: Reading) -> None:
        """Report a skipped evaluation: the first time, then at 10, 100, 1000 ... occurrences."""
        k = (rule.id if rule else "", reason)
        n = self._skips.get(k, 0) + 1
        if len(self._skips) < 10_000 or k in self._skips:
            self._skips[k] = n
        if n == 1 or math.log10(n).is_integer():
            body = {"reason": reason[:300], "count": n}
            if rule is not None:
                body |= {"rule": rule.id, "version": rule.version}
            self.sink.emit("rule.skipped", ts_ms=r.ts_ms, device=r.device, point=r.point, body=body)

    def _late(self, p: Partition, r: Reading) -> None:
        k = ("", f"late:{p.source}/{p.device}")
        n = self._skips.get(k, 0) + 1
        self._skips[k] = n
        if n == 1 or math.log10(n).is_integer():
            self.sink.emit("rules.late", ts_ms=r.ts_ms, severity="warning", device=r.device, point=r.point,
                           body={"source": p.source, "count": n, "processed_until": p.done,
                                 "lateness_ms": self.lateness_ms})


def _row_payload(row: Row) -> dict[str, Any]:
    return {"kind": "row", "rule": row.rule, "version": row.version, "ts": row.ts_ms, "subject": row.subject,
            "device": row.device, "point": row.point, "values": _json_values(row.values),
            "window": list(row.window) if row.window else None,
            "evidence": [r.to_wire() for r in row.evidence]}


def _alert_payload(ac: AlertChange) -> dict[str, Any]:
    return {"kind": f"alert.{ac.kind}", "severity": ac.severity, "ts": ac.ts_ms, "device": ac.device,
            "point": ac.point, **ac.body()}
