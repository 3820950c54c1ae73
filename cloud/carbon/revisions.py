"""What changed between two versions of the same accounts: one entry per figure, with before and after.

When late data recompute hours, the accounts above them change; the store keeps each change as a
revision (phase 2). ``diff_accounts`` is the pure part: it compares two ``Accounts`` of the same
organisation and period figure by figure (period totals, coverage, each source line) and lists only
what differs, in a fixed order, so the same two versions always give the same revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from .accounts import Accounts, PeriodAccount, SourceLine
from .errors import CarbonInputError

PERIOD_FIELDS = ("scope1_t", "scope2_t", "sinks_t", "avoided_t", "net_t", "allowance_t", "allowance_balance_t",
                 "mwh_generated", "mwh_bought", "certificates", "certificate_carry_mwh")


@dataclass(frozen=True)
class Change:
    period: str
    source: str  # "" for the period's own figures
    field: str
    before: str | None
    after: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"period": self.period, "source": self.source, "field": self.field, "before": self.before,
                "after": self.after}


def _s(v: Decimal | int | None) -> str | None:
    return None if v is None else str(v)


def _period_changes(a: PeriodAccount | None, b: PeriodAccount | None, label: str) -> list[Change]:
    out: list[Change] = []
    for f in PERIOD_FIELDS:
        x, y = _s(getattr(a, f)) if a else None, _s(getattr(b, f)) if b else None
        if x != y:
            out.append(Change(label, "", f, x, y))
    for st in ("valid", "substituted", "missing"):
        x, y = (_s(getattr(a.coverage, st)) if a else None), (_s(getattr(b.coverage, st)) if b else None)
        if x != y:
            out.append(Change(label, "", f"coverage.{st}", x, y))
    lines_a = {(s.source_id, s.category): s for s in (a.sources if a else ())}
    lines_b = {(s.source_id, s.category): s for s in (b.sources if b else ())}
    for key in sorted(set(lines_a) | set(lines_b)):
        out += _line_changes(lines_a.get(key), lines_b.get(key), label, f"{key[0]}/{key[1]}")
    return out


def _line_changes(a: SourceLine | None, b: SourceLine | None, label: str, name: str) -> list[Change]:
    out = []
    for f in ("t_co2e", "low_t", "high_t"):
        x, y = _s(getattr(a, f)) if a else None, _s(getattr(b, f)) if b else None
        if x != y:
            out.append(Change(label, name, f, x, y))
    for st in ("valid", "substituted", "missing"):
        x = _s(getattr(a.coverage, st)) if a and a.coverage else None
        y = _s(getattr(b.coverage, st)) if b and b.coverage else None
        if x != y:
            out.append(Change(label, name, f"coverage.{st}", x, y))
    for k in sorted(set(a.detail if a else {}) | set(b.detail if b else {})):
        x, y = (a.detail.get(k) if a else None), (b.detail.get(k) if b else None)
        if x != y:
            out.append(Change(label, name, f"detail.{k}", x, y))
    return out


def diff_accounts(before: Accounts, after: Accounts) -> list[Change]:
    """Every figure that differs, sub-periods first (in order), then the total."""
    if (before.organisation, before.kind, before.year, before.month) != (after.organisation, after.kind, after.year,
                                                                         after.month):
        raise CarbonInputError("accounts", "two different reports", "compare versions of the same organisation "
                               "and period")
    a = {p.period: p for p in before.periods}
    b = {p.period: p for p in after.periods}
    out: list[Change] = []
    for label in sorted(set(a) | set(b)):
        out += _period_changes(a.get(label), b.get(label), label)
    out += _period_changes(before.total, after.total, before.total.period)
    return out
