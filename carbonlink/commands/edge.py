"""`carbonlink edge …`: run a gateway agent and check its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from carbonlink.commands.common import err, fail, run_until_signal, setup_logging
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
