"""Hypothesis fuzz of the chain walker: random register contents never crash it, never make it
loop for ever, and never make it return a model the registers do not describe."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carbonlink.edge.drivers.sunspec import BASES, END_ID, MAX_MODELS, SUNS, ChainError, walk_chain

_loop = asyncio.new_event_loop()


class Memory:
    """A sparse register map; unmapped addresses answer with an exception (None)."""

    def __init__(self, regs: dict[int, int]) -> None:
        self.regs = regs
        self.reads = 0

    async def read(self, addr: int, count: int) -> list[int] | None:
        self.reads += 1
        assert 0 <= addr and count >= 1 and addr + count <= 0x10000, (addr, count)
        if any(a not in self.regs for a in range(addr, addr + count)):
            return None
        return [self.regs[a] for a in range(addr, addr + count)]


def walk(mem: Memory, bases: tuple[int, ...] = BASES):
    try:
        return _loop.run_until_complete(walk_chain(mem.read, bases))
    except ChainError:
        return None


def check_truthful(mem: Memory, chain) -> None:
    """Every model returned is what the registers say, contiguous from the marker to an end model."""
    assert [mem.regs.get(chain.base), mem.regs.get(chain.base + 1)] == list(SUNS)
    addr = chain.base + 2
    for m in chain.models:
        assert m.addr == addr
        assert (mem.regs[addr], mem.regs[addr + 1]) == (m.id, m.length)
        assert m.id not in (0, END_ID)
        addr += 2 + m.length
    assert mem.regs[addr] == END_ID
    assert len(chain.models) <= MAX_MODELS


words = st.integers(0, 0xFFFF)
# Registers clustered at the probe bases, where a walker looks, with the marker sometimes planted.
region = st.tuples(st.sampled_from(BASES), st.lists(words, max_size=300), st.booleans())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(region, max_size=3), st.dictionaries(st.integers(0, 0xFFFF), words, max_size=50))
def test_random_registers_never_crash_or_lie(regions, scattered) -> None:
    regs = dict(scattered)
    for base, values, plant in regions:
        seq = [*SUNS, *values] if plant else values
        regs.update({base + i: v for i, v in enumerate(seq) if base + i <= 0xFFFF})
    mem = Memory(regs)
    chain = walk(mem)
    # Bounded: a probe per base plus at most two reads per model header.
    assert mem.reads <= len(BASES) + 2 * (MAX_MODELS + 1)
    if chain is not None:
        check_truthful(mem, chain)


model = st.tuples(st.integers(1, 0xFFFE), st.integers(0, 120))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BASES), st.lists(model, max_size=12), words, st.booleans(), st.randoms())
def test_well_formed_chains_are_walked_exactly(base, models, filler, end_has_len, rnd) -> None:
    regs = {base: SUNS[0], base + 1: SUNS[1]}
    addr = base + 2
    for mid, length in models:
        regs[addr], regs[addr + 1] = mid, length
        for i in range(length):  # model bodies hold random words, often ones that look like markers
            regs[addr + 2 + i] = rnd.choice([END_ID, 0, SUNS[0], rnd.randrange(0x10000)])
        addr += 2 + length
    regs[addr] = END_ID
    if end_has_len:
        regs[addr + 1] = 0
    regs.setdefault(addr + 2, filler)
    mem = Memory(regs)
    chain = walk(mem)
    assert chain is not None
    assert [(m.id, m.length) for m in chain.models] == models
    check_truthful(mem, chain)


def test_a_chain_that_never_ends_is_refused_not_walked_for_ever() -> None:
    # Every header says "model 7, length 0": a walk without a bound would run to the end of memory.
    regs = {40000: SUNS[0], 40001: SUNS[1]}
    regs.update({a: 7 if a % 2 == 0 else 0 for a in range(40002, 0x10000)})
    mem = Memory(regs)
    assert walk(mem) is None
    assert mem.reads <= len(BASES) + MAX_MODELS + 2


def test_the_first_base_with_a_marker_wins() -> None:
    regs = {0: 1, 1: 2}  # something else at 0
    for base in (40000, 50000):
        regs.update({base: SUNS[0], base + 1: SUNS[1], base + 2: 1, base + 3: 0, base + 4: END_ID})
    chain = walk(Memory(regs))
    assert chain is not None and chain.base == 40000 and [m.id for m in chain.models] == [1]
