"""API users and keys (cloud/auth.py): only hashes are stored. A username is unique within its tenant."""

from __future__ import annotations

from typing import Any

from .db import Database


class Access:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_user(self, username: str, tenant: str, role: str, password_hash: str, now: int) -> bool:
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO tenants(id, name, created_ms) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                             tenant, tenant, now)
            return await tx.execute(
                "INSERT INTO api_users(username, tenant, role, password_hash, created_ms) VALUES (?,?,?,?,?)"
                " ON CONFLICT DO NOTHING", username, tenant, role, password_hash, now) == 1

    async def get_user(self, username: str, tenant: str | None = None) -> dict[str, Any] | None:
        """The user ``username`` of ``tenant``; without a tenant, the one user of that name if only one
        tenant has it (logins from before usernames were per tenant), else None."""
        if tenant is not None:
            return await self.db.fetchrow("SELECT * FROM api_users WHERE tenant = ? AND username = ?",
                                          tenant, username)
        rows = await self.db.fetch("SELECT * FROM api_users WHERE username = ? LIMIT 2", username)
        return rows[0] if len(rows) == 1 else None

    async def list_users(self, tenant: str) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT username, tenant, role, created_ms FROM api_users WHERE tenant = ?"
                                   " ORDER BY username", tenant)

    async def delete_user(self, tenant: str, username: str) -> bool:
        return await self.db.execute("DELETE FROM api_users WHERE tenant = ? AND username = ?", tenant, username) == 1

    async def add_api_key(self, key_id: str, tenant: str, role: str, name: str, secret_hash: str, now: int) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("INSERT INTO tenants(id, name, created_ms) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                             tenant, tenant, now)
            await tx.execute(
                "INSERT INTO api_keys(id, tenant, role, name, secret_hash, created_ms) VALUES (?,?,?,?,?,?)",
                key_id, tenant, role, name, secret_hash, now)

    async def get_api_key(self, key_id: str) -> dict[str, Any] | None:
        return await self.db.fetchrow("SELECT * FROM api_keys WHERE id = ?", key_id)

    async def list_api_keys(self, tenant: str) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT id, tenant, role, name, created_ms, revoked_ms FROM api_keys"
                                   " WHERE tenant = ? ORDER BY created_ms, id", tenant)

    async def revoke_api_key(self, tenant: str, key_id: str, now: int) -> bool:
        return await self.db.execute("UPDATE api_keys SET revoked_ms = ? WHERE tenant = ? AND id = ?"
                                     " AND revoked_ms IS NULL", now, tenant, key_id) == 1

    async def has_credentials(self) -> bool:
        """Whether anyone can use the API yet (else the operator must make the first admin on the host)."""
        row = await self.db.fetchrow("SELECT (SELECT count(*) FROM api_users) AS users,"
                                     " (SELECT count(*) FROM api_keys) AS keys")
        return bool(row and (row["users"] or row["keys"]))
