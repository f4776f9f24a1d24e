"""pyproject.toml declares what the package imports, and nothing it does not need."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "phaseprune"

RUNTIME_ONLY = {
    "accelerate": "transformers places layers with it for --device auto (device_map)",
    "gguf": "transformers reads .gguf files with it (gguf_file=)",
    "pyarrow": "pandas writes and reads Parquet with it",
}
"""Declared but never imported: another library needs them for a feature phaseprune uses."""


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared() -> tuple[set[str], set[str]]:
    """Required and optional (extras other than dev) distributions in pyproject.toml."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(r) for r in project["dependencies"]}
    extras = project.get("optional-dependencies", {})
    optional = {_name(r) for name, reqs in extras.items() if name != "dev" for r in reqs}
    return required, optional


def _imported() -> dict[str, set[str]]:
    """Distribution -> the source files that import it (lazy imports included)."""
    modules: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "phaseprune":
                    modules.setdefault(top, set()).add(str(path.relative_to(SRC)))
    dists = md.packages_distributions()
    out: dict[str, set[str]] = {}
    for module, files in modules.items():
        for dist in dists.get(module, [module]):
            out.setdefault(dist.lower().replace("_", "-"), set()).update(files)
    return out


def test_every_import_is_declared():
    required, optional = _declared()
    undeclared = {d: sorted(f) for d, f in _imported().items() if d not in required | optional}
    assert undeclared == {}


def test_every_declared_dependency_is_imported_or_needed_at_run_time():
    required, optional = _declared()
    imported = set(_imported())
    unused = sorted((required | optional) - imported - set(RUNTIME_ONLY))
    assert unused == []
    assert set(RUNTIME_ONLY) <= required


def test_torch_is_pinned_by_setup_not_left_to_pip():
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
