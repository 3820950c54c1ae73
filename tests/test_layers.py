"""The layers of design.md, checked on the source: imports point down only.

kernel  <- codecs  <- edge | cloud | simulators | rules  <- commands and the root CLI
anomaly (the model runtime) sits beside codecs: it imports only the kernel, edge and cloud may import it.
Edge and cloud never import each other or simulators; nothing imports a layout folder by its bare name.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tests.services import ROOT

PKG = ROOT / "carbonlink"
LAYOUT = ("edge", "cloud", "simulators", "rules")
# module prefix -> prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "carbonlink.kernel": ("carbonlink.codecs", "carbonlink.edge", "carbonlink.cloud", "carbonlink.simulators",
                          "carbonlink.rules", "carbonlink.commands", "carbonlink.cli"),
    "carbonlink.codecs": ("carbonlink.edge", "carbonlink.cloud", "carbonlink.simulators", "carbonlink.rules",
                          "carbonlink.commands", "carbonlink.cli"),
    "carbonlink.anomaly": ("carbonlink.edge", "carbonlink.cloud", "carbonlink.simulators", "carbonlink.rules",
                           "carbonlink.commands", "carbonlink.cli"),
    "carbonlink.rules": ("carbonlink.edge", "carbonlink.cloud", "carbonlink.simulators", "carbonlink.commands",
                         "carbonlink.cli"),
    "carbonlink.edge": ("carbonlink.cloud", "carbonlink.simulators", "carbonlink.commands", "carbonlink.cli"),
    "carbonlink.cloud": ("carbonlink.edge", "carbonlink.simulators", "carbonlink.commands", "carbonlink.cli"),
    "carbonlink.simulators": ("carbonlink.edge", "carbonlink.cloud", "carbonlink.commands", "carbonlink.cli"),
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    paths = []
    for folder, dirs, files in os.walk(PKG, followlinks=True):  # carbonlink/edge and friends are links
        dirs[:] = [d for d in dirs if d not in ("node_modules", "__pycache__")]
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    for path in sorted(paths):
        rel = path.relative_to(PKG).with_suffix("")
        parts = ["carbonlink", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _imports(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names += [base] + [f"{base}.{a.name}" for a in node.names]
    return names


MODULES = _modules()


def test_the_tree_was_found() -> None:
    names = {m for m, _ in MODULES}
    assert {"carbonlink.kernel.wire", "carbonlink.edge.agent", "carbonlink.cloud.ingest"} <= names


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(module: str, path: Path) -> None:
    bad = []
    for imported in _imports(module, path):
        if imported.split(".")[0] in LAYOUT:
            bad.append(f"{imported} (import it as carbonlink.{imported})")
        for layer, forbidden in FORBIDDEN.items():
            if module == layer or module.startswith(layer + "."):
                bad += [imported for f in forbidden if imported == f or imported.startswith(f + ".")]
    assert not bad, f"{module} imports across the layers: {sorted(set(bad))}"


def test_tests_and_benches_use_the_installed_names() -> None:
    offenders = []
    for folder in ("tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            if "firmware/mp" in str(path):
                continue  # MicroPython scripts import the firmware's own modules
            for imported in _imports(path.stem, path):
                if imported.split(".")[0] in LAYOUT:
                    offenders.append(f"{path.relative_to(ROOT)}: {imported}")
    assert not offenders, offenders


def test_benches_import_nothing_from_the_tests() -> None:
    """A bench that needs a test's helper finds it in the package (as the firmware lab is), not in tests/."""
    offenders = [f"{path.relative_to(ROOT)}: {imported}" for path in (ROOT / "bench").rglob("*.py")
                 for imported in _imports(path.stem, path) if imported.split(".")[0] == "tests"]
    assert not offenders, offenders
