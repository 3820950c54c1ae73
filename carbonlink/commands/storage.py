"""`carbonlink cloud ...`: storage administration: migrate, status, gaps, availability, rollups, Influx export."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from carbonlink.cloud.store import ReadingQuery, SeriesQuery, Store
from carbonlink.commands.common import DbOpt, JsonOpt, fail, with_store
from carbonlink.commands.common import out as console
from carbonlink.kernel.wire import WireError, format_ts, parse_ts

app = typer.Typer(help="Cloud storage: schema migrations, data completeness, rollups, export.", no_args_is_help=True)
T = TypeVar("T")



def _ts(name: str, text: str) -> int:
    try:
        return parse_ts(text)
    except WireError:
        if text.isdigit():
            return int(text)
    raise fail(f"--{name} must be YYYY-MM-DDTHH:MM:SS.mmmZ or epoch milliseconds, got {text!r}")
    raise AssertionError


@app.command()
def migrate(db: DbOpt, as_json: JsonOpt = False) -> None:
    """Apply pending schema migrations (also done at every start); safe to run again."""
    async def go(store: Store) -> dict[str, Any]:
        version = await store.migrate()  # type: ignore[attr-defined]
        layout = "timescaledb" if getattr(store, "timescale", False) else (
            "partitioned" if db.startswith("postgres") else "sqlite")
        return {"url": db.split("@")[-1], "schema_version": version, "layout": layout}

    out = with_store(db, go)
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"schema at version [bold]{out['schema_version']}[/] ({out['layout']}) on {out['url']}")


@app.command()
def status(db: DbOpt, as_json: JsonOpt = False) -> None:
    """Row counts per table."""
    counts = with_store(db, lambda s: s.data.counts())
    if as_json:
        print(json.dumps(counts))
        return
    t = Table("table", "rows")
    for k, v in counts.items():
        t.add_row(k, f"{v:,}")
    console.print(t)


@app.command()
def gaps(gateway: str, db: DbOpt, as_json: JsonOpt = False) -> None:
    """Batch sequence numbers a gateway sent that the cloud does not have."""
    out = with_store(db, lambda s: s.data.seq_gaps(gateway))
    if as_json:
        print(json.dumps(out))
        return
    console.print(f"{gateway}: {out['batches']:,} batches up to seq {out['last_seq']}, "
                  f"{out['missing_batches']:,} missing")
    for a, b in out["missing"]:
        console.print(f"  missing {a}" + (f"-{b}" if b != a else ""))


@app.command()
def availability(device: str, start: str, end: str, db: DbOpt, point: str | None = None,
                 as_json: JsonOpt = False) -> None:
    """Expected vs received readings per point and hour."""
    from carbonlink.cloud.completeness import availability as avail

    q = SeriesQuery(device, _ts("start", start), _ts("end", end), point)
    if q.end_ms <= q.start_ms:
        raise fail("end must be after start")
    out = with_store(db, lambda s: avail(s, q))
    if as_json:
        print(json.dumps(out))
        return
    t = Table("gateway", "point", "interval s", "expected", "received", "valid", "availability", "missing hours")
    for s in out:
        t.add_row(str(s["gateway"]), s["point"], f"{s['interval_ms'] / 1000:g}" if s["interval_ms"] else "?",
                  str(s["expected"] or "?"), str(s["received"]), str(s["valid"]),
                  f"{s['availability']:.1%}" if s["availability"] is not None else "?", str(s["missing_hours"]))
    console.print(t)


@app.command()
def rollups(device: str, start: str, end: str, db: DbOpt, point: str | None = None,
            granularity: Annotated[str, typer.Option(help="hour, day or month")] = "hour",
            as_json: JsonOpt = False) -> None:
    """Statistics per point and period with HJ 76 validity."""
    from carbonlink.cloud.rollups import rollups as roll

    if granularity not in ("hour", "day", "month"):
        raise fail("--granularity must be hour, day or month")
    q = SeriesQuery(device, _ts("start", start), _ts("end", end), point)
    out = with_store(db, lambda s: roll(s, q, granularity))  # type: ignore[arg-type]
    if as_json:
        print(json.dumps(out))
        return
    t = Table("point", "start", "n", "valid n", "min", "max", "mean", "valid")
    for r in out:
        t.add_row(r["point"], r["start"], str(r["n"]), str(r["n_valid"]), f"{r['min']}", f"{r['max']}",
                  f"{r['mean']:.4g}" if r["mean"] is not None else "-", "yes" if r["valid"] else "no")
    console.print(t)


@app.command("export-influx")
def export_influx(device: str, db: DbOpt,
                  url: Annotated[str, typer.Option(envvar="INFLUX_URL", help="http://host:8086")],
                  token: Annotated[str, typer.Option(envvar="INFLUX_TOKEN")],
                  org: Annotated[str, typer.Option(envvar="INFLUX_ORG")],
                  bucket: Annotated[str, typer.Option(envvar="INFLUX_BUCKET")],
                  start: str | None = None, end: str | None = None, as_json: JsonOpt = False) -> None:
    """Copy one device's stored readings to InfluxDB 2 (needs the influx extra)."""
    try:
        from carbonlink.cloud.influx import InfluxExporter, export_range
    except ImportError:
        raise fail("influxdb-client is not installed: pip install 'carbonlink[influx]'") from None
    ex = InfluxExporter(url, token, org, bucket)
    q = ReadingQuery(device, start_ms=_ts("start", start) if start else None, end_ms=_ts("end", end) if end else None)
    n = with_store(db, lambda s: export_range(s, ex, q))
    ex.close()
    out = {"read": n, "written": ex.counters.written, "failed": ex.counters.failed, "retries": ex.counters.retries,
           "since": format_ts(q.start_ms) if q.start_ms else None}
    if as_json:
        print(json.dumps(out))
    else:
        console.print(f"{n:,} readings read, {ex.counters.written:,} written, {ex.counters.failed:,} failed")
    if ex.counters.failed:
        raise typer.Exit(1)
