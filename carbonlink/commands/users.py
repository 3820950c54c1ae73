"""`carbonlink cloud user …` and `carbonlink cloud key …`: API users and keys, on the cloud's host.

This is how the first admin comes to be (the API itself needs an admin to add users): run on the
host, against the storage URL, with no API involved.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from carbonlink.cloud.provisioning import ReKeyResult

from carbonlink.cloud.store import ROLES
from carbonlink.commands.common import DEFAULT_DB, err, fail, table, with_store
from carbonlink.kernel.ids import ID_RE

user_app = typer.Typer(help="API users: username, password, role in one tenant.", no_args_is_help=True)
key_app = typer.Typer(help="API keys: for scripts and scrapers; shown once.", no_args_is_help=True)
gateway_app = typer.Typer(help="Operator actions on a gateway's identity, on the cloud's host; audited.",
                          no_args_is_help=True)
T = TypeVar("T")
_ID = ID_RE

Db = Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL: sqlite:///PATH or postgresql://...")]
Tenant = Annotated[str, typer.Option(help="tenant id (made if new)")]
Json = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
RoleOpt = Annotated[str, typer.Option(help=f"one of {', '.join(ROLES)} (see cloud/auth.py)")]


def _check(tenant: str, role: str | None = None) -> None:
    if not _ID.fullmatch(tenant):
        raise fail(f"--tenant {tenant!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if role is not None and role not in ROLES:
        raise fail(f"--role {role!r} is not a role; use one of {', '.join(ROLES)}")


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Option(help="login name")],
    tenant: Tenant,
    role: RoleOpt = "admin",
    password: Annotated[str | None, typer.Option(envvar="CARBONLINK_PASSWORD", help="asked for when not given")
                        ] = None,
    db: Db = DEFAULT_DB,
    json_out: Json = False,
) -> None:
    """Add a user (the first admin of a tenant, for one)."""
    from carbonlink.cloud.auth import create_user

    _check(tenant, role)
    if not _ID.fullmatch(username):
        raise fail(f"--username {username!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 12:
        raise fail("the password must have at least 12 characters")
    if not with_store(db, lambda s: create_user(s, username, tenant, role, password)):
        raise fail(f"tenant {tenant!r} already has a user {username!r}; choose another name or"
                   " `carbonlink cloud user remove` it first")
    if json_out:
        print(json.dumps({"username": username, "tenant": tenant, "role": role}))
    else:
        err.print(f"[green]added[/] {username} ({role} of {tenant}); log in as {username}@{tenant} on the dashboard"
                  " or with POST /api/auth/token")


@user_app.command("list")
def user_list(tenant: Tenant, db: Db = DEFAULT_DB, json_out: Json = False) -> None:
    """The tenant's users."""
    _check(tenant)
    rows = with_store(db, lambda s: s.access.list_users(tenant))
    if json_out:
        print(json.dumps(rows))
    else:
        table(rows, ["username", "role", "created_ms"], f"users of {tenant}")


@user_app.command("remove")
def user_remove(username: Annotated[str, typer.Option()], tenant: Tenant, db: Db = DEFAULT_DB) -> None:
    """Remove a user; their login tokens stop working at once."""
    _check(tenant)
    if not with_store(db, lambda s: s.access.delete_user(tenant, username)):
        raise fail(f"no user {username!r} in tenant {tenant!r}; see `carbonlink cloud user list`")
    err.print(f"removed {username}")


@key_app.command("create")
def key_create(
    tenant: Tenant,
    role: RoleOpt = "analyst",
    name: Annotated[str, typer.Option(help="what the key is for")] = "api key",
    db: Db = DEFAULT_DB,
    json_out: Json = False,
) -> None:
    """Make an API key and print it once; only its hash is kept."""
    from carbonlink.cloud.auth import create_api_key

    _check(tenant, role)
    key_id, key = with_store(db, lambda s: create_api_key(s, tenant, role, name))
    if json_out:
        print(json.dumps({"id": key_id, "key": key, "tenant": tenant, "role": role, "name": name}))
    else:
        err.print(f"API key {key_id} ({role} of {tenant}); shown this once, store it now:")
        print(key)
        err.print("use it as `Authorization: Bearer <key>` or `X-API-Key: <key>`")


@key_app.command("list")
def key_list(tenant: Tenant, db: Db = DEFAULT_DB, json_out: Json = False) -> None:
    """The tenant's API keys (ids, roles and names; never the keys)."""
    _check(tenant)
    rows = with_store(db, lambda s: s.access.list_api_keys(tenant))
    if json_out:
        print(json.dumps(rows))
    else:
        table(rows, ["id", "role", "name", "created_ms", "revoked_ms"], f"API keys of {tenant}")


@key_app.command("revoke")
def key_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (clk_<id>_...)")], tenant: Tenant,
               db: Db = DEFAULT_DB) -> None:
    """Revoke an API key; it stops working at once."""
    _check(tenant)
    key_id = key_id.removeprefix("clk_").split("_")[0]
    if not with_store(db, lambda s: s.access.revoke_api_key(tenant, key_id, int(time.time() * 1000))):
        raise fail(f"no active key {key_id!r} in tenant {tenant!r}; see `carbonlink cloud key list`")
    err.print(f"revoked {key_id}")


@gateway_app.command("re-key")
def gateway_re_key(
    gateway: Annotated[str, typer.Argument(help="the gateway id")],
    key: Annotated[str, typer.Option(help="the new Ed25519 public key (or a node's HMAC secret), hex")],
    reason: Annotated[str, typer.Option(help="why; kept in the audit log")],
    alg: Annotated[str, typer.Option(help="ed25519 or hmac-sha256")] = "ed25519",
    db: Db = DEFAULT_DB,
    json_out: Json = False,
) -> None:
    """Replace a gateway's key and broker password when its own key is lost or stolen.

    A gateway that still has its key rotates it itself (POST /api/gateways/ID/rotate-key, signed by the
    old key). This is the operator's way: the old key stops at once, the new broker password is shown
    once, and the audit log records who did it and why.
    """
    import getpass
    import socket

    from carbonlink.cloud.provisioning import re_key
    from carbonlink.cloud.secretbox import SecretKeyError
    from carbonlink.cloud.settings import CloudSettings
    from carbonlink.cloud.store import ClaimError, Store

    actor = f"cli:{getpass.getuser()}@{socket.gethostname()}"

    async def go(s: Store) -> ReKeyResult:
        # The same key ring as the cloud: a node's new secret is sealed, never stored in plain text.
        settings = CloudSettings()
        await s.registry.use_secrets(settings.secret_box(), plain_allowed=settings.environment == "development")
        return await re_key(s, gateway, alg, key, actor=actor, reason=reason)

    try:
        res = with_store(db, go)
    except (ClaimError, SecretKeyError) as exc:
        raise fail(str(exc)) from None
    if json_out:
        print(json.dumps({"gateway": res.gateway, "site": res.site, "alg": alg,
                          "mqtt": {"username": res.mqtt_username, "password": res.mqtt_password}}))
    else:
        err.print(f"[green]re-keyed[/] {gateway} (audited as {actor}); its old key no longer verifies."
                  " New broker password, shown this once:")
        print(res.mqtt_password)
        err.print("regenerate the broker files (`carbonlink provision broker-files`) and reload the broker")
