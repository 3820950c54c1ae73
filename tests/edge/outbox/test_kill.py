"""kill -9 at any moment: no torn batch, no reused sequence number, no lost or doubled reading."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonlink.edge.outbox import Outbox
from tests.edge.outbox.checks import verified_stamps
from tests.edge.outbox.outbox_child import KEY, T0
from tests.services import ROOT


def check(path: Path, last_next_seq: int) -> tuple[int, int]:
    ob = Outbox(path, "gw-kill")
    try:
        next_seq = ob.next_seq()
        batches = ob.unacked(limit=1_000_000)
        seqs = [b.seq for b in batches]
        # Nothing is acked in this test, so the batches are exactly 1..next_seq-1: none torn, none reused.
        assert seqs == list(range(1, next_seq)), (seqs[-5:], next_seq)
        assert next_seq >= last_next_seq
        stamps = verified_stamps(batches, KEY.public_key())
        stamps.extend(r[0] for r in ob.db.execute("SELECT ts_ms FROM pending"))
        assert len(stamps) == len(set(stamps)), "a reading is in the outbox twice"
        if stamps:
            assert sorted(stamps) == list(range(T0, T0 + len(stamps))), "a reading went missing"
        return next_seq, len(stamps)
    finally:
        ob.close()


@pytest.mark.parametrize("mode", ["plain", "pipelined"])
def test_sigkill_loop_leaves_no_torn_batch_and_reuses_no_seq(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "outbox.sqlite"
    rng = random.Random(4)
    next_seq, total = 1, 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(8):
        child = subprocess.Popen([sys.executable, "-m", "tests.edge.outbox.outbox_child", str(path), mode], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"ready", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait()
        seq_after, n = check(path, next_seq)
        assert n >= total
        next_seq, total = seq_after, n
    assert next_seq > 10 and total > 300  # the loop really did work between the kills
