"""`carbonlink cloud …`: serve ingest, storage, API and dashboard; dead letters; users, keys and storage admin."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

import typer
from rich.console import Console

from carbonlink.commands.common import DEFAULT_DB, err, fail, redact_url, run_until_signal
from carbonlink.commands.storage import app as storage_app
from carbonlink.commands.users import gateway_app, key_app, user_app
from carbonlink.kernel.mqtturl import MqttConfigError, MqttUrl
from carbonlink.kernel.ports import port_free

cloud_app = typer.Typer(help="The cloud: ingest, storage, API and dashboard.", no_args_is_help=True)
# migrate, status, gaps, availability, rollups, export-influx sit beside serve under `carbonlink cloud`.
cloud_app.registered_commands.extend(storage_app.registered_commands)
cloud_app.add_typer(user_app, name="user")
cloud_app.add_typer(key_app, name="key")
cloud_app.add_typer(gateway_app, name="gateway")


@cloud_app.command("serve")
def cloud_serve(
    mqtt: Annotated[str | None, typer.Option(help="broker URL; without it an embedded broker is started")] = None,
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL: sqlite:///PATH or postgresql://...")
                  ] = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="HTTP bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8080,
    shared_group: Annotated[str | None, typer.Option(help="MQTT 5 shared-subscription group (Mosquitto)")] = None,
    client_id: Annotated[str, typer.Option(help="MQTT client id (unique per ingest worker)")] = "carbonlink-ingest",
) -> None:
    """Ingest telemetry, store it and serve the API and dashboard."""
    from pydantic import ValidationError

    from carbonlink.cloud.broker import EmbeddedBroker
    from carbonlink.cloud.logs import configure
    from carbonlink.cloud.secretbox import SecretKeyError
    from carbonlink.cloud.service import running_cloud
    from carbonlink.cloud.settings import CloudSettings

    try:
        settings = CloudSettings()
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        err.print(f"[red]cloud settings (CARBONLINK_* environment): {problems}[/]")
        raise typer.Exit(2) from None
    configure("INFO", settings.log_format)
    try:  # credentials and TLS files (CARBONLINK_MQTT_*) are checked before anything starts
        broker = MqttUrl.from_env(mqtt) if mqtt is not None else None
    except MqttConfigError as exc:
        err.print(f"[red]broker settings (--mqtt, CARBONLINK_MQTT_*): {exc}[/]")
        raise typer.Exit(2) from None

    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            url = broker
            if url is None:
                embedded = await stack.enter_async_context(EmbeddedBroker(port=1883 if port_free(1883) else None))
                url = MqttUrl.parse(embedded.url)
            try:
                svc = await stack.enter_async_context(
                    running_cloud(db, url, http_host=host, http_port=port, client_id=client_id,
                                  shared_group=shared_group, settings=settings))
            except SecretKeyError as exc:
                raise fail(f"cloud secret key: {exc}") from None
            # str(MqttUrl) never shows the password; the storage URL may hold one too.
            err.print(f"cloud up: broker {url}, storage {redact_url(db)}, API {svc.dashboard_url}")
            await asyncio.Event().wait()

    run_until_signal(go())


dead_app = typer.Typer(help="Dead letters: what ingest refused, with the reason and the raw bytes.",
                       no_args_is_help=True)
cloud_app.add_typer(dead_app, name="dead-letters")


@dead_app.command("list")
def dead_list(
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL")] = DEFAULT_DB,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The newest dead letters, with their reason and whether a replay resolved them."""
    from rich.table import Table

    from carbonlink.cloud.store import open_store

    async def go() -> list[dict[str, Any]]:
        store = open_store(db)
        await store.open()
        try:
            return await store.audit.dead_letters(limit)
        finally:
            await store.close()

    rows = asyncio.run(go())
    if json_out:
        print(json.dumps(rows, default=str))
        return
    t = Table(title=f"dead letters ({len(rows)})")
    for col in ("id", "gateway", "reason", "size", "resolution"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r["id"]), str(r["gateway"]), r["reason"][:80], str(r["size"]), str(r.get("resolution") or ""))
    Console().print(t)


@dead_app.command("replay")
def dead_replay(
    letter: Annotated[list[int] | None, typer.Option("--id", help="dead letter id; repeat for several")] = None,
    all_unresolved: Annotated[bool, typer.Option("--all-unresolved", help="every unresolved dead letter")] = False,
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL")] = DEFAULT_DB,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run refused batches through the ingest's checks again, after their cause was fixed."""
    from rich.table import Table

    from carbonlink.cloud.deadletters import replay
    from carbonlink.cloud.store import open_store

    if not letter and not all_unresolved:
        err.print("[red]give --id N (repeatable) or --all-unresolved[/]")
        raise typer.Exit(2)

    async def go() -> list[Any]:
        store = open_store(db)
        await store.open()
        try:
            ids = list(letter or []) + (await store.audit.unresolved_dead_letters() if all_unresolved else [])
            return await replay(store, ids)
        finally:
            await store.close()

    results = asyncio.run(go())
    if json_out:
        print(json.dumps([r.__dict__ for r in results]))
    else:
        t = Table(title="replay")
        for col in ("id", "outcome", "detail"):
            t.add_column(col)
        for r in results:
            t.add_row(str(r.letter), r.outcome, r.detail[:100])
        Console().print(t)
    if any(r.outcome in ("still-refused", "unknown") for r in results):
        raise typer.Exit(1)


@cloud_app.command("register-gateway")
def cloud_register(
    gateway: Annotated[str, typer.Option(help="gateway id")],
    site: Annotated[str, typer.Option(help="site id")],
    public_key: Annotated[str, typer.Option(help="Ed25519 public key, hex")],
    tenant: Annotated[str, typer.Option(help="tenant that owns it (API callers see only their tenant's)")],
    db: Annotated[str, typer.Option(help="storage URL")] = DEFAULT_DB,
) -> None:
    """Register a gateway's public key so its batches are accepted."""
    from carbonlink.cloud.store import open_store

    try:
        bytes.fromhex(public_key)
        if len(public_key) != 64:
            raise ValueError
    except ValueError:
        err.print("[red]--public-key must be 64 hex digits (a raw Ed25519 public key)[/]")
        raise typer.Exit(2) from None

    async def go() -> None:
        store = open_store(db)
        await store.open()
        try:
            await store.registry.ensure_site(tenant, site)
            await store.registry.register_gateway(gateway, site, "ed25519", public_key, tenant=tenant)
        finally:
            await store.close()

    asyncio.run(go())
    err.print(f"registered {gateway} at {site}")
