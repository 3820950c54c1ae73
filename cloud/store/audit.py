"""What the cloud refused and what happened at the edge: dead letters, gateway events, the audit log."""

from __future__ import annotations

import json
from typing import Any

from .db import Database
from .registry import IN_TENANT


class Audit:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- dead letters: refused input, kept with the reason and the raw bytes --------------------------

    async def dead_letter(self, topic: str, raw: bytes, reason: str, gateway: str | None, received_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO dead_letters(received_ms, topic, gateway, reason, payload) VALUES (?,?,?,?,?)",
            received_ms, topic, gateway, reason, raw)

    async def dead_letters(self, limit: int = 100, tenant: str | None = None,
                           before_id: int | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append(IN_TENANT)
            args.append(tenant)
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        rows = await self.db.fetch(
            "SELECT id, received_ms, topic, gateway, reason, resolved_ms, resolution, payload FROM dead_letters"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?", *args, limit)
        for r in rows:
            payload = bytes(r.pop("payload"))
            r["size"] = len(payload)
            r["payload_preview"] = payload[:256].decode("utf-8", "replace")
        return rows

    async def dead_letter_raw(self, letter_id: int) -> tuple[str, bytes, int | None] | None:
        """(topic, raw bytes, resolved_ms) of one dead letter."""
        row = await self.db.fetchrow("SELECT topic, payload, resolved_ms FROM dead_letters WHERE id = ?", letter_id)
        return (str(row["topic"]), bytes(row["payload"]), row["resolved_ms"]) if row else None

    async def resolve_dead_letter(self, letter_id: int, resolution: str, ts_ms: int) -> None:
        await self.db.execute("UPDATE dead_letters SET resolved_ms = ?, resolution = ? WHERE id = ?",
                              ts_ms, resolution, letter_id)

    async def unresolved_dead_letters(self, limit: int = 1000) -> list[int]:
        rows = await self.db.fetch("SELECT id FROM dead_letters WHERE resolved_ms IS NULL ORDER BY id LIMIT ?", limit)
        return [int(r["id"]) for r in rows]

    # --- events from gateways (alerts, anomalies, quarantine, outbox resets), stored once ------------

    async def add_event(self, gateway: str, event_id: str, kind: str, severity: str, ts_ms: int, received_ms: int,
                        device: str | None, point: str | None, body: dict[str, Any], raw: bytes) -> bool:
        """Store one event; False when (gateway, id) was stored before (a redelivery)."""
        return await self.db.execute(
            "INSERT INTO events(gateway, id, kind, severity, ts_ms, received_ms, device, point, body, raw)"
            " VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
            gateway, event_id, kind, severity, ts_ms, received_ms, device, point,
            json.dumps(body, sort_keys=True, separators=(",", ":")), raw) == 1

    async def events(self, *, tenant: str | None = None, gateway: str | None = None, kind: str | None = None,
                     start_ms: int | None = None, end_ms: int | None = None, limit: int = 100
                     ) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        for cond, val in ((IN_TENANT, tenant), ("gateway = ?", gateway), ("ts_ms >= ?", start_ms),
                          ("ts_ms < ?", end_ms)):
            if val is not None:
                where.append(cond)
                args.append(val)
        if kind is not None:  # "alert" selects alert.raised, alert.cleared, ...
            where.append("(kind = ? OR kind LIKE ?)")
            args += [kind, kind + ".%"]
        rows = await self.db.fetch(
            "SELECT gateway, id, kind, severity, ts_ms, received_ms, device, point, body FROM events"
            + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY ts_ms DESC, id LIMIT ?", *args, limit)
        for r in rows:
            r["body"] = json.loads(r["body"])
        return rows

    # --- the audit log: who did what to an identity, a key or a setting -------------------------------

    async def record(self, actor: str, action: str, *, tenant: str | None = None, subject: str | None = None,
                     detail: dict[str, Any] | None = None, ts_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO audit_log(ts_ms, actor, tenant, action, subject, detail) VALUES (?,?,?,?,?,?)",
            ts_ms, actor, tenant, action, subject, json.dumps(detail or {}, sort_keys=True))

    async def log(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = (" WHERE tenant = ?", [tenant]) if tenant is not None else ("", [])
        rows = await self.db.fetch("SELECT id, ts_ms, actor, tenant, action, subject, detail FROM audit_log"
                                   + where + " ORDER BY id DESC LIMIT ?", *args, limit)
        for r in rows:
            r["detail"] = json.loads(r["detail"])
        return rows
