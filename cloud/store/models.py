"""Anomaly model files kept by hash per tenant, for gateways to fetch (cloud/model_delivery.py)."""

from __future__ import annotations

from typing import Any

from .db import Database

MAX_MODEL_BYTES = 8 * 1024 * 1024


class Models:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, tenant: str, sha256: str, model_id: str, version: int, onnx: bytes, *, by: str,
                  now: int) -> bool:
        """Keep a verified model file; False when the tenant has it already (same bytes, same hash)."""
        if await self.get(tenant, sha256) is not None:
            return False
        await self.db.execute(
            "INSERT INTO model_blobs (tenant, sha256, model_id, version, onnx, bytes, created_ms, created_by)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant, sha256) DO NOTHING",
            tenant, sha256, model_id, version, onnx, len(onnx), now, by)
        return True

    async def get(self, tenant: str, sha256: str) -> dict[str, Any] | None:
        row = await self.db.fetchrow("SELECT model_id, version, sha256, onnx FROM model_blobs"
                                     " WHERE tenant = ? AND sha256 = ?", tenant, sha256)
        if row is None:
            return None
        return {**row, "onnx": bytes(row["onnx"])}

    async def list(self, tenant: str) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT model_id, version, sha256, bytes, created_ms, created_by FROM model_blobs"
                                   " WHERE tenant = ? ORDER BY model_id, version", tenant)
