"""Jittered, capped exponential backoff for every reconnecting connection."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay that doubles from ``initial`` up to ``cap``, with full jitter.

    Full jitter (a uniform draw in [delay/2, delay]) keeps a fleet of gateways that
    lost the same broker from reconnecting in lock-step.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    attempts: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return self._rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempts = 0
