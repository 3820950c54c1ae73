"""Device shadows (one compare-and-set document per gateway) and cloud-to-gateway commands."""

from __future__ import annotations

import json
from typing import Any

from .db import Database


class Control:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_shadow(self, gateway: str) -> tuple[int, dict[str, Any]] | None:
        row = await self.db.fetchrow("SELECT version, doc FROM shadows WHERE gateway = ?", gateway)
        return (int(row["version"]), json.loads(row["doc"])) if row else None

    async def put_shadow(self, gateway: str, expected_version: int, doc: dict[str, Any], updated_ms: int) -> bool:
        """Compare-and-set: writes version expected+1 only if the stored version is still ``expected``."""
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True, allow_nan=False)
        if expected_version == 0:
            return await self.db.execute(
                "INSERT INTO shadows(gateway, version, doc, updated_ms) VALUES (?, 1, ?, ?) ON CONFLICT DO NOTHING",
                gateway, text, updated_ms) == 1
        return await self.db.execute(
            "UPDATE shadows SET version = version + 1, doc = ?, updated_ms = ? WHERE gateway = ? AND version = ?",
            text, updated_ms, gateway, expected_version) == 1

    async def add_command(self, command_id: str, gateway: str, name: str, args: dict[str, Any],
                          created_ms: int, deadline_ms: int) -> None:
        await self.db.execute(
            "INSERT INTO commands(id, gateway, name, args, status, created_ms, deadline_ms)"
            " VALUES (?,?,?,?,'pending',?,?)", command_id, gateway, name, json.dumps(args), created_ms, deadline_ms)

    async def finish_command(self, command_id: str, status: str, result: dict[str, Any] | None,
                             done_ms: int) -> bool:
        """Record a command's end once; a late result after a timeout is kept but does not change status."""
        text = json.dumps(result) if result is not None else None
        if await self.db.execute(
                "UPDATE commands SET status = ?, result = ?, done_ms = ? WHERE id = ? AND status = 'pending'",
                status, text, done_ms, command_id) == 1:
            return True
        await self.db.execute("UPDATE commands SET result = coalesce(result, ?) WHERE id = ? AND status = 'timeout'",
                              text, command_id)
        return False

    async def get_command(self, command_id: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT * FROM commands WHERE id = ?", command_id)
        return _command_row(row) if row else None

    async def list_commands(self, gateway: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = await self.db.fetch("SELECT * FROM commands WHERE gateway = ? ORDER BY created_ms DESC LIMIT ?",
                                   gateway, limit)
        return [_command_row(r) for r in rows]


def _command_row(r: dict[str, Any]) -> dict[str, Any]:
    r["args"] = json.loads(r["args"])
    r["result"] = json.loads(r["result"]) if r["result"] is not None else None
    return r
