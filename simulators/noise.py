"""Deterministic noise for the simulators: a function of (seed, name, time), not of how often one asks.

A model that draws from a random generator on every call gives different values for the same instant
depending on the polling rate, so no test could know the right answer. ``smooth`` is value noise:
standard-normal knots every ``knot_s`` seconds, derived from a hash of (seed, name, knot index), joined
by cosine interpolation. The same seed, name and time give the same number on every machine.
"""

from __future__ import annotations

import hashlib
import math


class SmoothNoise:
    """N(0, 1) at each knot, smooth in between; a small cache keeps nearby knots."""

    def __init__(self, seed: int | str, knot_s: float = 20.0) -> None:
        if knot_s <= 0:
            raise ValueError("knot_s must be positive")
        self.seed, self.knot_s = seed, knot_s
        self._cache: dict[tuple[str, int], float] = {}
        self._pair: dict[str, tuple[int, float, float]] = {}  # per stream: the last interval's two knots

    def knot(self, name: str, k: int) -> float:
        key = (name, k)
        v = self._cache.get(key)
        if v is None:
            h = hashlib.blake2b(f"{self.seed}:{name}:{k}".encode(), digest_size=16).digest()
            u1 = (int.from_bytes(h[:8], "big") + 1) / 2**64  # (0, 1]
            u2 = int.from_bytes(h[8:], "big") / 2**64
            v = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)  # Box-Muller
            if len(self._cache) > 8192:
                self._cache.clear()
            self._cache[key] = v
        return v

    def __call__(self, name: str, t: float) -> float:
        x = t / self.knot_s
        k = math.floor(x)
        w = (1.0 - math.cos(math.pi * (x - k))) / 2.0
        pair = self._pair.get(name)
        if pair is None or pair[0] != k:
            pair = self._pair[name] = (k, self.knot(name, k), self.knot(name, k + 1))
        return (1.0 - w) * pair[1] + w * pair[2]

    def uniform(self, name: str, k: int) -> float:
        """A uniform number in [0, 1) for event ``k`` of stream ``name``."""
        h = hashlib.blake2b(f"{self.seed}:{name}:u:{k}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64
