"""`carbonlink rules …`: validate, list and show rule sets, and push one to a gateway's shadow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from carbonlink.commands.common import JsonOpt, emit, fail, table
from carbonlink.rules import RuleSetDoc, RuleSetError, compile_ruleset
from carbonlink.rules.compiler import CompiledSet

app = typer.Typer(help="Rules: validate, list and show rule sets; push one to a gateway.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="a rule set (YAML or JSON): {rules: [{id, version, text, ...}]}")]


def load(path: Path) -> RuleSetDoc:
    try:
        raw = path.read_text()
    except OSError as exc:
        raise fail(f"cannot read {path}: {exc}") from None
    try:
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise fail(f"{path} is not YAML or JSON: {exc}") from None
    if isinstance(data, dict) and "text" in data and "rules" not in data:
        data = {"rules": [data]}  # one rule document on its own
    try:
        return RuleSetDoc.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:20]]
        raise fail("\n".join(lines) + "\nfix the document (docs/rules.md lists every key)") from None


def compiled(path: Path, doc: RuleSetDoc, as_json: bool) -> CompiledSet:
    try:
        return compile_ruleset(doc)
    except RuleSetError as exc:
        if as_json:
            print(json.dumps({"ok": False, "errors": [e.to_dict() for e in exc.errors]}))
            raise typer.Exit(2) from None
        for e in exc.errors:
            at = f"{e.line}:{e.column}" if e.line is not None else e.where
            expected = f" (expected {' or '.join(e.expected)})" if e.expected else ""
            typer.echo(f"{path}: rule {e.rule_id} {at}: {e.message}{expected}", err=True)
        raise fail(f"{len(exc.errors)} rule(s) refused; nothing was applied") from None


@app.command()
def validate(file: FileArg, as_json: JsonOpt = False) -> None:
    """Parse and compile every rule; errors name the rule, line and column; exit 2 if any fails."""
    doc = load(file)
    cs = compiled(file, doc, as_json)
    emit({"ok": True, "hash": cs.hash, "rules": len(doc.rules), "enabled": len(cs.rules)}, as_json,
         f"{file}: valid")


@app.command("list")
def list_(file: FileArg, as_json: JsonOpt = False) -> None:
    """The rules of a set with version, state, severity, window and actions."""
    doc = load(file)
    cs = compiled(file, doc, as_json)
    by_id = {r.id: r for r in cs.rules}
    rows = [{"id": r.id, "version": r.version, "enabled": r.enabled, "severity": r.severity.value,
             "window": (w.kind if (c := by_id.get(r.id)) and (w := c.window) else "") ,
             "alert": bool(by_id.get(r.id) and by_id[r.id].is_alert),
             "actions": ",".join(a.type for a in r.actions)} for r in doc.rules]
    if as_json:
        print(json.dumps({"hash": cs.hash, "rules": rows}))
        return
    table(rows, ["id", "version", "enabled", "severity", "window", "alert", "actions"], f"{file} ({cs.hash[:12]})")


@app.command()
def show(file: FileArg, rule: Annotated[str, typer.Option("--id", help="the rule id")], as_json: JsonOpt = False
         ) -> None:
    """One rule: its text, what it compiled to (columns and their units), its actions."""
    doc = load(file)
    cs = compiled(file, doc, as_json)
    r = next((x for x in doc.rules if x.id == rule), None)
    if r is None:
        raise fail(f"no rule {rule!r} in {file}; `carbonlink rules list {file}` shows the ids")
    c = next((x for x in cs.rules if x.id == rule), None)
    info: dict[str, Any] = {"id": r.id, "version": r.version, "enabled": r.enabled, "severity": r.severity.value,
                            "hash": r.content_hash(), "text": r.text,
                            "actions": [a.model_dump(mode="json") for a in r.actions]}
    if c is not None:
        info |= {"columns": [n for n, _ in c.columns] or ["*"], "column_units": c.column_units,
                 "window": f"{c.window.kind} {c.window.size}{'' if c.window.kind == 'count' else ' ms'}"
                 if c.window else None, "group": list(c.group_keys), "alert": c.is_alert,
                 "other_points": sorted(c.refs), "derives": [d.point for d in c.derives]}
    emit(info, as_json, f"rule {rule}")


@app.command()
def push(
    file: FileArg,
    gateway: Annotated[str, typer.Option("--gateway", help="the gateway id")],
    api: Annotated[str, typer.Option("--api", envvar="CARBONLINK_API", help="the cloud API, e.g. https://cloud")],
    token: Annotated[str, typer.Option("--token", envvar="CARBONLINK_API_TOKEN",
                                       help="an operator API key or login token")],
    as_json: JsonOpt = False,
) -> None:
    """Validate locally, then set the gateway's desired rules; it applies them (offline too) and reports the hash."""
    import httpx

    doc = load(file)
    cs = compiled(file, doc, as_json)
    body = {"state": {"desired": {"rules": doc.model_dump(mode="json")}}}
    try:
        resp = httpx.patch(f"{api.rstrip('/')}/api/gateways/{gateway}/shadow", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api}: {exc}; check --api and that the cloud runs") from None
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        hint = {401: "check --token", 403: "the token needs the control permission (operator or admin)",
                404: f"no gateway {gateway!r} in your tenant"}.get(resp.status_code, "")
        raise fail(f"the cloud refused the rule set (HTTP {resp.status_code}): {detail}. {hint}".strip())
    emit({"gateway": gateway, "hash": cs.hash, "rules": len(cs.rules),
          "shadow_version": resp.json().get("version")}, as_json, "pushed")
