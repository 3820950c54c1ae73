"""Alerts with their lifecycle (raised -> acknowledged -> cleared), one row per alert id and tenant.

An alert's id comes from its rule, subject and the time its condition first held, so a gateway's
``alert.raised`` and the cloud's own evaluation of the same readings name the same alert and merge
into one row (``sources`` says who reported it). Merging uses the pure functions of
``carbonlink.rules.alerts`` inside one transaction with the row locked, so it is idempotent and
order-independent: an alert raised offline that reaches the cloud hours later keeps its times, and a
clear that arrives before its raise is kept. A raise while another alert of the same rule and subject
is still open is recorded with ``duplicate_of`` naming the open one (lists leave those out by default).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from carbonlink.rules.alerts import Alert, State, acknowledge, clear, merge_cleared, merge_raised

from .db import Conn, Database
from .rules_model import AlertQuery, AlertRecord, dumps

_COLS = ("tenant, id, rule, subject, gateway, device, point, version, severity, state, ts_ms, raised_ms, since_ms,"
         " cleared_ms, cleared_by, acked_ms, acked_by, silenced_by, note, values_json, evidence, sources,"
         " duplicate_of, updated_ms")


@dataclass(frozen=True)
class AlertChange:
    """What a gateway event or the cloud's evaluation says about an alert."""

    kind: str  # "raised" | "cleared"
    id: str
    rule: str
    subject: str
    gateway: str
    ts_ms: int  # when it was raised / cleared
    since_ms: int
    version: int = 0
    severity: str = "warning"
    device: str | None = None
    point: str | None = None
    values: dict[str, Any] | None = None
    evidence: tuple[dict[str, Any], ...] = ()
    silenced_by: str | None = None


def _record(row: dict[str, Any]) -> AlertRecord:
    a = Alert(row["id"], row["rule"], row["subject"], int(row["version"]), row["severity"], row["gateway"],
              row["device"], row["point"], row["raised_ms"], row["since_ms"], row["cleared_ms"], row["cleared_by"],
              row["acked_ms"], row["acked_by"], row["silenced_by"], json.loads(row["values_json"]),
              tuple(json.loads(row["evidence"])))
    sources = tuple(s for s in row["sources"].split(",") if s)
    return AlertRecord(row["tenant"], a, sources, row["duplicate_of"], row["note"], int(row["updated_ms"]))


class Alerts:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _lock(self) -> str:
        return " FOR UPDATE" if self.db.dialect == "postgresql" else ""  # SQLite: one writer at a time anyway

    async def _load(self, tx: Conn, tenant: str, alert_id: str) -> AlertRecord | None:
        row = await tx.fetchrow(f"SELECT {_COLS} FROM alerts WHERE tenant = ? AND id = ?" + self._lock(),
                                tenant, alert_id)
        return _record(row) if row else None

    async def _save(self, tx: Conn, rec: AlertRecord, exists: bool) -> None:
        a = rec.alert
        values = (a.rule, a.subject, a.gateway, a.device, a.point, a.version, a.severity, a.state.value, rec.ts_ms,
                  a.raised_ms, a.since_ms, a.cleared_ms, a.cleared_by, a.acked_ms, a.acked_by, a.silenced_by,
                  rec.note, dumps(a.values), dumps(list(a.evidence)), ",".join(rec.sources), rec.duplicate_of,
                  rec.updated_ms)
        if exists:
            await tx.execute(
                "UPDATE alerts SET rule = ?, subject = ?, gateway = ?, device = ?, point = ?, version = ?,"
                " severity = ?, state = ?, ts_ms = ?, raised_ms = ?, since_ms = ?, cleared_ms = ?, cleared_by = ?,"
                " acked_ms = ?, acked_by = ?, silenced_by = ?, note = ?, values_json = ?, evidence = ?, sources = ?,"
                " duplicate_of = ?, updated_ms = ? WHERE tenant = ? AND id = ?", *values, rec.tenant, a.id)
        else:
            await tx.execute(f"INSERT INTO alerts({_COLS}) VALUES ({','.join('?' * 24)})", rec.tenant, a.id, *values)

    async def merge(self, tenant: str, change: AlertChange, source: str, now: int) -> tuple[AlertRecord, bool]:
        """Record a raise or clear; returns the alert and whether anything changed (False for a redelivery).

        A gateway may only speak of its own alerts: a change for an id that another gateway raised is
        refused with ``PermissionError``.
        """
        for attempt in range(3):
            try:
                async with self.db.transaction() as tx:
                    return await self._merge(tx, tenant, change, source, now)
            except Exception as exc:
                # Two writers inserting the same new alert: the second one merges into the first's row.
                if attempt < 2 and type(exc).__name__ in ("UniqueViolationError", "IntegrityError"):
                    continue
                raise
        raise RuntimeError("unreachable")  # pragma: no cover

    async def _merge(self, tx: Conn, tenant: str, c: AlertChange, source: str, now: int) -> tuple[AlertRecord, bool]:
        old = await self._load(tx, tenant, c.id)
        if old is not None and old.alert.gateway and old.alert.gateway != c.gateway:
            raise PermissionError(f"alert {c.id} belongs to gateway {old.alert.gateway!r}, not {c.gateway!r}")
        existing = old.alert if old is not None else None
        if c.kind == "raised":
            incoming = Alert(c.id, c.rule, c.subject, c.version, c.severity, c.gateway, c.device, c.point,
                             raised_ms=c.ts_ms, since_ms=c.since_ms, silenced_by=c.silenced_by,
                             values=dict(c.values or {}), evidence=c.evidence)
            merged = merge_raised(existing, incoming)
        else:
            merged = merge_cleared(existing, c.id, c.rule, c.subject, c.ts_ms)
            fill: dict[str, Any] = {}
            if merged.raised_ms is None:  # only the clear is known: take what it says about the alert
                fill = {"version": c.version, "severity": c.severity, "gateway": c.gateway, "device": c.device,
                        "point": c.point, "since_ms": c.since_ms, "values": dict(c.values or {})}
            if c.silenced_by and not merged.silenced_by:
                fill["silenced_by"] = c.silenced_by
            merged = replace(merged, **fill)
        sources = tuple(sorted({*(old.sources if old else ()), source}))
        duplicate_of = old.duplicate_of if old else None
        if old is None and c.kind == "raised":
            duplicate_of = await tx.fetchval(
                "SELECT id FROM alerts WHERE tenant = ? AND rule = ? AND subject = ? AND state != ? AND id != ?"
                " AND duplicate_of IS NULL ORDER BY ts_ms LIMIT 1", tenant, c.rule, c.subject, State.CLEARED.value,
                c.id)
        if old is not None and old.alert == merged and old.sources == sources:
            return old, False
        rec = AlertRecord(tenant, merged, sources, duplicate_of, old.note if old else "", now)
        await self._save(tx, rec, old is not None)
        return rec, True

    async def acknowledge(self, tenant: str, alert_id: str, *, by: str, now: int, note: str = "") -> AlertRecord | None:
        """An operator acknowledges; ``LifecycleError`` when it is cleared or acknowledged already."""
        return await self._operate(tenant, alert_id, by, now, note, acknowledge)

    async def clear(self, tenant: str, alert_id: str, *, by: str, now: int, note: str = "") -> AlertRecord | None:
        """An operator clears by hand; ``LifecycleError`` when it is cleared already."""
        return await self._operate(tenant, alert_id, by, now, note, clear)

    async def _operate(self, tenant: str, alert_id: str, by: str, now: int, note: str, op: Any) -> AlertRecord | None:
        async with self.db.transaction() as tx:
            old = await self._load(tx, tenant, alert_id)
            if old is None:
                return None
            rec = replace(old, alert=op(old.alert, by, now), note=note or old.note, updated_ms=now)
            await self._save(tx, rec, True)
            return rec

    async def get(self, tenant: str, alert_id: str) -> AlertRecord | None:
        row = await self.db.fetchrow(f"SELECT {_COLS} FROM alerts WHERE tenant = ? AND id = ?", tenant, alert_id)
        return _record(row) if row else None

    # --- lists and counts for the API and the console ----------------------------------------------------

    @staticmethod
    def _where(q: AlertQuery, *, with_state: bool = True) -> tuple[list[str], list[Any]]:
        where: list[str] = ["tenant = ?"]
        args: list[Any] = [q.tenant]
        if with_state and q.states:
            where.append(f"state IN ({','.join('?' * len(q.states))})")
            args += list(q.states)
        if q.severities:
            where.append(f"severity IN ({','.join('?' * len(q.severities))})")
            args += list(q.severities)
        for cond, val in (("rule = ?", q.rule), ("gateway = ?", q.gateway), ("device = ?", q.device),
                          ("ts_ms >= ?", q.start_ms), ("ts_ms < ?", q.end_ms)):
            if val is not None:
                where.append(cond)
                args.append(val)
        if q.subject:
            p = q.subject.rstrip("/")
            where.append("(subject = ? OR substr(subject, 1, ?) = ?)")
            args += [p, len(p) + 1, p + "/"]
        if q.silenced is not None:
            where.append("silenced_by IS NOT NULL" if q.silenced else "silenced_by IS NULL")
        if not q.duplicates:
            where.append("duplicate_of IS NULL")
        return where, args

    async def list(self, q: AlertQuery) -> list[AlertRecord]:
        """Newest first (by the time the condition first held), keyset-paged on (ts_ms, id)."""
        where, args = self._where(q)
        if q.after is not None:
            where.append("(ts_ms < ? OR (ts_ms = ? AND id < ?))")
            args += [q.after[0], q.after[0], q.after[1]]
        rows = await self.db.fetch(f"SELECT {_COLS} FROM alerts WHERE " + " AND ".join(where)
                                   + " ORDER BY ts_ms DESC, id DESC LIMIT ?", *args, q.limit)
        return [_record(r) for r in rows]

    async def counts(self, q: AlertQuery) -> dict[str, Any]:
        """Counts under the same filters, whatever the state filter: by state, and open ones by severity."""
        where, args = self._where(q, with_state=False)
        rows = await self.db.fetch("SELECT state, severity, count(*) AS n FROM alerts WHERE " + " AND ".join(where)
                                   + " GROUP BY state, severity", *args)
        by_state = {s.value: 0 for s in State}
        open_by_severity = {"critical": 0, "warning": 0, "info": 0}
        for r in rows:
            by_state[r["state"]] = by_state.get(r["state"], 0) + int(r["n"])
            if r["state"] != State.CLEARED.value:
                open_by_severity[r["severity"]] = open_by_severity.get(r["severity"], 0) + int(r["n"])
        return {"by_state": by_state, "open_by_severity": open_by_severity, "open": sum(open_by_severity.values()),
                "total": sum(by_state.values())}
