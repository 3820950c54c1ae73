"""Rules through the API: versioned rules, rule-set versions, validation, push to gateways, delivery status.

Everything is the caller's tenant's. Reading needs the read permission (every role); changes need
control (admin, operator). A rule that does not parse, names an unknown function or unit, or (once the
tenant has data) a point no device has, is refused with 422 and ``errors``: rule, line, column, what was
expected. Every change is a new rule version and a new rule-set version (who, when, content hash).
Alerts, silences and derived readings are in cloud/routes_alerts.py, included from here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from carbonlink.kernel.events import Severity
from carbonlink.kernel.ids import ID_PATTERN
from carbonlink.rules import CompiledRule, RuleDoc, RuleError, compile_rule
from carbonlink.rules.document import NOTICES, RULE_ID, Action, Notice, WebhookAction

from .auth import Controller, Principal, Reader, not_found
from .shadows import ShadowError, ShadowService
from .store import Store
from .store.rules_model import Placement, RuleRecord, RulesConflict, RuleSetRecord, RuleSetTooLarge
from .webhook_guard import TargetPolicy, parse_networks

if TYPE_CHECKING:
    from .rules_service import RulesService

PROBLEM = "application/problem+json"
RuleId = Annotated[str, Path(pattern=RULE_ID)]
GatewayId = Annotated[str, Field(pattern=ID_PATTERN)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuleBody(Strict):
    text: str = Field(min_length=1, max_length=8192, description="the rule (docs/rules.md)")
    enabled: bool = True
    severity: Severity = Severity.WARNING
    description: str = Field(default="", max_length=500)
    actions: list[Action] = Field(default_factory=list, max_length=10)
    notify_on: list[Notice] = Field(default_factory=lambda: list(NOTICES))
    placement: Placement = Field(default="both", description="edge: gateways only; cloud: the cloud only; both:"
                                 " gateways evaluate and notify, the cloud evaluates and records")
    base_version: int | None = Field(default=None, ge=0, le=2**31 - 1,
                                     description="the version you edited; if the rule moved on since: 409")
    comment: str = Field(default="", max_length=300)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="ignored: the cloud numbers versions")


class RuleCreate(RuleBody):
    id: str = Field(pattern=RULE_ID)


class RuleCheck(RuleBody):
    id: str = Field(default="draft", pattern=RULE_ID)


class PushRequest(Strict):
    gateways: list[GatewayId] | None = Field(default=None, max_length=1000,
                                             description="default: every gateway of the tenant that is not revoked")
    version: int | None = Field(default=None, ge=1, le=2**31 - 1, description="a set version; default the newest")


class RulePublic(BaseModel):
    id: str
    version: int
    text: str | None = None
    enabled: bool | None = None
    severity: str | None = None
    description: str | None = None
    actions: list[dict[str, Any]] = Field(default_factory=list)
    notify_on: list[str] = Field(default_factory=list)
    placement: str
    hash: str
    deleted: bool
    created_ms: int
    created_by: str
    comment: str


class RuleSetPublic(BaseModel):
    version: int
    hash: str = Field(description="the gateway set's SHA-256: what gateways report they run")
    cloud_hash: str
    rules: int
    silences: int
    created_ms: int
    created_by: str
    reason: str
    doc: dict[str, Any] | None = None


class RuleSaved(BaseModel):
    rule: RulePublic
    set: RuleSetPublic | None = Field(description="the rule-set version this change made; null when unchanged")


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    title = {409: "Conflict", 413: "Content too large", 422: "Invalid request"}.get(status, "Request error")
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                        status_code=status, media_type=PROBLEM)


def refused(errors: list[dict[str, Any]]) -> JSONResponse:
    e = errors[0]
    at = f" at line {e['line']}, column {e['column']}" if e.get("line") is not None else ""
    expected = f" (expected {' or '.join(e['expected'])})" if e.get("expected") else ""
    return problem(422, f"rule {e['rule']}{at}: {e['message']}{expected}", errors=errors)


def _public(rec: RuleRecord) -> RulePublic:
    return RulePublic(**rec.public())


def _set_public(rs: RuleSetRecord | None, with_doc: bool = False) -> RuleSetPublic | None:
    return RuleSetPublic(**rs.public(with_doc)) if rs is not None else None


def _now() -> int:
    return int(time.time() * 1000)


def create_rules_router(store: Store, *, shadows: ShadowService, rules: RulesService | None = None,
                        policy: TargetPolicy | None = None) -> APIRouter:
    from .routes_alerts import create_alerts_router

    r = APIRouter(tags=["rules"])
    policy = policy or TargetPolicy()

    async def checked(p: Principal, rule_id: str, body: RuleBody) -> tuple[RuleDoc, CompiledRule | None,
                                                                          list[dict[str, Any]]]:
        """The rule as a document, compiled against the tenant's points, and the errors that refuse it."""
        fields = body.model_dump(exclude={"placement", "base_version", "comment", "version", "id"})
        doc = RuleDoc.model_validate({"id": rule_id, **fields})  # the body model checked the same fields
        try:
            compiled = compile_rule(doc, await store.rules.catalogue(p.tenant))
        except RuleError as exc:
            return doc, None, [exc.to_dict()]
        if body.placement == "cloud":  # the cloud calls these: never its own network
            for i, a in enumerate(doc.actions):
                host = (urlsplit(a.url).hostname or "") if isinstance(a, WebhookAction) else ""
                why = policy.check_host(host) if host else None
                if why:
                    return doc, None, [{"rule": rule_id, "where": f"actions.{i}.url", "line": None, "column": None,
                                        "message": f"{why}; the cloud does not call it (see webhook_allow)",
                                        "expected": []}]
        return doc, compiled, []

    async def save(p: Principal, rule_id: str, body: RuleBody) -> Any:
        doc, _, errors = await checked(p, rule_id, body)
        if errors:
            return refused(errors)
        try:
            rec, rs = await store.rules.save_rule(p.tenant, doc, body.placement, by=p.subject, now=_now(),
                                                  base_version=body.base_version, comment=body.comment)
        except RulesConflict as exc:
            return problem(409, str(exc))
        except RuleSetTooLarge as exc:
            return problem(422, str(exc))
        if rs is not None and rules is not None:
            rules.poke()
        out = RuleSaved(rule=_public(rec), set=_set_public(rs))
        status = 201 if rs is not None and rec.version == 1 else 200
        return JSONResponse(out.model_dump(mode="json"), status_code=status)

    # --- rules ---------------------------------------------------------------------------------------

    @r.get("/api/rules", summary="The tenant's current rules")
    async def list_rules(p: Reader, enabled: bool | None = None, placement: Placement | None = None,
                         q: Annotated[str | None, Query(max_length=100, description="in id, text, description")] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 100,
                         offset: Annotated[int, Query(ge=0, le=100_000)] = 0) -> dict[str, Any]:
        found = await store.rules.rules(p.tenant, enabled=enabled, placement=placement, search=q)
        current = await store.rules.current_set(p.tenant)
        items = [_public(x).model_dump() for x in found[offset:offset + limit]]
        return {"items": items, "count": len(items), "total": len(found),
                "set": current.public() if current else None}

    @r.post("/api/rules", status_code=201, response_model=RuleSaved,
            summary="Create a rule, or save a new version of it (admin, operator)",
            responses={200: {"model": RuleSaved, "description": "a new version, or unchanged (set: null)"},
                       409: {"description": "base_version is not the current version"}})
    async def create_rule(p: Controller, body: RuleCreate) -> Any:
        return await save(p, body.id, body)

    @r.post("/api/rulesets/validate", summary="Check a rule without saving it: errors with line and column")
    async def validate_rule(p: Reader, body: RuleCheck) -> dict[str, Any]:
        doc, c, errors = await checked(p, body.id, body)
        if c is None:
            return {"ok": False, "errors": errors}
        return {"ok": True, "errors": [], "hash": doc.content_hash(), "columns": [n for n, _ in c.columns] or ["*"],
                "column_units": c.column_units, "alert": c.is_alert, "window": c.window.kind if c.window else None,
                "other_points": sorted(c.refs), "derives": [d.point for d in c.derives]}

    @r.get("/api/rules/{rule}", response_model=RulePublic, summary="A rule: its current version, or ?version=N")
    async def get_rule(p: Reader, rule: RuleId,
                       version: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> RulePublic:
        rec = await store.rules.rule(p.tenant, rule, version)
        if rec is None or (version is None and rec.deleted):
            raise not_found("rule", rule if version is None else f"{rule} v{version}")
        return _public(rec)

    @r.put("/api/rules/{rule}", response_model=RuleSaved, summary="Save a new version of a rule (admin, operator)",
           responses={201: {"model": RuleSaved, "description": "created"}, 409: {"description": "stale base_version"}})
    async def put_rule(p: Controller, rule: RuleId, body: RuleBody) -> Any:
        return await save(p, rule, body)

    @r.delete("/api/rules/{rule}", summary="Delete a rule: recorded as a version without a document")
    async def delete_rule(p: Controller, rule: RuleId,
                          base_version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None) -> Any:
        try:
            got = await store.rules.delete_rule(p.tenant, rule, by=p.subject, now=_now(), base_version=base_version)
        except RulesConflict as exc:
            return problem(409, str(exc))
        if got is None:
            raise not_found("rule", rule)
        if rules is not None:
            rules.poke()
        return RuleSaved(rule=_public(got[0]), set=_set_public(got[1]))

    @r.get("/api/rules/{rule}/versions", summary="Every version of a rule, newest first")
    async def rule_versions(p: Reader, rule: RuleId, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                            before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> dict[str, Any]:
        found = await store.rules.versions(p.tenant, rule, limit=limit, before=before)
        if not found and before is None:
            raise not_found("rule", rule)
        items = [_public(x).model_dump() for x in found]
        return {"items": items, "count": len(items),
                "next_before": found[-1].version if len(found) == limit else None}

    # --- rule sets, push and status ------------------------------------------------------------------

    @r.get("/api/rulesets", summary="Rule-set versions, newest first")
    async def list_sets(p: Reader, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                        before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> dict[str, Any]:
        found = await store.rules.set_versions(p.tenant, limit=limit, before=before)
        items = [x.public() for x in found]
        return {"items": items, "count": len(items), "next_before": found[-1].version if len(found) == limit else None}

    @r.get("/api/rulesets/status", summary="Which set each gateway was asked to run and which it runs")
    async def status(p: Reader) -> dict[str, Any]:
        gateways = [g for g in await store.registry.list_gateways(p.tenant) if not g["revoked"]]
        rows = []
        for g in gateways:
            shadow = await shadows.get(g["id"])
            desired = (shadow["state"]["desired"].get("rules") or {}).get("hash")
            reported = shadow["state"]["reported"].get("rules") or {}
            rows.append({"gateway": g["id"], "site": g["site"], "status": g["status"], "desired": desired,
                         "reported": reported.get("hash"), "in_sync": desired is not None
                         and desired == reported.get("hash"), "rules": reported.get("count"),
                         "disabled": reported.get("disabled") or {}, "errors": reported.get("errors") or [],
                         "rejected": shadow["rejected"].get("rules")})
        versions = await store.rules.sets_by_hash(p.tenant, [h for x in rows for h in (x["desired"], x["reported"])
                                                             if h])
        for x in rows:
            x["desired_version"], x["reported_version"] = versions.get(x["desired"]), versions.get(x["reported"])
        current = await store.rules.current_set(p.tenant)
        return {"set": current.public() if current else None, "gateways": rows,
                "cloud": rules.state(p.tenant) if rules is not None else {"enabled": False}}

    @r.post("/api/rulesets/push", summary="Set gateways' desired rules to a set by hash (admin, operator)")
    async def push(p: Controller, body: PushRequest) -> dict[str, Any]:
        rs = await store.rules.set_version(p.tenant, body.version) if body.version is not None else \
            await store.rules.current_set(p.tenant)
        if rs is None:
            raise not_found("rule set", str(body.version) if body.version else "(none yet: create a rule first)")
        mine = {g["id"]: g for g in await store.registry.list_gateways(p.tenant)}
        targets = body.gateways if body.gateways is not None else [g for g, x in mine.items() if not x["revoked"]]
        for gw in targets:
            if gw not in mine:
                raise not_found("gateway", gw)
        pushed, failed = [], []
        for gw in targets:
            try:
                out = await shadows.update(gw, desired={"rules": {"hash": rs.hash}})
                pushed.append({"gateway": gw, "shadow_version": out["version"]})
            except ShadowError as exc:
                failed.append({"gateway": gw, "status": exc.status, "error": exc.message})
        await store.audit.record(p.subject, "rules.push", tenant=p.tenant, subject=f"set v{rs.version}",
                                 detail={"hash": rs.hash, "gateways": targets[:100]}, ts_ms=_now())
        return {"version": rs.version, "hash": rs.hash, "pushed": pushed, "failed": failed}

    @r.get("/api/rulesets/current", response_model=RuleSetPublic, summary="The newest set, with its rules")
    async def current_set(p: Reader) -> RuleSetPublic:
        rs = await store.rules.current_set(p.tenant, with_doc=True)
        if rs is None:
            raise not_found("rule set", "(none yet)")
        return RuleSetPublic(**rs.public(True))

    @r.get("/api/rulesets/{version}", response_model=RuleSetPublic, summary="One set version, with its rules")
    async def get_set(p: Reader, version: Annotated[int, Path(ge=1, le=2**31 - 1)]) -> RuleSetPublic:
        rs = await store.rules.set_version(p.tenant, version)
        if rs is None:
            raise not_found("rule set", str(version))
        return RuleSetPublic(**rs.public(True))

    async def push_following(p: Principal) -> list[str]:
        """After a silence: push the new set to the gateways that were following the tenant's sets."""
        mine = [g["id"] for g in await store.registry.list_gateways(p.tenant) if not g["revoked"]]
        follow: list[str] = []
        for gw in mine:
            h = ((await shadows.get(gw))["state"]["desired"].get("rules") or {}).get("hash")
            if h and await store.rules.sets_by_hash(p.tenant, [h]):
                follow.append(gw)
        if follow:
            await push(p, PushRequest(gateways=follow))
        return follow

    r.include_router(create_alerts_router(store, rules=rules, push_following=push_following))
    return r


def policy_of(settings: Any) -> TargetPolicy:
    return TargetPolicy(parse_networks(settings.webhook_allow), settings.webhook_allow_private)

