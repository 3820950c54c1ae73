"""The login throttle on its own, with an injected clock: backoff, bursts, reset, bounded memory."""

from __future__ import annotations

from carbonlink.cloud.throttle import Limits, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fail(th: LoginThrottle, user: str, host: str) -> int:
    wait, keys = th.check(user, host)
    if not wait:
        th.done(keys, False)
    return wait


def test_backoff_doubles_to_a_cap_and_a_success_clears_the_user() -> None:
    clock = Clock()
    th = LoginThrottle(per_user=Limits(free=3, base_s=1, cap_s=8), per_address=Limits(free=1000), clock=clock)
    assert [fail(th, "ada@acme", "10.0.0.1") for _ in range(3)] == [0, 0, 0]
    waits = []
    for _ in range(6):
        waits.append(th.check("ada@acme", "10.0.0.1")[0])
        clock.t += waits[-1]
        assert fail(th, "ada@acme", "10.0.0.1") == 0  # once the wait is over, one more try is let through
    assert waits == [1, 2, 4, 8, 8, 8]
    # Another user from the same address is not affected; the right password clears the user.
    assert th.check("bob@acme", "10.0.0.1")[0] == 0
    clock.t += 8
    wait, keys = th.check("ada@acme", "10.0.0.1")
    assert wait == 0
    th.done(keys, True)
    assert th.check("ada@acme", "10.0.0.1")[0] == 0


def test_a_parallel_burst_is_cut_at_the_allowance() -> None:
    th = LoginThrottle(per_user=Limits(free=5), per_address=Limits(free=20), clock=Clock())
    admitted = [th.check("ada@acme", "192.0.2.7") for _ in range(200)]
    let_through = [keys for wait, keys in admitted if wait == 0]
    assert len(let_through) == 5 and all(wait >= 1 for wait, _ in admitted[5:])
    for keys in let_through:
        th.done(keys, False)
    assert th.check("ada@acme", "192.0.2.7")[0] >= 1
    # Nothing checked (the hash pool was full) is not a failure.
    th2 = LoginThrottle(per_user=Limits(free=1), clock=Clock())
    for _ in range(5):
        wait, keys = th2.check("x@t", "192.0.2.8")
        assert wait == 0
        th2.done(keys, None)


def test_address_limit_spans_users_and_ipv6_counts_per_64() -> None:
    clock = Clock()
    th = LoginThrottle(per_user=Limits(free=100), per_address=Limits(free=4, base_s=2), clock=clock)
    for i in range(4):
        assert fail(th, f"user{i}@acme", f"2001:db8:1:2::{i + 1}") == 0
    assert th.check("someone@acme", "2001:db8:1:2:ffff::9")[0] == 2  # same /64
    assert th.check("someone@acme", "2001:db8:1:3::1")[0] == 0  # another /64
    assert LoginThrottle.address_key("::ffff:192.0.2.1") == "addr:192.0.2.1"
    assert LoginThrottle.address_key(None) == "addr:unknown"
    clock.t += 3601  # failures fade
    assert th.check("someone@acme", "2001:db8:1:2::77")[0] == 0


def test_memory_is_bounded() -> None:
    clock = Clock()
    th = LoginThrottle(per_user=Limits(free=1), per_address=Limits(free=1000), max_keys=50, clock=clock)
    for i in range(1000):
        clock.t += 0.001
        fail(th, f"u{i}@t", "198.51.100.1")
    assert len(th) <= 51
    assert th.check("u999@t", "198.51.100.1")[0] >= 1  # the most recent failures are the ones kept


async def test_password_checks_run_two_at_a_time_and_a_full_queue_is_busy() -> None:
    import asyncio
    import threading

    from carbonlink.cloud.auth import Busy, PasswordWorkers

    release = threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def check() -> bool:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(30)
        with lock:
            running -= 1
        return True

    workers = PasswordWorkers(workers=2, max_waiting=3)
    tasks = [asyncio.ensure_future(workers.run(check)) for _ in range(10)]
    for _ in range(5):
        await asyncio.sleep(0)
    busy = [t for t in tasks if t.done() and isinstance(t.exception(), Busy)]
    assert len(busy) == 5  # 2 running, 3 waiting, the rest told at once
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r is True for r in results) == 5 and peak <= 2
    workers.close()
