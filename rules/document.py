"""Rules as data: a rule document, a rule set with its content hash, and silences.

A gateway receives the rule set through its shadow, reports the hash it applied, and keeps its last
good set when a new one fails to compile. The hash is the SHA-256 of the set's canonical JSON
(sorted keys, no spaces, ASCII only), so the cloud and every gateway compute the same one.

Secrets never travel in a rule: a webhook names the secret it signs with (``secret: ops-hook``) and
each host resolves the name from its own secret store (see ``actions.SecretSource``).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from carbonlink.kernel.events import Severity
from carbonlink.kernel.ids import ID_PATTERN

RULE_ID = r"^[a-z0-9][a-z0-9_-]{0,47}$"
_NAME = ID_PATTERN
_EMAIL_RE = re.compile(r"^[^@\s\"\\<>,;]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$")
MAX_RULES = 500
MAX_SILENCES = 200


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeriveAction(_Strict):
    """Emit a derived reading from a column: point ``rule:{rule id}:{point}`` on the same device."""

    type: Literal["derive"]
    point: str = Field(pattern=_NAME)
    column: str | None = Field(default=None, pattern=_NAME, description="the SELECT column; default the first number")
    unit: str | None = Field(default=None, max_length=32)


class RepublishAction(_Strict):
    """Publish rows or alert changes as JSON under the gateway's ``rules/`` topic."""

    type: Literal["republish"]
    topic: str = Field(pattern=r"^[A-Za-z0-9_.{}-]{1,64}(/[A-Za-z0-9_.{}-]{1,64}){0,5}$",
                       description="suffix under cl/{site}/{gateway}/rules/; may use {rule}, {device}, {point}")
    qos: Literal[0, 1] = 1


class WebhookAction(_Strict):
    """POST JSON, signed with HMAC-SHA256 under the named secret, retried, dead-lettered when it keeps failing."""

    type: Literal["webhook"]
    url: str = Field(max_length=512)
    secret: str = Field(pattern=_NAME, description="the name of a secret in the host's secret store")
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    max_attempts: int = Field(default=5, ge=1, le=20)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/@]+(/[^\s]*)?", v):
            raise ValueError("url must be http:// or https:// with a host and no credentials")
        return v


class EmailAction(_Strict):
    """Send a plain-text e-mail through the host's SMTP relay."""

    type: Literal["email"]
    to: list[str] = Field(min_length=1, max_length=20)
    subject: str = Field(default="CarbonLink {kind}: {rule} on {subject}", max_length=200)

    @field_validator("to")
    @classmethod
    def _to(cls, v: list[str]) -> list[str]:
        for addr in v:
            if not _EMAIL_RE.fullmatch(addr):
                raise ValueError(f"{addr!r} is not an e-mail address")
        return v

    @field_validator("subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("subject must be one line")
        return v


Action = Annotated[DeriveAction | RepublishAction | WebhookAction | EmailAction, Field(discriminator="type")]


Notice = Literal["raised", "cleared"]
NOTICES: tuple[Notice, ...] = ("raised", "cleared")


class RuleDoc(_Strict):
    id: str = Field(pattern=RULE_ID)
    version: int = Field(default=1, ge=1, le=2**31 - 1)
    text: str = Field(min_length=1, max_length=8192)
    enabled: bool = True
    severity: Severity = Severity.WARNING
    description: str = Field(default="", max_length=500)
    actions: list[Action] = Field(default_factory=list, max_length=10)
    notify_on: list[Notice] = Field(default_factory=lambda: list(NOTICES))

    def content_hash(self) -> str:
        return _hash(self.model_dump(mode="json"))


class Silence(_Strict):
    """No notifications for matching alerts from ``start`` to ``end`` (ms since the epoch, event time)."""

    id: str = Field(pattern=_NAME)
    rule: str | None = Field(default=None, pattern=RULE_ID, description="a rule id, or every rule")
    subject: str = Field(default="", max_length=200,
                         description="a subject prefix by whole segments, e.g. gw-1/cems-1; '' = all")
    start_ms: int = Field(ge=0, lt=253402300800000)
    end_ms: int = Field(ge=0, lt=253402300800000)
    by: str = Field(default="", max_length=128)
    reason: str = Field(default="", max_length=500)

    @model_validator(mode="after")
    def _order(self) -> Silence:
        if self.end_ms <= self.start_ms:
            raise ValueError("end_ms must be after start_ms")
        return self

    def covers(self, rule: str, subject: str, ts_ms: int) -> bool:
        """By whole segments: ``gw-1/cems-1`` covers ``gw-1/cems-1`` and ``gw-1/cems-1/so2``, not ``gw-1/cems-10``."""
        prefix = self.subject.rstrip("/")
        return (self.rule is None or self.rule == rule) and \
            (not prefix or subject == prefix or subject.startswith(prefix + "/")) and \
            self.start_ms <= ts_ms < self.end_ms


class RuleSetDoc(_Strict):
    rules: list[RuleDoc] = Field(default_factory=list, max_length=MAX_RULES)
    silences: list[Silence] = Field(default_factory=list, max_length=MAX_SILENCES)

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[RuleDoc]) -> list[RuleDoc]:
        seen: set[str] = set()
        for r in v:
            if r.id in seen:
                raise ValueError(f"rule id {r.id!r} appears twice")
            seen.add(r.id)
        return v

    def content_hash(self) -> str:
        """sha256 of the canonical JSON: what a gateway reports as the rule set it applied."""
        return _hash(self.model_dump(mode="json"))

    def silenced(self, rule: str, subject: str, ts_ms: int) -> Silence | None:
        for s in self.silences:
            if s.covers(rule, subject, ts_ms):
                return s
        return None


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _hash(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj)).hexdigest()
