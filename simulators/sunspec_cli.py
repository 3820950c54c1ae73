"""`carbonlink sim inverter`: SunSpec inverters over Modbus TCP, with faults by flag and at run time.

Mounted by the lead as ``sim_app.add_typer(app, name="inverter")``; the options
sit on the callback so the command reads ``carbonlink sim inverter --port N``.
At run time, type a fault command on stdin (``help`` lists them); it applies to
every inverter of the fleet.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Annotated

import typer
from rich.console import Console

from carbonlink.kernel.ports import port_free

from .clock import start_clock
from .sunspec import BASES, FLOAT_MODELS, INT_MODELS, InverterFaults, SunSpecInverter, start_inverter_fleet

app = typer.Typer(help="A SunSpec solar inverter (or a fleet) over Modbus TCP.", add_completion=False)
err = Console(stderr=True)

COMMANDS = """fault commands (one per line):
  stuck on|off        drift RATE_PER_H      spikes RATE [FACTOR]
  comm-loss on|off    exception CODE|off    wrong-map on|off
  restart [DOWNTIME_S] [reset]              energy WH
  clear               help"""


_restarts: set[asyncio.Task[None]] = set()


def apply_command(line: str, fleet: list[SunSpecInverter]) -> str:
    """Apply one run-time fault command to every inverter; returns what happened (for the console)."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0].lower(), words[1:]
    on = not args or args[0].lower() in ("on", "1", "true", "yes")
    try:
        for inv in fleet:
            if cmd == "stuck":
                inv.stick(on)
            elif cmd == "drift":
                inv.drift(float(args[0]))
            elif cmd == "spikes":
                inv.spikes(float(args[0]), float(args[1]) if len(args) > 1 else 3.0)
            elif cmd == "comm-loss":
                inv.lose_comm(on)
            elif cmd == "exception":
                inv.fail_with(None if args[0] == "off" else int(args[0]))
            elif cmd == "wrong-map":
                inv.wrong_map(on)
            elif cmd == "energy":
                inv.set_energy(float(args[0]))
            elif cmd == "clear":
                inv.clear_faults()
            elif cmd == "restart":
                downtime = float(args[0]) if args else 2.0
                task = asyncio.get_running_loop().create_task(
                    inv.restart(downtime, reset_energy="reset" in args, chain_absent_s=1.0))
                _restarts.add(task)  # keep a reference until done, or the loop may drop it
                task.add_done_callback(_restarts.discard)
            else:
                return COMMANDS
    except (IndexError, ValueError) as exc:
        return f"cannot apply {line.strip()!r}: {exc}\n{COMMANDS}"
    return f"applied {line.strip()!r} to {len(fleet)} inverter(s)"


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines typed on stdin, read by a daemon thread so that Ctrl-C never waits for Enter."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=reader, name="fault commands", daemon=True).start()
    return queue


async def _serve(fleet_size: int, port: int, json_out: bool, **kwargs: object) -> None:
    fleet = await start_inverter_fleet(fleet_size, port, **kwargs)  # type: ignore[arg-type]
    try:
        ends = [{"host": inv.host, "port": inv.port, "unit_id": inv.unit_id, "base": inv.base,
                 "model": inv.model, "serial": f"SIM{i + 1:04d}"} for i, inv in enumerate(fleet)]
        if json_out:
            print(json.dumps(ends), flush=True)
        last = fleet[-1].port
        err.print(f"{fleet_size} SunSpec inverter(s), model {fleet[0].model} at base {fleet[0].base}, on "
                  f"modbus://{fleet[0].host}:{port}" + (f"…{last}" if fleet_size > 1 else "")
                  + " (unit 1); type 'help' for faults, Ctrl-C to stop")
        lines = _stdin_lines()
        while (line := await lines.get()) is not None:
            if msg := apply_command(line, fleet):
                err.print(msg, markup=False, highlight=False)
        await asyncio.Event().wait()  # stdin closed (run in the background): keep serving
    finally:
        for inv in fleet:
            await inv.stop()


@app.callback(invoke_without_command=True)
def inverter(
    port: Annotated[int, typer.Option(help="Modbus TCP port (the first one with --fleet)")] = 5021,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    base: Annotated[int, typer.Option(help="SunSpec base address: 0, 40000 or 50000")] = 40000,
    model: Annotated[int, typer.Option(help="inverter model: 101-103 (int + SF) or 111-113 (float)")] = 103,
    common_len: Annotated[int, typer.Option(help="length of common model 1: 66, or 65 as some devices")] = 66,
    fleet: Annotated[int, typer.Option(help="serve N inverters on consecutive ports")] = 1,
    energy_start: Annotated[float | None, typer.Option(help="energy start, Wh (2^32 ≈ 4.29e9)")] = None,
    wh_sf: Annotated[int, typer.Option(help="scale factor of the WH counter")] = 0,
    stuck: Annotated[bool, typer.Option(help="fault: values frozen")] = False,
    drift: Annotated[float, typer.Option(help="fault: AC power drift, share per hour")] = 0.0,
    spikes: Annotated[float, typer.Option(help="fault: probability of a 3x spike per read")] = 0.0,
    comm_loss: Annotated[bool, typer.Option(help="fault: never answer")] = False,
    exception_code: Annotated[int | None, typer.Option(help="fault: reply with this exception")] = None,
    wrong_map: Annotated[bool, typer.Option(help="fault: 'SunS' marker missing")] = False,
    start: Annotated[str | None, typer.Option(help="model time to start at, ISO UTC (2024-06-21T04:00:00Z);"
                                                   " default now")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the endpoints as JSON on stdout")] = False,
) -> None:
    """Serve SunSpec inverters until Ctrl-C."""
    if base not in BASES:
        raise typer.BadParameter(f"use one of {', '.join(map(str, BASES))}", param_hint="--base")
    if model not in INT_MODELS + FLOAT_MODELS:
        raise typer.BadParameter("use 101, 102, 103, 111, 112 or 113", param_hint="--model")
    if common_len not in (65, 66):
        raise typer.BadParameter("use 66 (with pad register) or 65", param_hint="--common-len")
    if not 1 <= fleet <= 1000 or port + fleet - 1 > 65535:
        raise typer.BadParameter("use 1 to 1000 inverters whose ports stay below 65536", param_hint="--fleet")
    if exception_code is not None and exception_code not in (1, 2, 3, 4, 5, 6, 8, 10, 11):
        raise typer.BadParameter("use a Modbus exception code: 1-6, 8, 10 or 11",
                                 param_hint="--exception-code")
    busy = [p for p in range(port, port + fleet) if not port_free(p, host)]
    if busy:
        err.print(f"[red]port(s) {', '.join(map(str, busy[:5]))} in use[/]: pick another with --port")
        raise typer.Exit(2)
    faults = InverterFaults(stuck=stuck, drift_per_h=drift, spike_rate=spikes, comm_loss=comm_loss,
                            exception_code=exception_code, wrong_map=wrong_map)
    try:
        clock = start_clock(start)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start") from None
    try:
        asyncio.run(_serve(fleet, port, json_out, host=host, base=base, model=model, common_len=common_len,
                           energy_start_wh=energy_start, wh_sf=wh_sf, faults=faults, clock=clock))
    except KeyboardInterrupt:
        err.print("stopped")

