"""The firmware's wire format under MicroPython, held to the shared vectors and to CPython's wire.py."""

from __future__ import annotations

import json
import random
import struct
from decimal import Decimal
from pathlib import Path

from carbonlink.kernel.wire import WireError, canonical_number

from .conftest import VECTORS, assert_all_ok, run_mp


def test_vectors_pass_under_micropython() -> None:
    res = run_mp("t_wire.py", str(VECTORS))
    assert_all_ok(res)
    # Every vector file was checked: 14 numbers and 3 batches.
    assert len(res.lines("ok number ")) == len(json.loads((VECTORS / "numbers.json").read_text()))
    assert len(res.lines("ok ")) >= 14 + 3 * 3


def _cpython(x: float | int) -> str | None:
    try:
        text = canonical_number(x)
    except WireError:
        return None
    # CPython checks the range before rounding, so 999999999999999.9 becomes "1000000000000000", which
    # Reading.from_wire then refuses at the cloud. The firmware refuses such a value at the source instead.
    return None if abs(Decimal(text)) >= Decimal(10) ** 15 else text


def test_numbers_match_cpython_bit_for_bit(tmp_path: Path) -> None:
    rng = random.Random(7)
    cases: list[list[object]] = []
    for _ in range(3000):
        # Doubles of every magnitude the rule allows, plus some beyond it, as exact bit patterns.
        x = rng.choice([rng.uniform(-1, 1), rng.uniform(-1e6, 1e6)]) * 10.0 ** rng.randint(-20, 16)
        cases.append(["f", struct.pack("<d", x).hex(), _cpython(x)])
    for x in (0.5, 2.5, 123456789012345.5, 99999999999999.95, 1e-300, 5e-324, -0.0, 1e15, -1e15, 999999999999999.9):
        cases.append(["f", struct.pack("<d", x).hex(), _cpython(x)])
    for _ in range(1000):
        # Fixed-point pairs, as the sensors hand them over, against exact decimal arithmetic.
        m, d = rng.randint(-10**17, 10**17) // 10 ** rng.randint(0, 16), rng.randint(0, 12)
        dec = Decimal(m).scaleb(-d)
        want = _cpython(float(dec)) if abs(dec) < Decimal("1e14") and len(str(abs(m))) <= 15 else None
        if want is not None:
            cases.append(["x", [m, d], want])
    for n in (0, 1, -1, 10**15 - 1, -(10**15) + 1, 10**15, 2**60):
        cases.append(["i", n, _cpython(n)])
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    res = run_mp("t_numbers.py", str(path), timeout=60)
    assert_all_ok(res)
    assert res.lines(f"checked {len(cases)}")
