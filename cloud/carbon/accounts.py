"""Carbon accounts in memory: what reports render and what the accounting (SQL, phase 2) produces.

An ``Accounts`` is one organisation's report: a monthly report has a row per day, an annual one a row
per month, and a total. Each period carries scope 1 (direct: stacks, fuel), scope 2 (electricity
bought), sinks (forest uptake), avoided emissions (solar generation × grid factor), the allowance (quota)
and two balances:

* ``net_t = scope1 + scope2 − sinks`` (avoided emissions are reported beside it, never netted: GHG
  Protocol practice, they are not reductions of the organisation's own emissions);
* ``allowance_balance_t = allowance − covered``, with ``covered`` the scopes the allowance covers
  (``covered_scopes``, scope 1 by default as in China's national ETS for power), None without a quota.

Figures are Decimal tonnes at 1 g resolution (6 decimals). ``accounts_to_json`` writes canonical JSON
(sorted keys, Decimals as strings, UTF-8), so the same accounts give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from .errors import CarbonInputError
from .factors import FactorRef
from .substitution import Coverage

Category = Literal["scope1", "scope2", "sink", "avoided"]
SourceKind = Literal["stack", "fuel", "meter", "inverter", "plot"]
ZERO = Decimal(0)


@dataclass(frozen=True)
class SourceLine:
    source_id: str
    site: str
    kind: SourceKind
    category: Category
    t_co2e: Decimal
    coverage: Coverage | None = None  # hour-based sources
    low_t: Decimal | None = None  # uncertainty band (sinks)
    high_t: Decimal | None = None
    detail: dict[str, str] = field(default_factory=dict)  # e.g. co2_fuel_t, relative difference, MWh, kg SO2
    method: str = ""


@dataclass(frozen=True)
class PeriodAccount:
    period: str  # "2024-03-05", "2024-03" or "2024"
    start_ms: int
    end_ms: int
    scope1_t: Decimal
    scope2_t: Decimal
    sinks_t: Decimal
    avoided_t: Decimal
    allowance_t: Decimal | None
    net_t: Decimal
    allowance_balance_t: Decimal | None
    coverage: Coverage
    pollutants_kg: dict[str, Decimal] = field(default_factory=dict)
    mwh_generated: Decimal = ZERO
    mwh_bought: Decimal = ZERO
    certificates: int = 0
    certificate_carry_mwh: Decimal = ZERO
    sources: tuple[SourceLine, ...] = ()


@dataclass(frozen=True)
class MethodRef:
    name: str
    standard: str
    description: str


@dataclass(frozen=True)
class Accounts:
    organisation: str
    organisation_name: str
    sites: tuple[str, ...]
    kind: Literal["monthly", "annual"]
    year: int
    month: int | None
    as_of: str  # the data cut-off (ISO 8601), never the wall clock at rendering
    tz_offset_min: int
    covered_scopes: tuple[str, ...]
    periods: tuple[PeriodAccount, ...]
    total: PeriodAccount
    factors: tuple[FactorRef, ...]
    methods: tuple[MethodRef, ...]
    formula_version: str
    factor_versions: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def title_period(self) -> str:
        return f"{self.year}-{self.month:02d}" if self.kind == "monthly" and self.month else str(self.year)


def period_account(period: str, start_ms: int, end_ms: int, sources: Sequence[SourceLine], *,
                   allowance_t: Decimal | None = None, covered_scopes: Sequence[str] = ("scope1",),
                   pollutants_kg: dict[str, Decimal] | None = None, mwh_generated: Decimal = ZERO,
                   mwh_bought: Decimal = ZERO, certificates: int = 0,
                   certificate_carry_mwh: Decimal = ZERO) -> PeriodAccount:
    """A period's account from its source lines: the sums and balances, exactly."""
    sums = {c: sum((s.t_co2e for s in sources if s.category == c), ZERO) for c in ("scope1", "scope2", "sink",
                                                                                   "avoided")}
    cov = Coverage()
    for s in sources:
        if s.coverage is not None:
            cov = cov + s.coverage
    covered = sum((sums[c] for c in covered_scopes), ZERO)
    return PeriodAccount(period, start_ms, end_ms, sums["scope1"], sums["scope2"], sums["sink"], sums["avoided"],
                         allowance_t, sums["scope1"] + sums["scope2"] - sums["sink"],
                         None if allowance_t is None else allowance_t - covered, cov, dict(pollutants_kg or {}),
                         mwh_generated, mwh_bought, certificates, certificate_carry_mwh, tuple(sources))


def _adapter() -> Any:
    from pydantic import TypeAdapter  # a core dependency; imported only when accounts are (de)serialised

    return TypeAdapter(Accounts)


def accounts_to_dict(acc: Accounts) -> dict[str, Any]:
    return _adapter().dump_python(acc, mode="json")  # type: ignore[no-any-return]


def accounts_to_json(acc: Accounts) -> bytes:
    """Canonical JSON: sorted keys, Decimals as strings, no spaces, UTF-8. Same accounts, same bytes."""
    return json.dumps(accounts_to_dict(acc), sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def accounts_from_json(data: bytes) -> Accounts:
    """Accounts from JSON (a file a person may have edited): checked, or an error naming the field."""
    from pydantic import ValidationError

    if len(data) > 50_000_000:
        raise CarbonInputError("accounts JSON", f"{len(data):,} bytes", "split the report period")
    try:
        return _adapter().validate_json(data)  # type: ignore[no-any-return]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise CarbonInputError(f"accounts JSON {where}", first["msg"],
                               f"correct it ({exc.error_count()} problem(s)); write accounts with --format json"
                               ) from None
