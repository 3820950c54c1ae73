"""`carbonlink faults …`: the fault lab (run a profile, print the table) and the ingest fuzzer."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from .lab import Row
from .scenarios import PROFILES, run_profile

app = typer.Typer(help="Inject faults into a running pipeline and count what was lost or doubled.",
                  no_args_is_help=True)


def render(rows: list[Row], profile: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"CarbonLink fault injection, profile {profile}")
    for col in ("fault", "produced", "stored", "lost", "duplicated", "redelivered", "drain s", "what was done"):
        t.add_column(col, justify="left" if col in ("fault", "what was done") else "right")
    for r in rows:
        bad = "bold red" if r.lost or r.duplicated else "green"
        t.add_row(r.fault, f"{r.produced:,}", f"{r.stored:,}", f"[{bad}]{r.lost}[/]", f"[{bad}]{r.duplicated}[/]",
                  f"{r.redelivered:,}", f"{r.drain_s:.2f}", r.note)
    Console().print(t)


@app.callback()
def _group() -> None:
    """Fault injection against the real pipeline."""


@app.command("run")
def run(
    profile: Annotated[str, typer.Option(help="ci (a few minutes) or full (5-minute ingest outage, 1M buffered)")]
    = "ci",
    json_out: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    only: Annotated[list[str] | None, typer.Option(help="run only faults whose name contains this")] = None,
    db: Annotated[str | None, typer.Option(help="PostgreSQL URL to run on (a throwaway ?schema= is best);"
                                                " default: a SQLite file in the lab")] = None,
) -> None:
    """Run every fault against a private Mosquitto, ingest workers and a store; exit 1 on any loss."""
    if profile not in PROFILES:
        typer.echo(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}", err=True)
        raise typer.Exit(2)
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        typer.echo("mosquitto is needed: apt-get install -y mosquitto", err=True)
        raise typer.Exit(2)
    rows = asyncio.run(run_profile(PROFILES[profile], only, progress=not json_out, db=db))
    if json_out:
        print(json.dumps({"profile": profile, "store": "postgresql" if db else "sqlite",
                          "rows": [asdict(r) for r in rows]}))
    else:
        render(rows, profile)
    if any(r.lost or r.duplicated for r in rows):
        raise typer.Exit(1)


@app.command("fuzz-ingest")
def fuzz_ingest_cmd(
    db: Annotated[str, typer.Option(envvar="CARBONLINK_DB", help="storage URL (a throwaway one is best)")],
    mqtt: Annotated[str, typer.Option(help="broker URL; the ingest subscribes to cl/+/+/telemetry there")],
    count: Annotated[int, typer.Option(min=1, help="hostile messages to publish")] = 10_000,
    seed: Annotated[int, typer.Option(help="seed of the message mix")] = 1,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Publish hostile messages through the broker to a running ingest, then check a valid batch still commits."""
    from .fuzz import fuzz_ingest

    result = asyncio.run(fuzz_ingest(db, mqtt, seed=seed, count=count, settle_s=max(60.0, count / 200)))
    if json_out:
        print(json.dumps(asdict(result)))
    else:
        typer.echo(f"published {result.published:,}, judged {result.judged:,}, dead letters "
                   f"{result.dead_letters:,}, readings from hostile messages {result.readings_from_hostile}, "
                   "valid batch committed in "
                   + ("(no ack)" if result.valid_ack_s is None else f"{result.valid_ack_s:.3f} s"))
    if result.readings_from_hostile or result.valid_ack_s is None or result.judged < result.published:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
