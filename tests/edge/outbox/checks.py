"""Checks shared by the outbox tests."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from carbonlink.edge.outbox import StoredBatch
from carbonlink.kernel.wire import parse_batch, verify_batch


def verified_stamps(batches: Iterable[StoredBatch], public_key: Ed25519PublicKey) -> list[int]:
    """The reading times of ``batches``, each batch checked first: signed over its bytes by the key, under its
    own seq, holding as many readings as the outbox says."""
    stamps: list[int] = []
    for b in batches:
        parsed = parse_batch(b.payload)
        verify_batch(parsed, public_key, b.payload)
        assert parsed.seq == b.seq and len(parsed.readings) == b.n
        stamps.extend(r.ts_ms for r in parsed.readings)
    return stamps
