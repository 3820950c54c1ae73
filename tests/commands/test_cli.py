"""The root command: help without importing any group, a clear answer when a group's extra is missing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.services import ROOT

HEAVY = ("carbonlink.cloud", "carbonlink.edge", "carbonlink.simulators", "fastapi", "web3", "eth_account",
         "pymodbus", "asyncua", "aiosqlite", "asyncpg")


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_help_lists_every_group_and_imports_none_of_them() -> None:
    proc = _python(
        "import sys, json, contextlib, io\n"
        "from carbonlink.cli import app\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: app(['--help'], prog_name='carbonlink')\n"
        "    except SystemExit: pass\n"
        "print(json.dumps({'help': buf.getvalue(), 'modules': sorted(sys.modules)}))")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for group in ("demo", "edge", "cloud", "provision", "sim", "hj212", "anchor", "verify", "faults"):
        assert f"  {group} " in out["help"]
    loaded = [m for m in out["modules"] if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert loaded == []


def test_a_group_whose_extra_is_missing_names_the_pip_command() -> None:
    # fastapi absent, as on a gateway that installed only the edge extra
    proc = _python("import sys; sys.modules['fastapi'] = None\n"
                   "from carbonlink.cli import main; sys.argv = ['carbonlink', 'cloud', 'serve']; main()")
    assert proc.returncode == 2
    assert "pip install 'carbonlink[cloud]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "carbonlink.cli", "--version"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == __import__("carbonlink").__version__
