"""Cloud evaluation of rules over every gateway's committed readings.

The ingest calls ``on_commit`` after each commit with the rows it committed (the hook the lead's new
ingest provides; see ``CommitHook``). One ``RuleHost`` per tenant runs that tenant's rule set with an
allowed lateness, partitioned by gateway and device, so the cloud's outputs equal the gateway's for the
same readings (docs/rules.md, "Determinism"). Alerts and diagnostics go to the tenant's event sink
(the alert store), derived readings to ``derived`` (stored like readings, marked by their point name).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from carbonlink.kernel.events import EventSink
from carbonlink.kernel.wire import Reading
from carbonlink.rules import RuleHost

LATENESS_MS = 10 * 60_000


class CommitHook(Protocol):
    """What the ingest calls after a commit: the tenant, the gateway, and the readings it stored."""

    def on_commit(self, tenant: str, gateway: str, readings: Sequence[Reading]) -> None: ...


class CloudRules:
    def __init__(self, *, sink_for: Callable[[str], EventSink],
                 derived: Callable[[str, str, list[Reading]], Any] | None = None,
                 lateness_ms: int = LATENESS_MS) -> None:
        self.sink_for = sink_for
        self.derived = derived
        self.lateness_ms = lateness_ms
        self.hosts: dict[str, RuleHost] = {}
        self._gateway = ""

    def apply(self, tenant: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        host = self.hosts.get(tenant)
        if host is None:
            host = self.hosts[tenant] = RuleHost(source="", sink=self.sink_for(tenant),
                                                 derived=functools.partial(self._derive, tenant),
                                                 lateness_ms=self.lateness_ms)
        result = host.apply(doc)
        return {"ok": result.ok, "hash": result.hash, "errors": result.errors}

    def _derive(self, tenant: str, r: Reading) -> None:
        if self.derived is not None:
            self.derived(tenant, self._gateway, [r])

    def on_commit(self, tenant: str, gateway: str, readings: Sequence[Reading]) -> None:
        host = self.hosts.get(tenant)
        if host is None or not readings:
            return
        self._gateway = gateway
        host.feed(readings, source=gateway)
