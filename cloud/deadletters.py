"""Replaying dead letters once their cause is fixed.

A batch refused because its gateway was not registered yet, or because a key
rotation had not reached the cloud, is not lost: its raw signed bytes are in the
dead-letter table. After the operator fixes the cause, replay runs the same
checks the ingest runs and commits what now passes. Nothing is trusted that the
live ingest would refuse; the signature is still checked against the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from carbonlink.kernel.wire import now_ms

from .ingest import IngestProcessor, Outcome, _Item, _Refused
from .store import Store


@dataclass(frozen=True)
class ReplayResult:
    letter: int
    outcome: str  # committed | duplicate | still-refused | already-resolved | unknown
    detail: str = ""


class _ReplayProcessor(IngestProcessor):
    """The ingest's checks, but a refusal is reported back instead of becoming a new dead letter."""

    last_reason: str = ""

    async def _reject(self, item: _Item, exc: _Refused) -> None:
        self.last_reason = exc.reason


async def replay(store: Store, letter_ids: list[int]) -> list[ReplayResult]:
    proc = _ReplayProcessor(store, publish=None, key_cache_s=0)  # no acks: the sender has moved on
    out: list[ReplayResult] = []
    for letter in letter_ids:
        found = await store.audit.dead_letter_raw(letter)
        if found is None:
            out.append(ReplayResult(letter, "unknown", "no dead letter with this id"))
            continue
        topic, raw, resolved = found
        if resolved is not None:
            out.append(ReplayResult(letter, "already-resolved"))
            continue
        proc.last_reason = ""
        outcome = await proc.handle(topic, raw)
        if outcome is Outcome.REJECTED:
            out.append(ReplayResult(letter, "still-refused", proc.last_reason))
            continue
        await store.audit.resolve_dead_letter(letter, f"replayed: {outcome.value}", now_ms())
        out.append(ReplayResult(letter, outcome.value))
    return out
