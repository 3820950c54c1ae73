"""The flash ring buffer under MicroPython: order, bounds, and damage from kills, torn writes and bit flips."""

from __future__ import annotations

import json
import random
import signal
import struct
import subprocess
import time
from pathlib import Path

from .conftest import assert_all_ok, mp_env, run_mp, script_argv

SEG, MAXSEGS = 4096, 64


def read(root: Path, *extra: str) -> dict:
    res = run_mp("t_ring.py", "read", str(root), str(SEG), str(MAXSEGS), *extra)
    assert res.returncode == 0, res.err
    return json.loads(res.out.strip().splitlines()[-1])


def write(root: Path, count: int) -> None:
    res = run_mp("t_ring.py", "write", str(root), str(count), str(SEG), str(MAXSEGS))
    assert res.returncode == 0, res.err


def records(path: Path) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each record in a segment, parsed independently of the firmware."""
    data, off, out = path.read_bytes(), 0, []
    while off + 12 <= len(data):
        magic, n, tag, _ = struct.unpack("<2sHII", data[off:off + 12])
        assert magic == b"\xc1Z"
        out.append((tag, off, off + 12 + n))
        off += 12 + n
    return out


def segments(root: Path) -> list[Path]:
    return sorted(root.glob("*.seg"))


def test_ring_buffer_unit(tmp_path: Path) -> None:
    assert_all_ok(run_mp("t_ring.py", "unit", str(tmp_path / "buf")))


def test_torn_last_record_at_every_cut_is_skipped_counted_and_replaced(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    write(root, 12)
    last = segments(root)[-1]
    whole = last.read_bytes()
    tag, start, end = records(last)[-1]
    assert tag == 12
    cuts = sorted({start + k for k in range(1, 13)} | {start + 12 + (end - start - 12) * k // 4 for k in range(1, 4)}
                  | {end - 1})
    for cut in cuts:
        last.write_bytes(whole[:cut])  # power lost inside the write of record 12
        st = read(root)
        assert st["tags"] == list(range(1, 12)), cut
        assert (st["corrupt"], st["bad_payloads"]) == (1, 0), cut
    # The node carries on: the next appends go after the damage and are all readable.
    write(root, 3)
    st = read(root)
    assert st["tags"] == list(range(1, 15))
    assert st["bad_payloads"] == 0 and st["corrupt"] == 1


def test_bit_flips_and_bad_lengths_skip_one_record(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    write(root, 10)
    seg = segments(root)[0]
    good = seg.read_bytes()
    recs = {t: (s, e) for t, s, e in records(seg)}
    s, e = recs[3]
    for pos in (s + 13, e - 1, s + 2, s + 4, s + 8, s):  # payload, length, tag, crc, magic
        data = bytearray(good)
        data[pos] ^= 0x41
        seg.write_bytes(bytes(data))
        st = read(root)
        assert 3 not in st["tags"] and st["corrupt"] == 1 and st["bad_payloads"] == 0, pos
        assert [t for t in st["tags"] if t < 10] == [1, 2, 4, 5, 6, 7, 8, 9][: len([t for t in st["tags"] if t < 10])]
        assert st["tags"][-1] == 10, pos
    seg.write_bytes(good[: recs[5][0]] + b"\x00" * 300 + good[recs[5][0]:])  # garbage between records
    st = read(root)
    assert st["tags"] == list(range(1, 11)) and st["corrupt"] == 1


def test_kill_during_writes_loses_nothing_that_was_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    rng = random.Random(3)
    confirmed = 0
    for _ in range(6):
        proc = subprocess.Popen(script_argv("t_ring.py", "write", str(root), "-1", str(SEG), str(MAXSEGS)),
                                stdout=subprocess.PIPE, text=True, env=mp_env())
        assert proc.stdout is not None
        target = confirmed + rng.randint(5, 60)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("appended"):
                confirmed = int(line.split()[1])
                if confirmed >= target:
                    break
        time.sleep(rng.random() * 0.003)  # land anywhere, also between the header and the payload
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        st = read(root)
        # Every append that returned is there, in order, intact; at most one more made it.
        assert st["tags"][: confirmed] == list(range(1, confirmed + 1))
        assert len(st["tags"]) <= confirmed + 1 + 200
        assert st["tags"] == list(range(1, len(st["tags"]) + 1))
        assert st["bad_payloads"] == 0
        confirmed = len(st["tags"])


def test_consume_survives_reopen_and_deletes_segments(tmp_path: Path) -> None:
    root = tmp_path / "buf"
    write(root, 40)
    n_before = len(segments(root))
    st = read(root, "30")
    assert st["after_consume"] == list(range(31, 41)) and st["pending_after"] == 10
    assert len(segments(root)) < n_before
