"""Login throttling: failures per user and per address, with exponential backoff, in bounded memory.

Each login names a user key (``username@tenant``) and comes from an address (IPv4, or the /64 of an
IPv6 address). A key may fail ``free`` times; each failure after that closes it for ``base_s * 2**k``
seconds (k = failures beyond ``free``, capped at ``cap_s``). Attempts still running count as failures
until they end, so a burst of parallel guesses is cut at ``free`` as well. While closed, a login gets
429 with Retry-After and no password is checked (so a flood costs no hashing). A success clears the
user key; an address's failures fade ``forget_s`` after its last one.

State is in this process's memory, at most ``max_keys`` keys (least recently failed forgotten first).
One cloud process serves the API (``carbonlink cloud serve``); run several and each counts on its own,
so the limits multiply by their number (docs/threat-model.md).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    free: int  # failures (or attempts in flight) allowed before backoff starts
    base_s: float = 1.0
    cap_s: float = 900.0


@dataclass
class _State:
    failures: int = 0
    in_flight: int = 0
    closed_until: float = 0.0
    last: float = 0.0


@dataclass
class LoginThrottle:
    """``check`` before a login, ``done`` after it; ``retry_after`` > 0 means answer 429."""

    per_user: Limits = field(default_factory=lambda: Limits(free=5))
    per_address: Limits = field(default_factory=lambda: Limits(free=20))
    forget_s: float = 3600.0
    max_keys: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _keys: OrderedDict[str, _State] = field(default_factory=OrderedDict)

    @staticmethod
    def address_key(host: str | None) -> str:
        try:
            ip = ipaddress.ip_address(host or "")
        except ValueError:
            return "addr:unknown"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return f"addr:{ipaddress.IPv6Network((ip, 64), strict=False)}"
        return f"addr:{ip.ipv4_mapped or ip}" if isinstance(ip, ipaddress.IPv6Address) else f"addr:{ip}"

    def _state(self, key: str, now: float) -> _State:
        st = self._keys.get(key)
        if st is not None and st.in_flight == 0 and now - st.last > self.forget_s:
            st = None
            del self._keys[key]
        if st is None:
            st = self._keys[key] = _State(last=now)
            if len(self._keys) > self.max_keys:  # forget the least recently failed key with nothing running
                victim = next((k for k, v in self._keys.items() if not v.in_flight and k != key), None)
                if victim is not None:
                    del self._keys[victim]
        return st

    def _wait(self, st: _State, limits: Limits, now: float) -> float:
        if st.closed_until > now:
            return st.closed_until - now
        if st.failures + st.in_flight >= limits.free and st.in_flight:
            return limits.base_s  # the key's allowance is taken by attempts still running
        return 0.0

    def check(self, user: str, host: str | None) -> tuple[int, tuple[str, str]]:
        """Seconds to wait (0: go on, and call ``done`` with the returned keys afterwards)."""
        now = self.clock()
        keys = (f"user:{user}", self.address_key(host))
        states = [(self._state(k, now), lim) for k, lim in zip(keys, (self.per_user, self.per_address), strict=True)]
        wait = max(self._wait(st, lim, now) for st, lim in states)
        if wait > 0:
            return max(1, math.ceil(wait)), keys
        for st, _ in states:
            st.in_flight += 1
        return 0, keys

    def done(self, keys: tuple[str, str], ok: bool | None) -> None:
        """After a login ``check`` let through: ``ok`` True/False, or None when nothing was checked."""
        now = self.clock()
        for key, limits in zip(keys, (self.per_user, self.per_address), strict=True):
            st = self._keys.get(key)
            if st is None:
                continue
            st.in_flight = max(0, st.in_flight - 1)
            if ok is None:
                continue
            if ok:
                if key.startswith("user:"):
                    st.failures, st.closed_until = 0, 0.0
                continue
            st.failures += 1
            st.last = now
            self._keys.move_to_end(key)
            beyond = st.failures - limits.free
            if beyond >= 0:
                st.closed_until = now + min(limits.cap_s, limits.base_s * 2 ** min(beyond, 32))

    def __len__(self) -> int:
        return len(self._keys)
