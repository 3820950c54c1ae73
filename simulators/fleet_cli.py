"""`carbonlink sim fleet`: N CEMS stacks and N SunSpec inverters on consecutive ports, for load tests.

Mounted by the lead as ``sim_app.add_typer(app, name="fleet")``. ``--gateway-yaml``
prints a gateway.yaml ``devices:`` list that polls the whole fleet (and a forest
plot the gateway simulates itself). At run time, ``cems COMMAND`` applies a CEMS
fault command to every stack, ``inverter COMMAND`` an inverter one to every inverter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from carbonlink.kernel.ports import port_free

from . import cems_cli, sunspec_cli
from .cems_cli import serve_with_commands
from .clock import start_clock
from .fleet import Fleet, fleet_ports, start_fleet

app = typer.Typer(help="Many simulated devices on consecutive ports, for load tests.", add_completion=False)
err = Console(stderr=True)

HELP = "fleet commands: 'cems COMMAND' (to every CEMS stack), 'inverter COMMAND' (to every inverter), 'help'"


def apply_command(line: str, fleet: Fleet) -> str:
    """Route one run-time command to the CEMS stacks or the inverters of the fleet."""
    target, _, rest = line.strip().partition(" ")
    if target == "cems" and fleet.cems:
        return cems_cli.apply_command(rest, fleet.cems) or cems_cli.COMMANDS
    if target == "inverter" and fleet.inverters:
        return sunspec_cli.apply_command(rest, fleet.inverters) or sunspec_cli.COMMANDS
    return HELP if not line.strip() or target == "help" else f"{HELP}\n(no such devices in this fleet: {target!r})"


def _table(fleet: Fleet) -> Table:
    t = Table(title="simulated fleet")
    for col in ("id", "protocol", "endpoint", "notes"):
        t.add_column(col)
    ends = fleet.endpoints()
    for e in ends["cems"]:
        t.add_row(e["id"], "Modbus TCP", f"{e['host']}:{e['port']}", "unit 1, point map 'cems'")
    for e in ends["inverters"]:
        t.add_row(e["id"], "SunSpec", f"{e['host']}:{e['port']}", f"model {e['model']} at {e['base']}")
    if "forest" in ends:
        t.add_row("forest-plot-1", "BTHome", "(in the gateway)", f"{ends['forest']['trees']} trees, source: simulator")
    return t


@app.callback(invoke_without_command=True)
def fleet(
    cems: Annotated[int, typer.Option(min=0, max=1000, help="CEMS stacks (Modbus TCP), from --first-port")] = 1,
    inverters: Annotated[int, typer.Option(min=0, max=1000, help="SunSpec inverters, on the ports after")] = 1,
    forest_trees: Annotated[int, typer.Option(min=0, max=5000, help="trees of a forest plot (simulated "
                                                                      "in the gateway: BLE has no port)")] = 0,
    first_port: Annotated[int, typer.Option(min=1, max=65535, help="port of the first device")] = 15020,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    poll_interval: Annotated[float, typer.Option(min=0.01, help="poll_interval_s in --gateway-yaml")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the first stack's noise (+1 per stack)")] = 1,
    start: Annotated[str | None, typer.Option(help="model time to start at, ISO UTC (2024-06-21T04:00:00Z);"
                                                   " default now")] = None,
    gateway_yaml: Annotated[bool, typer.Option("--gateway-yaml", help="print a gateway.yaml 'devices:' list "
                                                                       "for the fleet on stdout")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print the endpoints as JSON on stdout")] = False,
) -> None:
    """Serve a fleet of simulated devices until Ctrl-C."""
    if cems + inverters + forest_trees == 0:
        raise typer.BadParameter("nothing to serve: give --cems, --inverters and/or --forest-trees")
    ports = fleet_ports(first_port, cems, inverters)
    if ports and ports[-1] > 65535:
        raise typer.BadParameter(f"the last port would be {ports[-1]}; lower --first-port", param_hint="--first-port")
    try:
        clock = start_clock(start)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start") from None
    busy = [p for p in ports if not port_free(p, host)]
    if busy:
        err.print(f"[red]port(s) {', '.join(map(str, busy[:5]))} in use[/]: pick another --first-port")
        raise typer.Exit(2)
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    async def go() -> None:
        async with await start_fleet(cems=cems, inverters=inverters, forest_trees=forest_trees,
                                     first_port=first_port, host=host, seed=seed, clock=clock) as f:
            if json_out:
                print(json.dumps(f.endpoints()), flush=True)
            if gateway_yaml:
                print(yaml.safe_dump({"devices": f.gateway_devices(poll_interval)}, sort_keys=False,
                                     allow_unicode=True), end="", flush=True)
            err.print(_table(f))
            err.print(f"{len(ports)} device(s) on {host}:{first_port}…{first_port + max(0, len(ports) - 1)}; "
                      "type 'help' for fault commands, Ctrl-C to stop")
            await serve_with_commands(f.cems, lambda line: apply_command(line, f))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
    err.print("stopped")
