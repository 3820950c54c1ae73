"""`carbonlink edge …`: run a gateway agent and check its configuration."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Any

import typer

from carbonlink.commands.common import JsonOpt, emit, err, fail, out, run_until_signal, setup_logging
from carbonlink.kernel.configfile import ConfigError

edge_app = typer.Typer(help="The gateway agent.", no_args_is_help=True)


@edge_app.command("run")
def edge_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")],
    mqtt: Annotated[str | None, typer.Option(help="override the broker URL in the config")] = None,
) -> None:
    """Read the configured devices and deliver signed batches to the cloud."""
    from carbonlink.commands import simsources
    from carbonlink.edge.agent import EdgeAgent
    from carbonlink.edge.config import load_gateway_config

    simsources.install()
    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    setup_logging(cfg.log_level)
    run_until_signal(EdgeAgent(cfg, mqtt_url=mqtt, config_path=config).run_forever())


@edge_app.command("check")
def edge_check(config: Annotated[Path, typer.Option("--config", "-c")]) -> None:
    """Validate a gateway config and print what it would read."""
    from carbonlink.edge.config import load_gateway_config

    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    err.print(f"[green]{config}: valid[/] gateway {cfg.gateway.id} at site {cfg.gateway.site}, "
              f"{len(cfg.devices)} device(s)")


quarantine_app = typer.Typer(help="Batches the cloud refused, kept on the gateway: list, re-send or drop them.",
                             no_args_is_help=True)
edge_app.add_typer(quarantine_app, name="quarantine")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")]


def _open_outbox(config: Path) -> tuple[Any, Any]:
    """The gateway's existing outbox (never a new one, never a recovery: that is the agent's job) and config."""
    from carbonlink.edge.config import load_gateway_config
    from carbonlink.edge.outbox import Outbox, OutboxCorrupt

    try:
        cfg = load_gateway_config(config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    path = cfg.gateway.data_dir / "outbox.sqlite"
    if not path.exists():
        raise fail(f"{path} does not exist: this gateway has no outbox yet (gateway.data_dir in {config})")
    try:
        return Outbox(path, cfg.gateway.id, recover=False), cfg
    except OutboxCorrupt as exc:
        raise fail(f"{exc}. Start the agent (carbonlink edge run): it moves a damaged outbox aside (kept),"
                   " salvages what it can and starts a fresh one") from None
    except sqlite3.Error as exc:
        raise fail(f"cannot open the outbox {path}: {exc}") from None


def _ids(ob: Any, qid: int | None, every: bool) -> list[int]:
    if (qid is None) == (not every):
        raise fail("give one quarantine ID or --all")
    if every:
        return [q.id for q in ob.quarantined()]
    assert qid is not None
    return [qid]


@quarantine_app.command("list")
def quarantine_list(config: ConfigOpt, json_out: JsonOpt = False) -> None:
    """Every quarantined batch: its id, the seq it was sent under, size, when, and the cloud's reason."""
    ob, _ = _open_outbox(config)
    try:
        rows = [q.row() for q in ob.quarantined()]
        overflow = ob.metrics().get("quarantine_overflow", 0)
    finally:
        ob.close()
    emit(rows, json_out, "quarantined batches", ["id", "seq", "readings", "bytes", "quarantined", "reason"])
    if not json_out:
        err.print(f"{len(rows)} batch(es) in quarantine" + (
            f"; [red]{overflow} refused batch(es) were dropped because the quarantine was full[/]"
            if overflow else ""))


@quarantine_app.command("resend")
def quarantine_resend(
    config: ConfigOpt,
    qid: Annotated[int | None, typer.Argument(metavar="ID", help="quarantine id (see list)")] = None,
    every: Annotated[bool, typer.Option("--all", help="every quarantined batch")] = False,
) -> None:
    """Send quarantined batches again, re-signed with the gateway's key under new sequence numbers.

    The running agent picks them up like any unacknowledged batch. Fix the cause first (a gateway not yet
    registered, a revoked or rotated key): a batch refused again comes back to the quarantine.
    """
    from carbonlink.edge.identity import load_key
    from carbonlink.edge.outbox import KeySigner

    ob, cfg = _open_outbox(config)
    try:
        try:
            signer = KeySigner(load_key(cfg.gateway.key_file))
        except (OSError, ValueError) as exc:
            raise fail(f"cannot load the gateway key {cfg.gateway.key_file}: {exc}") from None
        failed = 0
        for i in _ids(ob, qid, every):
            try:
                b = ob.resend_quarantined(i, signer)
            except KeyError:
                err.print(f"[red]no quarantined batch {i}[/] (see `carbonlink edge quarantine list`)")
                failed += 1
                continue
            except ValueError as exc:
                err.print(f"[red]{exc}[/]; left in quarantine")
                failed += 1
                continue
            out.print(f"quarantined batch {i}: {b.n} readings queued again as seq {b.seq}")
    finally:
        ob.close()
    if failed:
        raise typer.Exit(1)


@quarantine_app.command("drop")
def quarantine_drop(
    config: ConfigOpt,
    qid: Annotated[int, typer.Argument(metavar="ID", help="quarantine id (see list)")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete one quarantined batch for good (its readings never reach the cloud). Asks first."""
    ob, _ = _open_outbox(config)
    try:
        found = ob.quarantined(qid)
        if not found:
            raise fail(f"no quarantined batch {qid} (see `carbonlink edge quarantine list`)")
        q = found[0]
        if not yes and not typer.confirm(f"Delete quarantined batch {qid} (seq {q.seq}, {q.n} readings, refused:"
                                         f" {q.reason[:200]})? Its readings will never reach the cloud"):
            raise typer.Exit(1)
        dropped = ob.drop_quarantined(qid)
        if dropped is not None:  # the cloud hears of it too: an operator's deliberate loss is on record
            ob.add_event("outbox.quarantine_dropped", severity="warning",
                         body={"quarantine_id": qid, "seq": q.seq, "readings": q.n, "reason": q.reason[:1000]})
    finally:
        ob.close()
    out.print(f"dropped quarantined batch {qid} ({q.n} readings)")
