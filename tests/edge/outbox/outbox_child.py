"""Child process for the kill -9 test: appends and cuts batches as fast as it can, forever.

With ``pipelined`` it also cuts backlog batches through the BacklogCutter (two connections, the next
read overlapping this commit, signed with a KeySigner), between plain cuts on the main connection.

Readings carry consecutive timestamps, continuing from the highest one already in the outbox,
so the parent can tell a lost, torn or doubled reading from the outbox contents alone.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from carbonlink.edge.backlog_cutter import BacklogCutter
from carbonlink.edge.outbox import KeySigner, Outbox
from carbonlink.kernel.wire import Reading, parse_batch, sign_batch

KEY = Ed25519PrivateKey.from_private_bytes(bytes(32))
T0 = 1_700_000_000_000


def highest_ts(ob: Outbox) -> int:
    top = ob.db.execute("SELECT max(ts_ms) FROM pending").fetchone()[0] or T0 - 1
    for b in ob.unacked(limit=1_000_000):
        top = max(top, *(r.ts_ms for r in parse_batch(b.payload).readings))
    return int(top)


def main(path: str, mode: str = "plain") -> None:
    ob = Outbox(Path(path), "gw-kill")
    cutter = BacklogCutter(ob) if mode == "pipelined" else None
    ts = highest_ts(ob) + 1
    rng = random.Random()
    print("ready", flush=True)
    while True:
        n = rng.randint(1, 40)
        ob.append([Reading.make("d", "p", ts + i, float(ts + i - T0), "u") for i in range(n)],
                  added_ms=ts if rng.random() < 0.5 else None)
        ts += n
        if cutter is not None and rng.random() < 0.5:
            cutter.cut(rng.randint(1, 4), rng.randint(1, 30), KeySigner(KEY), live_after_ms=ts - 20)
            continue
        lane = rng.choice(["live", "backlog", "any"])
        ob.cut_batch(rng.randint(1, 60), lambda b: sign_batch(b, KEY), lane=lane,  # type: ignore[arg-type]
                     live_after_ms=ts - 20)


if __name__ == "__main__":
    main(*sys.argv[1:3])
