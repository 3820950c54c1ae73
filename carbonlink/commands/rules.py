"""`carbonlink rules …`: validate, list and show rule files; push sets to gateways; alerts and silences.

``validate``, ``list`` and ``show`` work on files, offline. The rest talk to the cloud API (``--api``,
``--token`` or ``CARBONLINK_API``, ``CARBONLINK_API_TOKEN``): ``push``, ``alerts``, ``ack``, ``clear``,
``silence``, ``silences``, ``unsilence``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError

from carbonlink.commands.common import JsonOpt, emit, fail, table
from carbonlink.kernel.wire import format_ts
from carbonlink.rules import RuleSetDoc, RuleSetError, compile_ruleset
from carbonlink.rules.compiler import CompiledSet

app = typer.Typer(help="Rules: validate, list and show rule sets; push them to gateways; alerts and silences.",
                  no_args_is_help=True)

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


ApiOpt = Annotated[str, typer.Option("--api", envvar="CARBONLINK_API", help="the cloud API, e.g. https://cloud")]
TokenOpt = Annotated[str, typer.Option("--token", envvar="CARBONLINK_API_TOKEN",
                                       help="an API key or login token (changes need operator or admin)")]


def call(method: str, api: str, token: str, path: str, *, json_body: Any = None,
         params: Any = None) -> Any:
    """One API call; a refusal or an unreachable API ends the command with what to do next."""
    import httpx

    try:
        resp = httpx.request(method, f"{api.rstrip('/')}{path}", json=json_body, params=params, timeout=30,
                             headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {api}: {exc}; check --api and that the cloud runs") from None
    if resp.status_code >= 400:
        try:
            body = resp.json()
            detail = body.get("detail", resp.text)
        except ValueError:
            body, detail = {}, resp.text
        for e in (body.get("errors") or [])[:10] if isinstance(body, dict) else []:
            at = f"{e.get('line')}:{e.get('column')}" if e.get("line") is not None else e.get("where", "")
            typer.echo(f"rule {e.get('rule')} {at}: {e.get('message')}", err=True)
        hint = {401: "check --token", 403: "the token needs operator or admin for changes",
                404: "not in your tenant (or no such thing)", 409: "it changed meanwhile: look again"}.get(
                    resp.status_code, "")
        raise fail(f"the cloud refused (HTTP {resp.status_code}): {detail}. {hint}".strip())
    return resp.json() if resp.content else None


@app.command()
def push(
    file: Annotated[Path | None, typer.Argument(help="a rule set file; without it, the tenant's rule set")] = None,
    gateway: Annotated[list[str] | None, typer.Option("--gateway", help="a gateway id (repeat for several);"
                                                      " without a file, default every gateway")] = None,
    version: Annotated[int | None, typer.Option("--version", help="a set version (default the newest)")] = None,
    api: ApiOpt = "", token: TokenOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Deliver a rule set: a file to one gateway, or the tenant's set to gateways; they fetch it by hash,
    apply it (offline too) and report the hash."""
    if not api or not token:
        raise fail("give --api and --token (or CARBONLINK_API and CARBONLINK_API_TOKEN)")
    if file is None:
        got = call("POST", api, token, "/api/rulesets/push", json_body={"gateways": gateway or None,
                                                                        "version": version})
        if as_json:
            print(json.dumps(got))
            return
        rows = [{**p, "result": "pushed"} for p in got["pushed"]] + \
            [{"gateway": f["gateway"], "result": f"failed: {f['error']}"} for f in got["failed"]]
        table(rows, ["gateway", "shadow_version", "result"], f"rule set v{got['version']} ({got['hash'][:12]})")
        if got["failed"]:
            raise typer.Exit(1)
        return
    if not gateway or len(gateway) != 1:
        raise fail("a file goes to one gateway: give exactly one --gateway")
    doc = load(file)
    cs = compiled(file, doc, as_json)
    body = {"state": {"desired": {"rules": doc.model_dump(mode="json")}}}
    got = call("PATCH", api, token, f"/api/gateways/{gateway[0]}/shadow", json_body=body)
    emit({"gateway": gateway[0], "hash": cs.hash, "rules": len(cs.rules), "shadow_version": got.get("version")},
         as_json, "pushed")


def _ts(ms: int | None) -> str:
    return format_ts(ms) if ms is not None else ""


@app.command()
def alerts(
    state: Annotated[list[str] | None, typer.Option("--state", help="open, raised, acknowledged, cleared (repeat)")]
    = None,
    severity: Annotated[list[str] | None, typer.Option("--severity", help="info, warning, critical (repeat)")] = None,
    rule: Annotated[str | None, typer.Option("--rule")] = None,
    gateway: Annotated[str | None, typer.Option("--gateway")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    api: ApiOpt = "", token: TokenOpt = "", as_json: JsonOpt = False,
) -> None:
    """Alerts, newest first, with counts by state."""
    params: list[tuple[str, Any]] = [("limit", limit)]
    params += [("state", x) for x in state or ["open"]] + [("severity", x) for x in severity or []]
    params += [(k, v) for k, v in (("rule", rule), ("gateway", gateway), ("device", device)) if v]
    got = call("GET", api, token, "/api/alerts", params=params)
    if as_json:
        print(json.dumps(got))
        return
    rows = [{"id": a["id"][:12], "state": a["state"], "severity": a["severity"], "rule": a["rule"],
             "subject": a["subject"], "since": _ts(a["since_ms"]),
             "by": a["acked_by"] or a["cleared_by"] or "", "silenced": a["silenced_by"] or ""} for a in got["items"]]
    c = got["counts"]["by_state"]
    table(rows, ["id", "state", "severity", "rule", "subject", "since", "by", "silenced"],
          f"alerts: {c['raised']} raised, {c['acknowledged']} acknowledged, {c['cleared']} cleared")


def _one_alert(api: str, token: str, alert: str) -> str:
    """The full id of an alert given by its first characters (as the table shows them)."""
    if len(alert) == 32:
        return alert
    got = call("GET", api, token, "/api/alerts", params={"limit": 500, "state": ["open", "cleared"]})
    found = [a["id"] for a in got["items"] if a["id"].startswith(alert)]
    if len(found) != 1:
        raise fail(f"{len(found)} recent alerts start with {alert!r}; give more of the id")
    return str(found[0])


def _operate(what: str, alert: str, note: str, api: str, token: str, as_json: bool) -> None:
    full = _one_alert(api, token, alert)
    got = call("POST", api, token, f"/api/alerts/{full}/{what}", json_body={"note": note})
    emit({k: got[k] for k in ("id", "state", "rule", "subject", "acked_by", "acked_ms", "cleared_by", "cleared_ms",
                              "note")}, as_json, f"alert {full[:12]}")


NoteOpt = Annotated[str, typer.Option("--note", help="what you did or why")]
AlertArg = Annotated[str, typer.Argument(help="the alert id (or its first characters)")]


@app.command()
def ack(alert: AlertArg, note: NoteOpt = "", api: ApiOpt = "", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Acknowledge an open alert (operator, admin)."""
    _operate("ack", alert, note, api, token, as_json)


@app.command()
def clear(alert: AlertArg, note: NoteOpt = "", api: ApiOpt = "", token: TokenOpt = "",
          as_json: JsonOpt = False) -> None:
    """Clear an alert by hand (operator, admin); alerts also clear by themselves when the condition ends."""
    _operate("clear", alert, note, api, token, as_json)


def duration_s(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not m:
        raise fail(f"--for {text!r}: give a duration like 90m, 2h or 1d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@app.command()
def silence(
    reason: Annotated[str, typer.Option("--reason", help="why: shown with every silenced alert")],
    for_: Annotated[str | None, typer.Option("--for", help="how long, e.g. 90m, 2h, 1d")] = None,
    until: Annotated[str | None, typer.Option("--until", help="the end: 2026-03-12T18:00:00.000Z or epoch ms")]
    = None,
    rule: Annotated[str | None, typer.Option("--rule")] = None,
    gateway: Annotated[str | None, typer.Option("--gateway")] = None,
    device: Annotated[str | None, typer.Option("--device")] = None,
    point: Annotated[str | None, typer.Option("--point")] = None,
    push_: Annotated[bool, typer.Option("--push/--no-push", help="push the new set to the gateways at once")] = True,
    api: ApiOpt = "", token: TokenOpt = "", as_json: JsonOpt = False,
) -> None:
    """Silence notifications for a maintenance window (alerts are still recorded, marked silenced)."""
    if (for_ is None) == (until is None):
        raise fail("give --for or --until (one of them)")
    body = {"reason": reason, "rule": rule, "gateway": gateway, "device": device, "point": point,
            "duration_s": duration_s(for_) if for_ else None, "end": until}
    got = call("POST", api, token, "/api/silences", json_body={k: v for k, v in body.items() if v is not None},
               params={"push": str(push_).lower()})
    s = got["silence"]
    emit({"id": s["id"], "rule": s["rule"] or "every rule", "gateway": s["gateway"] or "every gateway",
          "device": s["device"] or "", "point": s["point"] or "", "from": _ts(s["start_ms"]), "until": _ts(s["end_ms"]),
          "set_version": got["set"]["version"], "pushed": ",".join(got["pushed"])}, as_json, "silence")


@app.command()
def silences(active: Annotated[bool, typer.Option("--active", help="only those in force now")] = False,
             api: ApiOpt = "", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """Silences, newest first."""
    got = call("GET", api, token, "/api/silences", params={"active": "true"} if active else None)
    if as_json:
        print(json.dumps(got))
        return
    rows = [{**s, "from": _ts(s["start_ms"]), "until": _ts(s["end_ms"]),
             "ended": f"{_ts(s['ended_ms'])} by {s['ended_by']}" if s["ended_ms"] else ""} for s in got["items"]]
    table(rows, ["id", "rule", "gateway", "device", "from", "until", "active", "reason", "ended"], "silences")


@app.command()
def unsilence(silence_id: Annotated[str, typer.Argument(help="the silence id")],
              api: ApiOpt = "", token: TokenOpt = "", as_json: JsonOpt = False) -> None:
    """End a silence now (and push the new set to the gateways)."""
    got = call("DELETE", api, token, f"/api/silences/{silence_id}")
    emit({"id": got["silence"]["id"], "ended": _ts(got["silence"]["ended_ms"]), "by": got["silence"]["ended_by"],
          "pushed": ",".join(got["pushed"])}, as_json, "silence ended")
