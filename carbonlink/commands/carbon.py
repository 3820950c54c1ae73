"""`carbonlink carbon …`: the auditor's calculator, activity-data checks and reports.

``formula`` needs no extra (the formulas import only the standard library); ``report`` needs the
cloud extra for the PDF library and imports it only when it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .common import JsonOpt, emit, fail, out

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
