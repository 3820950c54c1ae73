# Runs under MicroPython: number rendering and validation against cases computed by CPython.
import json
import struct
import sys
from binascii import unhexlify

import wire
from mpcheck import done, fail

with open(sys.argv[1]) as f:
    cases = json.load(f)
for kind, arg, want in cases:
    if kind == "f":
        x = struct.unpack("<d", unhexlify(arg))[0]
    elif kind == "x":
        x = (arg[0], arg[1])
    else:
        x = arg
    try:
        got = wire.number(x)
    except wire.WireError:
        got = None
    if got != want:
        fail(kind, arg, repr(got), "!=", repr(want))
print("checked", len(cases))

bad = [
    lambda: wire.reading('a"b', "p", 0, 1, ""),
    lambda: wire.reading("a", "p\\", 0, 1, ""),
    lambda: wire.reading("a", "p\n", 0, 1, ""),
    lambda: wire.reading("", "p", 0, 1, ""),
    lambda: wire.reading("a" * 129, "p", 0, 1, ""),
    lambda: wire.reading("a", "p", 0, 1, "u" * 33),
    lambda: wire.reading("a", "p", 0, 1, "", "X"),
    lambda: wire.reading("a", "p", -1, 1, ""),
    lambda: wire.reading("a", "p", 253402300800000, 1, ""),
    lambda: wire.reading("a", "p", 0, True, ""),
    lambda: wire.reading("a", "p", 0, "1", ""),
    lambda: wire.reading("a", "p", 0, float("nan"), ""),
    lambda: wire.reading("a", "p", 0, float("inf"), ""),
    lambda: wire.signing_bytes("g", 0, 0, ['{}']),
    lambda: wire.signing_bytes("g", 2 ** 53, 0, ['{}']),
    lambda: wire.signing_bytes("g", 1, 0, []),
    lambda: wire.parse_ts("2026-02-30T00:00:00.000Z"),
    lambda: wire.parse_ts("2026-01-01 00:00:00.000Z"),
]
for i, f in enumerate(bad):
    try:
        f()
        fail("bad input", i, "accepted")
    except wire.WireError:
        pass
print("ok bad inputs", len(bad))
done()
