"""`carbonlink carbon …`: the auditor's calculator, activity-data checks, reports and accounts.

``formula`` needs no extra (the formulas import only the standard library); ``report`` and the
commands with ``--db`` (register-stack, account, accounts, sources, allowance) need the cloud extra
and import it only when they run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .common import DbOpt, JsonOpt, emit, fail, out, with_store

app = typer.Typer(help="Carbon accounting: formulas, accounts, reports.", no_args_is_help=True,
                  add_completion=False)


@app.command("formula")
def formula(name: Annotated[str | None, typer.Argument(help="formula name (see --list)")] = None,
            pairs: Annotated[list[str] | None, typer.Argument(help="inputs as key=value", show_default=False)] = None,
            list_: Annotated[bool, typer.Option("--list", help="list every formula with its keys")] = False,
            as_json: JsonOpt = False) -> None:
    """Compute one formula by hand: result, unit and the standard it follows."""
    from carbonlink.cloud.carbon.calculator import FORMULAS, evaluate, parse_pairs
    from carbonlink.cloud.carbon.errors import CarbonInputError

    if list_ or name is None:
        rows = [x.describe() for x in FORMULAS.values()]
        if as_json:
            print(json.dumps(rows, ensure_ascii=False, indent=1))
            return
        emit([{"name": r["name"], "keys": " ".join(k["name"] + ("?" if k["optional"] else "") for k in r["keys"]),
               "unit": r["unit"], "standard": r["standard"]} for r in rows], False, "formulas",
             ["name", "keys", "unit", "standard"])
        out.print("keys marked ? are optional; run `carbonlink carbon formula NAME key=value …`")
        return
    try:
        answer = evaluate(name, parse_pairs(pairs or []))
    except CarbonInputError as exc:
        raise fail(escape(str(exc))) from None
    if as_json:
        print(json.dumps(answer, ensure_ascii=False, sort_keys=True))
        return
    out.print(f"{answer['formula']} = [bold]{answer['result']}[/] {answer['unit']}", soft_wrap=True)
    out.print(f"  {answer['equation']}  ({answer['standard']})", soft_wrap=True, highlight=False)
    out.print(f"  unrounded {answer['unrounded']}; {answer['rounding']}", soft_wrap=True, highlight=False)
    if "factor" in answer:
        fa = answer["factor"]
        out.print(f"  factor {fa['key']} = {fa['value']} {fa['unit']} ({fa['source']}; {fa['status']})",
                  soft_wrap=True, highlight=False)


@app.command("activity-check")
def activity_check(path: Annotated[Path, typer.Argument(help="activity-data CSV to check")],
                   as_json: JsonOpt = False) -> None:
    """Check a fuel / activity-data CSV row by row; exit 1 with every row error when any row is bad."""
    from carbonlink.cloud.carbon.activity import parse_activity_csv

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc.strerror}") from None
    result = parse_activity_csv(data)
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False, sort_keys=True))
    else:
        emit([r.as_dict() for r in result.rows], False, f"{len(result.rows)} valid rows",
             ["row", "date", "site", "source", "fuel", "quantity", "unit", "co2_t"])
        for e in result.errors:
            out.print(f"[red]row {e.row}[/] {e.column}: {e.problem}. Fix: {e.fix}", soft_wrap=True)
    if result.errors:
        raise typer.Exit(1)


@app.command("report")
def report(accounts: Annotated[Path, typer.Option("--accounts", help="accounts JSON (as `--format json` writes)")],
           fmt: Annotated[str, typer.Option("--format", help="csv, json or pdf")] = "pdf",
           lang: Annotated[str, typer.Option("--lang", help="zh-CN or en")] = "zh-CN",
           output: Annotated[Path | None, typer.Option("--out", help="file to write (default: stdout for "
                                                                      "csv/json)")] = None) -> None:
    """Render an emissions report (CSV, JSON or PDF, zh-CN or en) from an accounts file."""
    from carbonlink.cloud.carbon.accounts import accounts_from_json
    from carbonlink.cloud.carbon.errors import CarbonInputError
    from carbonlink.cloud.carbon.report import LANGS, render

    if lang not in LANGS:
        raise fail(f"--lang {lang!r} is not one of {', '.join(LANGS)}")
    if fmt not in ("csv", "json", "pdf"):
        raise fail(f"--format {fmt!r} is not csv, json or pdf")
    if fmt == "pdf" and output is None:
        raise fail("a PDF needs --out FILE.pdf")
    try:
        acc = accounts_from_json(accounts.read_bytes())
        data = render(acc, fmt, lang)
    except OSError as exc:
        raise fail(f"cannot read {accounts}: {exc.strerror}") from None
    except CarbonInputError as exc:
        raise fail(escape(str(exc))) from None
    if output is None:
        typer.echo(data.decode("utf-8"), nl=False)
    else:
        output.write_bytes(data)
        out.print(f"wrote {output} ({len(data):,} bytes)")


def _ts(name: str, value: str) -> int:
    from carbonlink.kernel.wire import WireError, parse_ts

    try:
        return parse_ts(value)
    except (WireError, ValueError, OverflowError):
        pass
    if value.isdigit() and len(value) <= 15:
        return int(value)
    raise fail(f"--{name} must be YYYY-MM-DDTHH:MM:SS.mmmZ or epoch milliseconds")


@app.command("register-stack")
def register_stack_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")],
                       site: Annotated[str, typer.Option(help="site id")],
                       gateway: Annotated[str, typer.Option(help="the gateway that publishes the stack")],
                       device: Annotated[str, typer.Option(help="the CEMS device id")],
                       source_id: Annotated[str, typer.Option("--source-id", help="the stack's id in the accounts")],
                       source_type: Annotated[str, typer.Option(help="reference-O2 source type")] = "coal_boiler",
                       pressure: Annotated[str, typer.Option(help="the pressure point is 'absolute' or "
                                                                  "'static'")] = "absolute") -> None:
    """Account a CEMS stack: map its series (point map 'cems' names) to the formulas' inputs."""
    from carbonlink.cloud.carbon import sqlstore
    from carbonlink.cloud.carbon.cems import StackConfig
    from carbonlink.cloud.carbon.errors import CarbonInputError

    async def go(store: Any) -> None:
        try:
            await sqlstore.register_stack(store.db, tenant=tenant, site=site, gateway=gateway, device=device,
                                          config=StackConfig(source_id, source_type), pressure_kind=pressure)
        except CarbonInputError as exc:
            raise fail(escape(str(exc))) from None
        out.print(f"registered {source_id} ({gateway}/{device}) for {tenant}/{site}")

    with_store(db, go)


@app.command("account")
def account_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")],
                start: Annotated[str, typer.Option(help="ISO UTC or epoch ms")],
                end: Annotated[str, typer.Option(help="ISO UTC or epoch ms")], as_json: JsonOpt = False) -> None:
    """(Re)compute the tenant's stack-hours, solar and forest hours from the stored readings."""
    from carbonlink.cloud.carbon import assets

    s, e = _ts("start", start), _ts("end", end)

    async def go(store: Any) -> dict[str, int]:
        n = await store.db.fetchval("SELECT count(*) FROM carbon_sources WHERE tenant = ?", tenant)
        if not n:
            raise fail(f"tenant {tenant!r} has no registered sources; run `carbonlink carbon register-stack` first")
        return await assets.account_tenant(store.db, tenant, s, e)

    emit(with_store(db, go), as_json, "hours by status (stacks; assets as 'asset …')")


@app.command("accounts")
def accounts_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")],
                 start: Annotated[str, typer.Option(help="ISO UTC or epoch ms")],
                 end: Annotated[str, typer.Option(help="ISO UTC or epoch ms")],
                 granularity: Annotated[str, typer.Option(help="day, month or year")] = "month",
                 as_json: JsonOpt = False) -> None:
    """Scope-1 emissions, pollutant mass and coverage per site and period."""
    from carbonlink.cloud.carbon import sqlstore
    from carbonlink.cloud.carbon.errors import CarbonInputError

    s, e = _ts("start", start), _ts("end", end)

    async def go(store: Any) -> list[dict[str, Any]]:
        try:
            return await sqlstore.periods(store.db, tenant, granularity, s, e)
        except CarbonInputError as exc:
            raise fail(escape(str(exc))) from None

    rows = with_store(db, go)
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    emit([{"site": r["site"], "period": r["period"], "scope1_t": r["scope1_t"],
           "valid/subst/missing h": "/".join(str(r["coverage"][k]) for k in ("valid", "substituted", "missing"))}
          for r in rows], False, f"{tenant}: accounts by {granularity}")


@app.command("sources")
def sources_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")], as_json: JsonOpt = False) -> None:
    """The tenant's accounted sources."""

    async def go(store: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await store.db.fetch(
            "SELECT source_id, site, kind FROM carbon_sources WHERE tenant = ? ORDER BY source_id", tenant)]

    emit(with_store(db, go), as_json, f"{tenant}: sources", ["source_id", "site", "kind"])


@app.command("allowance")
def allowance_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")],
                  year: Annotated[int, typer.Option(help="calendar year")],
                  tonnes: Annotated[str, typer.Option("--t", help="allowance in t CO2")]) -> None:
    """Set a tenant's allowance (quota) for a year; the forecast compares against it."""
    from decimal import Decimal, InvalidOperation

    from carbonlink.cloud.carbon import sqlstore
    from carbonlink.cloud.carbon.errors import CarbonInputError

    try:
        t = Decimal(tonnes)
    except InvalidOperation:
        raise fail(f"--t {tonnes!r} is not a number of tonnes") from None

    async def go(store: Any) -> None:
        try:
            await sqlstore.set_allowance(store.db, tenant, year, t)
        except CarbonInputError as exc:
            raise fail(escape(str(exc))) from None
        out.print(f"{tenant} {year}: allowance {t} t CO2")

    with_store(db, go)


@app.command("forecast")
def forecast_cmd(db: DbOpt, tenant: Annotated[str, typer.Option(help="tenant id")],
                 as_of: Annotated[str, typer.Option("--as-of", help="YYYY-MM-DD, the last day with data")],
                 as_json: JsonOpt = False) -> None:
    """Forecast the year's covered emissions against the allowance; record warnings at the thresholds."""
    import datetime as dt
    import time

    from carbonlink.cloud.carbon import sqlstore
    from carbonlink.cloud.carbon.errors import CarbonInputError

    try:
        day = dt.date.fromisoformat(as_of)
    except ValueError:
        raise fail("--as-of must be YYYY-MM-DD") from None

    async def go(store: Any) -> dict[str, Any]:
        try:
            f = await sqlstore.forecast(store.db, tenant, day.year, day.month, day.day)
        except CarbonInputError as exc:
            raise fail(escape(str(exc))) from None
        new = await sqlstore.raise_warnings(store.db, tenant, f, at_ms=int(time.time() * 1000))
        return {**f.as_dict(), "new_warnings": new}

    res = with_store(db, go)
    if as_json:
        print(json.dumps(res, ensure_ascii=False))
        return
    out.print(f"{tenant} {day.year}: forecast {res['forecast_t']} t of {res['allowance_t']} t "
              f"({float(res['ratio']) * 100:.1f} %), level {res['level'] or 'none'}", highlight=False)
    for w in res["new_warnings"]:
        out.print(f"[yellow]new warning[/] {w['level']} ({w['severity']})")
