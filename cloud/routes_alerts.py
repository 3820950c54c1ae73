"""Alerts, silences and derived readings through the API (included by cloud/routes_rules.py).

Lists are what a console needs: filters, keyset pages newest first (``next_cursor``), and counts by
state and open ones by severity under the same filters. Acknowledge and clear need control (admin,
operator) and are refused with 409 when they do not fit the alert's state; every change is published
on ``cl/{site}/{gateway}/alerts``. A silence is stored, put in a new rule-set version (so gateways
suppress the same notifications) and, unless ``push=false``, pushed to the gateways that follow the
tenant's sets.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from carbonlink.kernel.events import Severity
from carbonlink.kernel.ids import ID_PATTERN
from carbonlink.rules.alerts import LifecycleError
from carbonlink.rules.document import RULE_ID

from .auth import Controller, Principal, Reader, not_found, tenant_gateway
from .routes_data import ts_param
from .routes_resources import PATH_TEXT
from .store import Store
from .store.rules_model import (
    AlertQuery,
    RuleSetTooLarge,
    SilenceRecord,
    decode_alert_cursor,
    encode_alert_cursor,
)

if TYPE_CHECKING:
    from .rules_service import RulesService

AlertId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
SilenceId = Annotated[str, Path(pattern=ID_PATTERN)]
_GW = ID_PATTERN
MAX_SILENCE_MS = 90 * 86_400_000
StateFilter = Literal["raised", "acknowledged", "cleared", "open"]
StateQ = Annotated[list[StateFilter] | None, Query(description="repeat for several; open = raised or acknowledged")]
SeverityQ = Annotated[list[Severity] | None, Query(description="repeat for several")]
RuleQ = Annotated[str | None, Query(pattern=RULE_ID)]
GatewayQ = Annotated[str | None, Query(pattern=_GW)]
DeviceQ = Annotated[str | None, Query(max_length=128)]
SubjectQ = Annotated[str | None, Query(max_length=400, description="a subject prefix by whole segments")]
TimeQ = Annotated[str | None, Query(max_length=40, description="ISO UTC with ms or epoch ms")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OperatorNote(Strict):
    note: str = Field(default="", max_length=500)


class SilenceCreate(Strict):
    rule: str | None = Field(default=None, pattern=RULE_ID, description="one rule; default every rule")
    gateway: str | None = Field(default=None, pattern=_GW, description="one gateway; default every gateway")
    device: str | None = Field(default=None, pattern=PATH_TEXT)
    point: str | None = Field(default=None, pattern=PATH_TEXT, description="needs device")
    start: str | None = Field(default=None, max_length=40, description="ISO UTC with ms or epoch ms; default now")
    end: str | None = Field(default=None, max_length=40, description="give end or duration_s")
    duration_s: int | None = Field(default=None, ge=60, le=MAX_SILENCE_MS // 1000)
    reason: str = Field(min_length=1, max_length=500)


def _now() -> int:
    return int(time.time() * 1000)


def _derived_cursor(row: dict[str, Any]) -> str:
    text = json.dumps([row["gateway"], row["device"], row["point"], int(row["ts_ms"])])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _derived_after(cursor: str | None) -> tuple[str, str, str, int] | None:
    if not cursor:
        return None
    try:
        gw, dev, pt, ts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(gw, str) and isinstance(dev, str) and isinstance(pt, str) and type(ts) is int):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise HTTPException(422, "cursor is not one this API returned") from None
    return gw, dev, pt, ts


def create_alerts_router(store: Store, *, rules: RulesService | None,
                         push_following: Callable[[Principal], Awaitable[list[str]]]) -> APIRouter:
    r = APIRouter()

    def query(p: Principal, state: list[StateFilter] | None, severity: list[Severity] | None, rule: str | None,
              gateway: str | None, device: str | None, subject: str | None, start: str | None, end: str | None,
              silenced: bool | None, duplicates: bool, limit: int = 100, cursor: str | None = None) -> AlertQuery:
        states = set(state or ())
        if "open" in states:
            states = (states - {"open"}) | {"raised", "acknowledged"}
        try:
            after = decode_alert_cursor(cursor) if cursor else None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return AlertQuery(p.tenant, tuple(sorted(states)), tuple(s.value for s in severity or ()), rule, gateway,
                          device, subject, ts_param("start", start) if start else None,
                          ts_param("end", end) if end else None, silenced, duplicates, limit, after)

    async def publish(rec: Any) -> None:
        if rules is not None:
            await rules.publish_alert(rec)

    @r.get("/api/alerts", tags=["alerts"], summary="Alerts, newest first, with counts under the same filters")
    async def list_alerts(p: Reader, state: StateQ = None, severity: SeverityQ = None, rule: RuleQ = None,
                          gateway: GatewayQ = None, device: DeviceQ = None, subject: SubjectQ = None,
                          start: TimeQ = None, end: TimeQ = None, silenced: bool | None = None,
                          duplicates: Annotated[bool, Query(description="include raises while another of the"
                                                                        " same rule and subject was open")] = False,
                          limit: Annotated[int, Query(ge=1, le=500)] = 100,
                          cursor: Annotated[str | None, Query(max_length=200)] = None) -> dict[str, Any]:
        q = query(p, state, severity, rule, gateway, device, subject, start, end, silenced, duplicates, limit, cursor)
        found = await store.rules.alerts.list(q)
        last = found[-1] if len(found) == limit else None
        return {"items": [a.public() for a in found], "count": len(found),
                "next_cursor": encode_alert_cursor(last.ts_ms, last.alert.id) if last else None,
                "counts": await store.rules.alerts.counts(q)}

    @r.get("/api/alerts/counts", tags=["alerts"], summary="Counts by state, and open alerts by severity")
    async def alert_counts(p: Reader, severity: SeverityQ = None, rule: RuleQ = None, gateway: GatewayQ = None,
                           device: DeviceQ = None, subject: SubjectQ = None, start: TimeQ = None, end: TimeQ = None,
                           silenced: bool | None = None, duplicates: bool = False) -> dict[str, Any]:
        q = query(p, None, severity, rule, gateway, device, subject, start, end, silenced, duplicates)
        return await store.rules.alerts.counts(q)

    @r.get("/api/alerts/{alert}", tags=["alerts"], summary="One alert with its evidence readings")
    async def get_alert(p: Reader, alert: AlertId) -> dict[str, Any]:
        rec = await store.rules.alerts.get(p.tenant, alert)
        if rec is None:
            raise not_found("alert", alert)
        return rec.public()

    async def operate(p: Principal, alert: str, body: OperatorNote | None, what: str) -> dict[str, Any]:
        op = store.rules.alerts.acknowledge if what == "ack" else store.rules.alerts.clear
        try:
            rec = await op(p.tenant, alert, by=p.subject, now=_now(), note=body.note if body else "")
        except LifecycleError as exc:
            raise HTTPException(409, str(exc)) from None
        if rec is None:
            raise not_found("alert", alert)
        await publish(rec)
        return rec.public()

    @r.post("/api/alerts/{alert}/ack", tags=["alerts"], summary="Acknowledge (admin, operator); 409 if not open")
    async def ack_alert(p: Controller, alert: AlertId, body: OperatorNote | None = None) -> dict[str, Any]:
        return await operate(p, alert, body, "ack")

    @r.post("/api/alerts/{alert}/clear", tags=["alerts"], summary="Clear by hand (admin, operator); 409 if cleared")
    async def clear_alert(p: Controller, alert: AlertId, body: OperatorNote | None = None) -> dict[str, Any]:
        return await operate(p, alert, body, "clear")

    # --- silences ------------------------------------------------------------------------------------

    @r.get("/api/silences", tags=["alerts"], summary="Silences (maintenance windows), newest first")
    async def list_silences(p: Reader, active: Annotated[bool | None, Query(description="only those in force now"
                                                                                       )] = None,
                            limit: Annotated[int, Query(ge=1, le=500)] = 100) -> dict[str, Any]:
        now = _now()
        found = await store.rules.silences(p.tenant, active_at=now if active else None, limit=limit)
        if active is False:
            found = [s for s in found if not s.start_ms <= now < s.effective_end]
        return {"items": [s.public(now) for s in found], "count": len(found)}

    @r.post("/api/silences", tags=["alerts"], status_code=201,
            summary="Silence notifications of a rule, gateway, device or point for a while (admin, operator)")
    async def create_silence(p: Controller, body: SilenceCreate,
                             push: Annotated[bool, Query(description="push the new rule set to the gateways that"
                                                                     " follow the tenant's sets")] = True
                             ) -> dict[str, Any]:
        now = _now()
        start = ts_param("start", body.start) if body.start else now
        if (body.end is None) == (body.duration_s is None):
            raise HTTPException(422, "give end or duration_s (one of them)")
        end = ts_param("end", body.end) if body.end else start + (body.duration_s or 0) * 1000
        if end <= start or end <= now:
            raise HTTPException(422, "end must be after start and in the future")
        if end - start > MAX_SILENCE_MS:
            raise HTTPException(422, "a silence lasts at most 90 days")
        if body.point and not body.device:
            raise HTTPException(422, "point needs device")
        if body.gateway is not None:
            await tenant_gateway(store, p, body.gateway)
        s = SilenceRecord(p.tenant, f"sil-{secrets.token_hex(6)}", start, end, body.reason, p.subject, now,
                          body.rule, body.gateway, body.device, body.point)
        try:
            rs = await store.rules.add_silence(s)
        except RuleSetTooLarge as exc:
            raise HTTPException(422, str(exc)) from None
        if rules is not None:
            rules.poke()
        pushed = await push_following(p) if push else []
        return {"silence": s.public(now), "set": rs.public(), "pushed": pushed}

    @r.delete("/api/silences/{silence}", tags=["alerts"], summary="End a silence now (admin, operator)")
    async def end_silence(p: Controller, silence: SilenceId,
                          push: Annotated[bool, Query()] = True) -> dict[str, Any]:
        now = _now()
        got = await store.rules.end_silence(p.tenant, silence, by=p.subject, now=now)
        if got is None:
            raise not_found("silence", silence)
        if got[1] is not None and rules is not None:
            rules.poke()
        pushed = await push_following(p) if push and got[1] is not None else []
        return {"silence": got[0].public(now), "set": got[1].public() if got[1] else None, "pushed": pushed}

    # --- derived readings and their provenance -------------------------------------------------------------

    @r.get("/api/derived", tags=["rules"], summary="Readings the cloud derived (never mixed with signed readings)")
    async def derived(p: Reader, device: DeviceQ = None, point: Annotated[str | None, Query(max_length=200)] = None,
                      gateway: GatewayQ = None, start: TimeQ = None, end: TimeQ = None,
                      limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
                      cursor: Annotated[str | None, Query(max_length=400)] = None) -> dict[str, Any]:
        rows = await store.rules.derived(p.tenant, device=device, point=point, gateway=gateway,
                                         start_ms=ts_param("start", start) if start else None,
                                         end_ms=ts_param("end", end) if end else None, limit=limit,
                                         after=_derived_after(cursor))
        return {"items": rows, "count": len(rows), "next_cursor": _derived_cursor(rows[-1]) if len(rows) == limit
                else None}

    @r.get("/api/derived/provenance", tags=["rules"],
           summary="Which rule version produced a derived reading, from what")
    async def provenance(p: Reader, gateway: Annotated[str, Query(pattern=_GW)],
                         device: Annotated[str, Query(min_length=1, max_length=128)],
                         point: Annotated[str, Query(min_length=6, max_length=200, pattern=r"^rule:")],
                         ts: Annotated[str, Query(max_length=40)]) -> dict[str, Any]:
        ts_ms = ts_param("ts", ts)
        await tenant_gateway(store, p, gateway)
        out: dict[str, Any] = {"gateway": gateway, "device": device, "point": point, "ts_ms": ts_ms}
        cloud = await store.rules.derived(p.tenant, gateway=gateway, device=device, point=point, start_ms=ts_ms,
                                          end_ms=ts_ms + 1, limit=1)
        signed = await store.data.reading(gateway, device, point, ts_ms)
        gw_said = await store.rules.derivation_of(gateway, device, point, ts_ms)
        if not cloud and signed is None:
            raise not_found("derived reading", f"{gateway}/{device}/{point}@{ts_ms}")
        if signed is not None:  # the gateway derived it and signed it like any reading: provable with /api/proof
            out["gateway_derived"] = {"reading": {k: signed[k] for k in ("value", "unit", "quality", "seq")},
                                      "derivation": gw_said, "proof": f"/api/proof?gateway={gateway}&device="
                                      f"{device}&point={point}&ts={ts_ms}"}
        if cloud:
            out["cloud_derived"] = cloud[0]
        rule_id, version = (cloud[0]["rule"], cloud[0]["version"]) if cloud else \
            (gw_said["rule"], gw_said["version"]) if gw_said else (None, None)
        if rule_id is not None:
            rec = await store.rules.rule(p.tenant, rule_id, version)
            out["rule"] = rec.public() if rec is not None else None
        return out

    return r
