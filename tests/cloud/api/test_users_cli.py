"""`carbonlink cloud user|key …` on the host: the first admin, keys shown once, revocation; the API accepts them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from carbonlink.cloud.api import create_app
from carbonlink.cloud.auth import has_credentials
from carbonlink.cloud.settings import CloudSettings
from carbonlink.cloud.store import open_store
from carbonlink.commands.users import key_app, user_app

cli = typer.Typer()
cli.add_typer(user_app, name="user")
cli.add_typer(key_app, name="key")
runner = CliRunner()


async def _me(db: str, headers: dict[str, str], login: dict[str, str] | None = None) -> list[int]:
    store = open_store(db)
    await store.open()
    try:
        app = create_app(store, settings=CloudSettings(environment="development"))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            codes = [(await c.get("/api/auth/me", headers=headers)).status_code]
            if login:
                codes.append((await c.post("/api/auth/token", json=login)).status_code)
            return codes
    finally:
        await store.close()


async def _has(db: str) -> bool:
    store = open_store(db)
    await store.open()
    try:
        return await has_credentials(store)
    finally:
        await store.close()


def test_first_admin_keys_and_revocation(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'cloud.sqlite'}"
    asyncio.run(_me(db, {}))  # makes the schema
    assert asyncio.run(_has(db)) is False
    r = runner.invoke(cli, ["user", "add", "--username", "root", "--tenant", "acme", "--db", db, "--json"],
                      input="a long password\na long password\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"username": "root", "tenant": "acme", "role": "admin"}
    assert asyncio.run(_has(db)) is True
    r = runner.invoke(cli, ["user", "add", "--username", "root", "--tenant", "acme", "--db", db,
                            "--password", "another long one"])
    assert r.exit_code == 2 and "already has a user 'root'" in r.output
    # Usernames are per tenant: another tenant may have its own root.
    r = runner.invoke(cli, ["user", "add", "--username", "root", "--tenant", "other", "--db", db,
                            "--password", "another long one"])
    assert r.exit_code == 0 and "root@other" in r.output, r.output
    r = runner.invoke(cli, ["user", "add", "--username", "x", "--tenant", "acme", "--role", "god", "--db", db,
                            "--password", "another long one"])
    assert r.exit_code == 2 and "not a role" in r.output
    r = runner.invoke(cli, ["user", "add", "--username", "x", "--tenant", "acme", "--db", db, "--password", "short"])
    assert r.exit_code == 2 and "12 characters" in r.output
    r = runner.invoke(cli, ["key", "create", "--tenant", "acme", "--role", "auditor", "--name", "ci", "--db", db,
                            "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    headers = {"X-API-Key": made["key"]}
    assert asyncio.run(_me(db, headers, {"username": "root@acme", "password": "a long password"})) == [200, 200]
    listed = runner.invoke(cli, ["key", "list", "--tenant", "acme", "--db", db, "--json"]).stdout
    assert made["id"] in listed and made["key"] not in listed
    assert runner.invoke(cli, ["key", "revoke", made["key"], "--tenant", "other", "--db", db]).exit_code == 2
    assert runner.invoke(cli, ["key", "revoke", made["id"], "--tenant", "acme", "--db", db]).exit_code == 0
    assert asyncio.run(_me(db, headers)) == [401]
    assert runner.invoke(cli, ["user", "remove", "--username", "root", "--tenant", "acme", "--db", db]).exit_code == 0
    assert "root" not in runner.invoke(cli, ["user", "list", "--tenant", "acme", "--db", db, "--json"]).stdout
    r = runner.invoke(cli, ["key", "list", "--tenant", "acme", "--db", "mysql://x"])
    assert r.exit_code == 2 and "sqlite:///" in r.output
