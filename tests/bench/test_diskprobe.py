"""bench/diskprobe.py: it really fsyncs, on its schedule, and cleans up after itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench.diskprobe import FsyncProbe


def test_the_probe_fsyncs_a_file_in_the_folder_and_removes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with FsyncProbe(tmp_path, every_s=0.005) as probe:
        deadline = time.monotonic() + 10
        while len(probe.samples_ms) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [p.name[:12] for p in tmp_path.iterdir()] == ["fsync-probe-"]
    s = probe.summary()
    assert s["n"] == len(synced) >= 5 and 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert list(tmp_path.iterdir()) == []  # its file is gone


def test_an_empty_probe_summarises_to_zeros(tmp_path: Path) -> None:
    assert FsyncProbe(tmp_path).summary()["n"] == 0
