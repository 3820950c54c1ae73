"""What `carbonlink demo` prints where no terminal reads it (a log, a pipe, CI): the sign-in link on a
line of its own and unbroken, status lines apart from `stopped: …`, and a second run on the same data
folder saying that the folder holds an earlier one (issue 11 §10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.services import free_port

EXE = Path(sys.executable).with_name("carbonlink")


def _demo(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), "demo", "--duration", "4", "--data-dir", str(data),
                           "--http-port", str(free_port()), *extra],
                          capture_output=True, text=True, timeout=120, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})


def test_link_is_whole_and_lines_are_apart_then_a_second_run_says_it_counts_earlier_ones(tmp_path: Path) -> None:
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = first.stderr.splitlines()
    links = [x for x in lines if x.startswith("http://127.0.0.1:")]
    assert len(links) == 1 and "#key=clk_" in links[0] and len(links[0]) > 80  # longer than the 80 columns, unbroken
    stopped = [x for x in lines if x.startswith("stopped: ")]
    assert len(stopped) == 1 and "produced" in stopped[0]
    assert not any("stopped:" in x and not x.startswith("stopped:") for x in lines)

    second = _demo(tmp_path, "--json", "--no-past-day")  # the first run's past day already counts
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["run"] == 2 and summary["earlier_runs"] == 1
    assert "earlier run" in summary["note"] and summary["anchored_readings_all_runs"] >= summary["anchored_readings"]
    assert "http" not in second.stderr  # --json: nothing but the summary on stdout, no link in the log
