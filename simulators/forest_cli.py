"""``carbonlink sim forest``: run a simulated forest plot and print its BTHome adverts.

Without a radio the adverts go to stdout (hex, JSON lines, or a periodic
summary); a gateway reads the same plot with ``source: simulator`` in its
``ble_bthome`` device, and ``--config`` prints that device entry.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from typing import Annotated

import typer
import yaml

from carbonlink.codecs.bthome import RawAdvert, decode

from .clock import parse_start, wall_clock
from .forest import DENDRO_OBJECT, Fault, Forest, run_forest

app = typer.Typer(add_completion=False,
                  help="A forest plot of trees with BTHome v2 sensors (soil, climate, battery, dendrometer).")

FAULT_RE = re.compile(r"^(?P<tree>\d+):(?P<kind>[a-z_]+)(@(?P<after>\d+(\.\d+)?))?$")


def _parse_faults(specs: list[str], n: int) -> list[tuple[int, Fault, float]]:
    out = []
    kinds = ", ".join(f.value for f in Fault)
    for spec in specs:
        m = FAULT_RE.match(spec)
        if not m:
            raise typer.BadParameter(f"{spec!r}: write TREE:KIND or TREE:KIND@SECONDS, e.g. 3:stuck@30",
                                     param_hint="--fault")
        tree, kind = int(m["tree"]), m["kind"]
        if not 1 <= tree <= n:
            raise typer.BadParameter(f"{spec!r}: trees are numbered 1..{n}", param_hint="--fault")
        if kind not in {f.value for f in Fault}:
            raise typer.BadParameter(f"{spec!r}: kind must be one of {kinds}", param_hint="--fault")
        out.append((tree, Fault(kind), float(m["after"] or 0)))
    return out


@app.callback(invoke_without_command=True)
def forest(
    trees: Annotated[int, typer.Option(min=1, max=5000, help="number of trees, each with one sensor")] = 10,
    interval: Annotated[float, typer.Option(min=0.01, help="seconds between advert rounds")] = 2.0,
    speed: Annotated[float, typer.Option(min=0.001, help="simulated seconds per second (1440: a day a minute)")] = 1.0,
    encrypted: Annotated[bool, typer.Option(help="AES-CCM encrypt adverts (keys: --config)")] = False,
    seed: Annotated[int, typer.Option(help="seed for trees, weather and keys")] = 1,
    start: Annotated[str | None, typer.Option(help="simulated time to start at, ISO UTC (2024-06-21T04:00:00Z);"
                                                   " default now")] = None,
    repeats: Annotated[int, typer.Option(min=1, max=10, help="copies of each advert, as radios send")] = 1,
    dendrometer: Annotated[str, typer.Option(
        help="count_um (µm in count object 0x5B) or distance_mm (BTHome distance 0x40, whole mm)")] = "count_um",
    fault: Annotated[list[str] | None, typer.Option(
        help="TREE:KIND[@SECONDS], kinds stuck, drift, spikes, dropout, battery_death; repeatable")] = None,
    summary: Annotated[bool, typer.Option(help="a summary line every 5 s instead of one line per advert")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per advert, decoded")] = False,
    duration: Annotated[float | None, typer.Option(min=0, help="stop after this many seconds")] = None,
    config: Annotated[bool, typer.Option(help="print the gateway.yaml device entry for this plot and exit")] = False,
) -> None:
    """Run N simulated trees and print their BTHome adverts."""
    if dendrometer not in ("count_um", "distance_mm"):
        raise typer.BadParameter("use count_um or distance_mm", param_hint="--dendrometer")
    faults = _parse_faults(fault or [], trees)
    try:
        began = wall_clock() if start is None else parse_start(start)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--start") from None
    plot = Forest.plot(trees, encrypted=encrypted, seed=seed, dendrometer=dendrometer,  # type: ignore[arg-type]
                       speed=speed, repeats=repeats, start=began)
    if config:
        entry = {"id": "forest", "driver": "ble_bthome", "source": "bleak", "sensors": plot.sensor_config()}
        typer.echo(yaml.safe_dump({"devices": [entry]}, sort_keys=False, allow_unicode=True), nl=False)
        return
    keys = {tr.mac: tr.key for tr in plot.trees}

    def as_json_line(raw: RawAdvert) -> str:
        adv = decode(raw.data, raw.mac, keys[raw.mac])
        values = {("dendrometer" if m.object_id == DENDRO_OBJECT[dendrometer] else m.name): m.value
                  for m in adv.measurements}
        return json.dumps({"mac": raw.mac, "rssi": raw.rssi, "fcd2": raw.data.hex(), "packet_id": adv.packet_id,
                           "encrypted": adv.encrypted, "values": values}, ensure_ascii=False)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for tree, kind, after in faults:
            loop.call_later(after, plot.tree(tree).set_fault, kind)
        if duration is not None:
            loop.call_later(duration, stop.set)
        return await run_forest(plot, interval, stop, out=typer.echo, fmt=as_json_line if as_json else None,
                                summary_every_s=5.0 if summary and not as_json else None)

    count = asyncio.run(main())
    if summary:
        typer.echo(f"{count} adverts from {trees} trees")
