"""`carbonlink sim cems`: one CEMS stack over Modbus TCP, OPC-UA and HJ 212, with faults by flag and at run time.

Mounted by the lead as ``sim_app.add_typer(app, name="cems")``; the options sit on
the callback so the command reads ``carbonlink sim cems --modbus-port N``. One
model (simulators/cems.py) feeds every protocol, so a fault shows everywhere at
once: calibration is the status register 1 on Modbus, UncertainSensorCalibration
on OPC-UA and data flag C on HJ 212. At run time, type a fault command on stdin
(``help`` lists them); ``CemsRig.apply`` is the same surface for tests and fleets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.console import Console

from carbonlink.kernel.ports import port_free

from .cems import CemsStack, Mode
from .clock import start_clock
from .hj212_client import DEFAULT_MN, DEFAULT_PW, ClientStats, parse_host_port, run_hj212_client
from .modbus_host import ModbusDeviceHost
from .sunspec_cli import _stdin_lines

log = logging.getLogger(__name__)
app = typer.Typer(help="A CEMS stack over Modbus TCP, OPC-UA and HJ 212, with faults on demand.",
                  add_completion=False)
err = Console(stderr=True)

COMMANDS = """fault commands (one per line), applied to every protocol at once:
  calibration on|off|SECONDS   maintenance on|off|SECONDS   fault on|off|SECONDS   (flags C, M, D)
  drift RATE_PER_H             stuck on|off                 spikes RATE [FACTOR]
  comm-loss on|off             exception CODE|off           wrong-map on|off [SHIFT]
  restart [DOWNTIME_S]         clear                        status      help"""

_MODES = {"calibration": Mode.CALIBRATION, "maintenance": Mode.MAINTENANCE, "fault": Mode.FAULT}


class CemsRig:
    """One CEMS stack served over the transports given (a port of None: not served); an async context manager."""

    def __init__(self, stack: CemsStack | None = None, *, host: str = "127.0.0.1", modbus_port: int | None = None,
                 unit_id: int = 1, opcua_port: int | None = None, opcua_user: str | None = None,
                 opcua_password: str | None = None, opcua_interval_s: float = 1.0,
                 hj212_to: tuple[str, int] | None = None, hj212_interval_s: float = 5.0,
                 hj212_minute_s: float = 60.0, mn: str = DEFAULT_MN, pw: str = DEFAULT_PW) -> None:
        self.stack = stack or CemsStack()
        self.host = host
        self.modbus = (ModbusDeviceHost(self.stack.fill, host=host, port=modbus_port, unit_id=unit_id,
                                        faults=self.stack.faults) if modbus_port is not None else None)
        self.opcua: Any = None  # CemsOpcUaServer; imported only when served (asyncua is heavy)
        if opcua_port is not None:
            from .cems_opcua import CemsOpcUaServer

            self.opcua = CemsOpcUaServer(host=host, port=opcua_port, interval_s=opcua_interval_s, stack=self.stack,
                                         username=opcua_user, password=opcua_password)
        self.hj212_to, self.hj212_interval_s, self.hj212_minute_s = hj212_to, hj212_interval_s, hj212_minute_s
        self.mn, self.pw = mn, pw
        self.hj212_stats = ClientStats()
        self._hj212_stop = asyncio.Event()
        self._hj212: asyncio.Task[ClientStats] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # restarts and timed modes under way

    # --- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        try:
            if self.modbus is not None:
                await self.modbus.start()
            if self.opcua is not None:
                await self.opcua.start()
        except BaseException:
            await self.stop()
            raise
        if self.hj212_to is not None:
            self._hj212_stop.clear()
            self._hj212 = asyncio.create_task(run_hj212_client(
                self.hj212_to[0], self.hj212_to[1], self.mn, self.pw, self.hj212_interval_s, self._hj212_stop,
                stack=self.stack, minute_s=self.hj212_minute_s, stats=self.hj212_stats), name=f"hj212 {self.mn}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._hj212 is not None:
            self._hj212_stop.set()
            await asyncio.gather(self._hj212, return_exceptions=True)
            self._hj212 = None
        if self.opcua is not None:
            await self.opcua.close()
        if self.modbus is not None:
            await self.modbus.stop()

    async def __aenter__(self) -> CemsRig:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def restart(self, down_s: float = 2.0) -> None:
        """A device restart on every transport: links dropped, nothing served for ``down_s``, then back."""
        self.stack.begin_restart(down_s)
        await asyncio.gather(*(t.restart(down_s) for t in (self.modbus, self.opcua) if t is not None))

    def endpoints(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.modbus is not None:
            out["modbus"] = {"host": self.host, "port": self.modbus.port, "unit_id": self.modbus.unit_id,
                             "pointmap": "cems"}
        if self.opcua is not None:
            out["opcua"] = {"url": self.opcua.url, "node_ids": self.opcua.node_ids}
        if self.hj212_to is not None:
            out["hj212"] = {"to": f"{self.hj212_to[0]}:{self.hj212_to[1]}", "mn": self.mn,
                            "interval_s": self.hj212_interval_s}
        return out

    # --- faults at run time -----------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # keep a reference until done, or the loop may drop it
        task.add_done_callback(self._tasks.discard)

    async def _mode_for(self, mode: Mode, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if self.stack.faults.mode is mode:  # unless changed meanwhile
            self.stack.set_mode(Mode.NORMAL)

    def apply(self, line: str) -> str:
        """Apply one fault command (syntax in COMMANDS); returns what happened, for the console.

        Raises ValueError or IndexError when the command is malformed, and changes nothing then.
        """
        f = self.stack.faults
        before = vars(f).copy()
        try:
            return self._apply(line)
        except (IndexError, ValueError):
            for name, value in before.items():  # a half-applied bad value must not stay
                setattr(f, name, value)
            raise

    def _apply(self, line: str) -> str:
        words = line.split()
        if not words:
            return ""
        cmd, args = words[0].lower(), words[1:]
        on = not args or args[0].lower() in ("on", "1", "true", "yes")
        f = self.stack.faults
        if cmd in _MODES:
            seconds = float(args[0]) if args and args[0].replace(".", "", 1).isdigit() else None
            self.stack.set_mode(_MODES[cmd] if on or seconds is not None else Mode.NORMAL)
            if seconds is not None:
                self._spawn(self._mode_for(_MODES[cmd], seconds))
        elif cmd == "drift":
            self.stack.drift(float(args[0]))
        elif cmd == "stuck":
            f.stuck = on
        elif cmd == "spikes":
            f.spike_rate, f.spike_factor = float(args[0]), float(args[1]) if len(args) > 1 else 3.0
        elif cmd == "comm-loss":
            f.comm_loss = on
        elif cmd == "exception":
            f.exception_code = None if args[0].lower() == "off" else int(args[0])
        elif cmd == "wrong-map":
            f.map_shift = (int(args[1]) if len(args) > 1 else 1) if on else 0
        elif cmd == "restart":
            self._spawn(self.restart(float(args[0]) if args else 2.0))
        elif cmd == "clear":
            self.stack.clear_faults()
        elif cmd == "status":
            return self.describe_faults()
        else:
            return COMMANDS
        f.check()
        return f"applied {line.strip()!r}"

    def describe_faults(self) -> str:
        f = self.stack.faults
        parts = [f"mode {f.mode.name.lower()} (flag {self.stack.flag()})"]
        parts += [s for s, active in ((f"drift {f.drift_per_h:g}/h", f.drift_per_h), ("stuck", f.stuck),
                                      (f"spikes {f.spike_rate:g}x{f.spike_factor:g}", f.spike_rate),
                                      ("comm-loss", f.comm_loss), (f"exception {f.exception_code}",
                                                                   f.exception_code is not None),
                                      (f"wrong-map +{f.map_shift}", f.map_shift), ("restarting", f.down))
                  if active]
        return ", ".join(parts)


def apply_command(line: str, rigs: Sequence[CemsRig]) -> str:
    """Apply one run-time fault command to every stack; returns what happened (for the console)."""
    msg = ""
    try:
        for rig in rigs:
            msg = rig.apply(line)
    except (IndexError, ValueError) as exc:
        return f"cannot apply {line.strip()!r}: {exc}\n{COMMANDS}"
    if msg.startswith("applied") and len(rigs) > 1:
        msg += f" to {len(rigs)} stacks"
    return msg


async def serve_with_commands(rigs: Sequence[CemsRig], apply: Any = None) -> None:
    """Read fault commands on stdin until it closes, then keep serving (until cancelled)."""
    apply = apply or (lambda line: apply_command(line, rigs))
    lines = _stdin_lines()
    while (line := await lines.get()) is not None:
        if msg := apply(line):
            err.print(msg, markup=False, highlight=False)
    await asyncio.Event().wait()  # stdin closed (run in the background): keep serving


@app.callback(invoke_without_command=True)
def cems(
    modbus_port: Annotated[int | None, typer.Option("--modbus-port", "--port", help="serve Modbus TCP here")] = 5020,
    opcua_port: Annotated[int | None, typer.Option(help="also serve OPC-UA here (opc.tcp://HOST:PORT)")] = None,
    opcua_user: Annotated[str | None, typer.Option(help="require this OPC-UA username (with --opcua-password)")] = None,
    opcua_password: Annotated[str | None, typer.Option(help="OPC-UA password")] = None,
    hj212_to: Annotated[str | None, typer.Option(help="push HJ 212 uploads to a gateway at HOST:PORT")] = None,
    hj212_interval: Annotated[float, typer.Option(help="seconds between real-time (CN 2011) uploads")] = 5.0,
    mn: Annotated[str | None, typer.Option(help="HJ 212 station MN (24 characters)")] = None,
    pw: Annotated[str | None, typer.Option(help="HJ 212 access password")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    mode: Annotated[str, typer.Option(help="fault: normal, calibration (C), maintenance (M) or fault (D)")] = "normal",
    drift: Annotated[float, typer.Option(help="fault: analyser drift, share of the value per hour")] = 0.0,
    stuck: Annotated[bool, typer.Option(help="fault: values frozen")] = False,
    spikes: Annotated[float, typer.Option(help="fault: probability of a spike per sample")] = 0.0,
    spike_factor: Annotated[float, typer.Option(help="fault: a spike multiplies the analysers by this")] = 3.0,
    comm_loss: Annotated[bool, typer.Option(help="fault: Modbus never answers, OPC-UA BadNoCommunication, "
                                                 "HJ 212 sends nothing")] = False,
    exception_code: Annotated[int | None, typer.Option(help="fault: Modbus replies with this exception")] = None,
    wrong_map: Annotated[bool, typer.Option(help="fault: every channel off by one (Modbus: shifted a register)")]
    = False,
    seed: Annotated[int, typer.Option(help="seed of the stack's noise")] = 1,
    start: Annotated[str | None, typer.Option(help="model time to start at, ISO UTC (2024-06-21T04:00:00Z);"
                                                   " default now")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the endpoints as JSON on stdout")] = False,
) -> None:
    """A CEMS stack: one model served over Modbus TCP and OPC-UA and pushed over HJ 212, so all agree."""
    target = None
    if hj212_to:
        try:
            target = parse_host_port(hj212_to)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--hj212-to") from None
    if modbus_port is None and target is None and opcua_port is None:
        raise typer.BadParameter("nothing to serve: give --modbus-port, --opcua-port and/or --hj212-to")
    if (opcua_user is None) != (opcua_password is None):
        raise typer.BadParameter("give both --opcua-user and --opcua-password, or neither")
    if mode.upper() not in Mode.__members__:
        raise typer.BadParameter("use normal, calibration, maintenance or fault", param_hint="--mode")
    busy = [p for p in (modbus_port, opcua_port) if p is not None and not port_free(p, host)]
    if busy:
        err.print(f"[red]port {busy[0]} is in use[/]: pick another with --modbus-port / --opcua-port")
        raise typer.Exit(2)
    try:
        clock = start_clock(start)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start") from None
    stack = CemsStack(seed=seed, clock=clock)
    stack.set_mode(mode)
    f = stack.faults
    f.stuck, f.spike_rate, f.spike_factor, f.comm_loss = stuck, spikes, spike_factor, comm_loss
    f.exception_code, f.map_shift = exception_code, 1 if wrong_map else 0
    try:
        stack.drift(drift)
        f.check()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    async def go() -> None:
        async with CemsRig(stack, host=host, modbus_port=modbus_port, opcua_port=opcua_port, opcua_user=opcua_user,
                           opcua_password=opcua_password, hj212_to=target, hj212_interval_s=hj212_interval,
                           mn=mn or DEFAULT_MN, pw=pw or DEFAULT_PW) as rig:
            ends = rig.endpoints()
            if json_out:
                print(json.dumps(ends), flush=True)
            if "modbus" in ends:
                err.print(f"CEMS stack on modbus://{host}:{modbus_port} (unit 1, point map 'cems')")
            if "opcua" in ends:
                err.print(f"CEMS stack on {ends['opcua']['url']} (0:Objects/2:CEMS/2:Stack1)")
            if target is not None:
                err.print(f"pushing HJ 212 to {target[0]}:{target[1]} every {hj212_interval:g} s")
            err.print(f"faults: {rig.describe_faults()}; type 'help' for fault commands, Ctrl-C to stop")
            await serve_with_commands([rig])

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
    err.print("stopped")
