"""The `carbonlink` command: one entry point, a sub-command per role."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from carbonlink.kernel.configfile import ConfigError
from carbonlink.kernel.ports import port_free

app = typer.Typer(help="CarbonLink: measure, report and verify carbon from field devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
edge_app = typer.Typer(help="The gateway agent.", no_args_is_help=True)
cloud_app = typer.Typer(help="The cloud: ingest, storage, API and dashboard.", no_args_is_help=True)
sim_app = typer.Typer(help="Simulated devices speaking the real protocols.", no_args_is_help=True)
app.add_typer(edge_app, name="edge")
app.add_typer(cloud_app, name="cloud")
app.add_typer(sim_app, name="sim")


def _mount() -> None:
    from carbonlink.commands.provision import app as provision_app

    app.add_typer(provision_app, name="provision")
    from carbonlink.simulators.sunspec_cli import app as inverter_app

    sim_app.add_typer(inverter_app, name="inverter")
    from carbonlink.simulators.cems_cli import app as cems_app
    from carbonlink.simulators.fleet_cli import app as fleet_app

    sim_app.add_typer(cems_app, name="cems")
    sim_app.add_typer(fleet_app, name="fleet")
    from carbonlink.simulators.forest_cli import forest as sim_forest

    sim_app.command("forest")(sim_forest)
    from carbonlink.edge.hj212.cli import app as hj212_app

    app.add_typer(hj212_app, name="hj212")
    from carbonlink.cloud.anchor.cli import anchor_app, verify_app

    app.add_typer(anchor_app, name="anchor")
    app.add_typer(verify_app, name="verify")
    from carbonlink.cloud.storage_cli import app as storage_app

    # migrate, status, gaps, availability, rollups, export-influx sit beside serve under `carbonlink cloud`.
    cloud_app.registered_commands.extend(storage_app.registered_commands)
    from carbonlink.cloud.users_cli import key_app, user_app

    cloud_app.add_typer(user_app, name="user")
    cloud_app.add_typer(key_app, name="key")
    from carbonlink.commands.faults.runner import app as faults_app

    app.add_typer(faults_app, name="faults")


_mount()

err = Console(stderr=True)


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _run(coro: Any) -> Any:
    """Run a coroutine; Ctrl-C and SIGTERM stop it cleanly via cancellation."""
    async def main() -> Any:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return None

    return asyncio.run(main())


# --- demo -------------------------------------------------------------------------------------

@app.command()
def demo(
    duration: Annotated[float | None, typer.Option(help="stop by itself after this many seconds")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON summary at the end")] = False,
    mqtt: Annotated[str | None, typer.Option(help="external broker, e.g. mqtt://127.0.0.1:1883")] = None,
    data_dir: Annotated[Path, typer.Option(help="where the demo keeps its databases and keys")] = Path("var/demo"),
    http_port: Annotated[int, typer.Option(help="dashboard port (a free one is used if taken)")] = 8080,
) -> None:
    """Run simulators, broker, cloud and an edge agent together, with a live dashboard."""
    from carbonlink.commands.demo import run_demo

    _logging("WARNING")
    stop = asyncio.Event()

    async def go() -> Any:
        task = asyncio.ensure_future(run_demo(duration=duration, data_dir=data_dir, mqtt_url=mqtt,
                                              http_port=http_port, live=not json_out, stop=stop))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)  # a clean stop: drain, then summarise
        return await task

    summary = asyncio.run(go())
    if json_out:
        print(json.dumps(summary.as_dict()))
    else:
        err.print(f"stopped: produced {summary.produced}, published {summary.published}, "
                  f"stored {summary.stored}, rejected {summary.rejected}")


# --- edge -------------------------------------------------------------------------------------

@edge_app.command("run")
def edge_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")],
    mqtt: Annotated[str | None, typer.Option(help="override the broker URL in the config")] = None,
) -> None:
    """Read the configured devices and deliver signed batches to the cloud."""
    from carbonlink.edge.agent import EdgeAgent
    from carbonlink.edge.config import load_gateway_config

    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    _logging(cfg.log_level)
    _run(EdgeAgent(cfg, mqtt_url=mqtt, config_path=config).run_forever())


@edge_app.command("check")
def edge_check(config: Annotated[Path, typer.Option("--config", "-c")]) -> None:
    """Validate a gateway config and print what it would read."""
    from carbonlink.edge.config import load_gateway_config

    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    err.print(f"[green]{config}: valid[/] gateway {cfg.gateway.id} at site {cfg.gateway.site}, "
              f"{len(cfg.devices)} device(s)")


# --- cloud ------------------------------------------------------------------------------------

@cloud_app.command("serve")
def cloud_serve(
    mqtt: Annotated[str | None, typer.Option(help="broker URL; without it an embedded broker is started")] = None,
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL: sqlite:///PATH or postgresql://...")
                  ] = "sqlite:///var/cloud/cloud.sqlite",
    host: Annotated[str, typer.Option(help="HTTP bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port")] = 8080,
    shared_group: Annotated[str | None, typer.Option(help="MQTT 5 shared-subscription group (Mosquitto)")] = None,
    client_id: Annotated[str, typer.Option(help="MQTT client id (unique per ingest worker)")] = "carbonlink-ingest",
) -> None:
    """Ingest telemetry, store it and serve the API and dashboard."""
    from pydantic import ValidationError

    from carbonlink.cloud.broker import EmbeddedBroker
    from carbonlink.cloud.logs import configure
    from carbonlink.cloud.service import running_cloud
    from carbonlink.cloud.settings import CloudSettings

    try:
        settings = CloudSettings()
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        err.print(f"[red]cloud settings (CARBONLINK_* environment): {problems}[/]")
        raise typer.Exit(2) from None
    configure("INFO", settings.log_format)

    async def go() -> None:
        async with contextlib.AsyncExitStack() as stack:
            url = mqtt
            if url is None:
                url = (await stack.enter_async_context(EmbeddedBroker(port=1883 if port_free(1883) else None))).url
            svc = await stack.enter_async_context(
                running_cloud(db, url, http_host=host, http_port=port, client_id=client_id,
                              shared_group=shared_group, settings=settings))
            err.print(f"cloud up: broker {url}, storage {db}, API {svc.dashboard_url}")
            await asyncio.Event().wait()

    _run(go())


dead_app = typer.Typer(help="Dead letters: what ingest refused, with the reason and the raw bytes.",
                       no_args_is_help=True)
cloud_app.add_typer(dead_app, name="dead-letters")


@dead_app.command("list")
def dead_list(
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL")] = "sqlite:///var/cloud/cloud.sqlite",
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
            return await store.dead_letters(limit)
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
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL")] = "sqlite:///var/cloud/cloud.sqlite",
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
            ids = list(letter or []) + (await store.unresolved_dead_letters() if all_unresolved else [])
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
    db: Annotated[str, typer.Option(help="storage URL")] = "sqlite:///var/cloud/cloud.sqlite",
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
            await store.ensure_site(tenant, site)
            await store.register_gateway(gateway, site, "ed25519", public_key, tenant=tenant)
        finally:
            await store.close()

    asyncio.run(go())
    err.print(f"registered {gateway} at {site}")


# --- simulators -------------------------------------------------------------------------------

def main() -> None:
    app()


if __name__ == "__main__":
    main()
