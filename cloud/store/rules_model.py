"""Records of the rules concern and the pure functions that turn a tenant's rules into rule sets.

A tenant keeps rules (each change a new version) and silences. From them the cloud builds two rule-set
documents (``rules.RuleSetDoc``), recorded together as one rule-set version:

- the **gateway set**: rules placed at the ``edge`` or ``both``, delivered to gateways by its hash;
- the **cloud set**: rules placed in the ``cloud`` or ``both``, evaluated over committed readings. A rule
  placed ``both`` notifies from the gateway only (it is closer and works offline): in the cloud set its
  notifying actions are left out, so a webhook is not called twice for one alert; the cloud still records
  its alerts (same alert id as the gateway's, so they merge) and its derived readings.

Silences are in both sets while they have not ended, so gateways and the cloud suppress the same
notifications. A silence names a rule, a gateway, a device and a point, each optional; one that names
a device but no gateway is expanded to every gateway of the tenant.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from carbonlink.rules import RuleDoc, RuleSetDoc, Silence
from carbonlink.rules.alerts import Alert
from carbonlink.rules.document import MAX_RULES, MAX_SILENCES, DeriveAction, canonical_json

Placement = Literal["edge", "cloud", "both"]
PLACEMENTS: tuple[Placement, ...] = ("edge", "cloud", "both")
MAX_SET_BYTES = 1 << 20  # a gateway set travels as one MQTT message: 1 MiB is about 500 long rules


class RulesConflict(Exception):
    """A change made against a version that is no longer the current one (another writer got in between)."""


class RuleSetTooLarge(ValueError):
    pass


@dataclass(frozen=True)
class RuleRecord:
    tenant: str
    id: str
    version: int
    doc: RuleDoc | None  # None: the rule was deleted in this version
    hash: str
    placement: str
    created_ms: int
    created_by: str
    comment: str = ""

    @property
    def deleted(self) -> bool:
        return self.doc is None

    def public(self) -> dict[str, Any]:
        body = self.doc.model_dump(mode="json") if self.doc is not None else {"id": self.id, "version": self.version}
        return {**body, "placement": self.placement, "hash": self.hash, "deleted": self.deleted,
                "created_ms": self.created_ms, "created_by": self.created_by, "comment": self.comment}


@dataclass(frozen=True)
class SilenceRecord:
    tenant: str
    id: str
    start_ms: int
    end_ms: int
    reason: str
    created_by: str
    created_ms: int
    rule: str | None = None
    gateway: str | None = None
    device: str | None = None
    point: str | None = None
    ended_ms: int | None = None
    ended_by: str | None = None

    @property
    def effective_end(self) -> int:
        return self.end_ms if self.ended_ms is None else min(self.end_ms, self.ended_ms)

    def covers(self, rule: str, gateway: str, device: str | None, point: str | None, ts_ms: int) -> bool:
        return (self.start_ms <= ts_ms < self.effective_end and self.rule in (None, rule)
                and self.gateway in (None, gateway) and self.device in (None, device)
                and self.point in (None, point))

    def docs(self, gateways: list[str]) -> list[Silence]:
        """The silence as the rules engine takes it: one subject prefix per gateway it covers."""
        if self.effective_end <= self.start_ms:
            return []
        tail = [x for x in (self.device, self.point if self.device else None) if x]
        prefixes = [""] if self.gateway is None and self.device is None else \
            ["/".join([self.gateway, *tail])] if self.gateway is not None else ["/".join([g, *tail]) for g in gateways]
        return [Silence(id=self.id, rule=self.rule, subject=p, start_ms=self.start_ms, end_ms=self.effective_end,
                        by=self.created_by[:128], reason=self.reason[:500]) for p in prefixes]

    def public(self, now_ms: int | None = None) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("id", "rule", "gateway", "device", "point", "start_ms", "end_ms",
                                             "reason", "created_by", "created_ms", "ended_ms", "ended_by")}
        if now_ms is not None:
            out["active"] = self.start_ms <= now_ms < self.effective_end
        return out


@dataclass(frozen=True)
class RuleSetRecord:
    tenant: str
    version: int
    hash: str  # the gateway set
    cloud_hash: str
    rules: int
    silences: int
    created_ms: int
    created_by: str
    reason: str
    doc: dict[str, Any] = field(default_factory=dict)  # {"rules": [{..rule, placement}], "silences": [...]}

    def public(self, with_doc: bool = False) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("version", "hash", "cloud_hash", "rules", "silences", "created_ms",
                                             "created_by", "reason")}
        if with_doc:
            out["doc"] = self.doc
        return out


@dataclass(frozen=True)
class BuiltSets:
    gateway: RuleSetDoc
    cloud: RuleSetDoc
    summary: dict[str, Any]


def build_sets(rules: list[RuleRecord], silences: list[SilenceRecord], gateways: list[str],
               now_ms: int) -> BuiltSets:
    """The gateway and cloud rule sets from the current rules and the silences that have not ended."""
    live = [r for r in rules if r.doc is not None]
    docs: list[Silence] = []
    for s in silences:
        if s.effective_end > now_ms:
            docs += s.docs(gateways)
    if len(docs) > MAX_SILENCES:
        raise RuleSetTooLarge(f"{len(docs)} silences (after expanding device silences to every gateway) are more"
                              f" than the {MAX_SILENCES} a rule set holds; end some or name the gateway")
    edge = [r.doc for r in live if r.placement in ("edge", "both") and r.doc is not None]
    cloud: list[RuleDoc] = []
    for r in live:
        if r.doc is None or r.placement not in ("cloud", "both"):
            continue
        if r.placement == "both":
            derive = [a for a in r.doc.actions if isinstance(a, DeriveAction)]
            cloud.append(r.doc.model_copy(update={"actions": derive}))
        else:
            cloud.append(r.doc)
    for name, chosen in (("gateway", edge), ("cloud", cloud)):
        if len(chosen) > MAX_RULES:
            raise RuleSetTooLarge(f"the {name} rule set would hold {len(chosen)} rules, over the {MAX_RULES} a set"
                                  " holds; delete or disable some, or place them elsewhere")
    gateway_set = RuleSetDoc(rules=sorted(edge, key=lambda d: d.id), silences=docs)
    cloud_set = RuleSetDoc(rules=sorted(cloud, key=lambda d: d.id), silences=docs)
    size = len(canonical_json(gateway_set.model_dump(mode="json")))
    if size > MAX_SET_BYTES:
        raise RuleSetTooLarge(f"the gateway rule set would be {size:,} bytes, over the {MAX_SET_BYTES:,}-byte limit")
    summary = {"rules": [{**r.doc.model_dump(mode="json"), "placement": r.placement} for r in
                         sorted(live, key=lambda x: x.id) if r.doc is not None],
               "silences": [s.model_dump(mode="json") for s in docs]}
    return BuiltSets(gateway_set, cloud_set, summary)


# --- alerts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertRecord:
    """An alert as the cloud keeps it: the lifecycle (``rules.alerts.Alert``) and where it came from."""

    tenant: str
    alert: Alert
    sources: tuple[str, ...]  # "gateway" (its alert.* events) and/or "cloud" (the cloud's evaluation)
    duplicate_of: str | None = None  # another alert of the same rule and subject was open when this one rose
    note: str = ""
    updated_ms: int = 0

    @property
    def ts_ms(self) -> int:
        a = self.alert
        return a.since_ms if a.since_ms is not None else a.raised_ms if a.raised_ms is not None else \
            a.cleared_ms or 0

    def public(self) -> dict[str, Any]:
        a = self.alert
        return {"id": a.id, "rule": a.rule, "version": a.version, "subject": a.subject, "gateway": a.gateway,
                "device": a.device, "point": a.point, "severity": a.severity, "state": a.state.value,
                "ts_ms": self.ts_ms, "since_ms": a.since_ms, "raised_ms": a.raised_ms, "acked_ms": a.acked_ms,
                "acked_by": a.acked_by, "cleared_ms": a.cleared_ms, "cleared_by": a.cleared_by,
                "silenced_by": a.silenced_by, "values": a.values, "evidence": list(a.evidence),
                "sources": list(self.sources), "duplicate_of": self.duplicate_of, "note": self.note,
                "updated_ms": self.updated_ms}


@dataclass(frozen=True)
class AlertQuery:
    tenant: str
    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    rule: str | None = None
    gateway: str | None = None
    device: str | None = None
    subject: str | None = None  # a prefix
    start_ms: int | None = None
    end_ms: int | None = None
    silenced: bool | None = None
    duplicates: bool = False
    limit: int = 100
    after: tuple[int, str] | None = None  # keyset: (ts_ms, id) of the last row of the previous page


def encode_alert_cursor(ts_ms: int, alert_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts_ms, alert_id]).encode()).decode().rstrip("=")


def decode_alert_cursor(cursor: str) -> tuple[int, str]:
    try:
        ts, aid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise ValueError("cursor is not one this API returned") from None
    if type(ts) is not int or not isinstance(aid, str) or len(aid) > 64:
        raise ValueError("cursor is not one this API returned")
    return ts, aid


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
