"""pyproject.toml declares what the package imports, and its wheel holds every file it reads."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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


def test_the_torch_that_setup_pins_satisfies_the_declared_range():
    # `make setup` installs its pinned CPU torch first; if the pin fell outside pyproject's
    # range, installing the package would pull another (multi-GB CUDA) torch over it
    pins = re.findall(r"pip install [^\n]*\btorch==([\w.+]+)", (ROOT / "Makefile").read_text())
    assert len(pins) == 1
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [Requirement(r) for r in deps if _name(r) == "torch"]
    assert torch.specifier.contains(pins[0])


def test_the_wheel_holds_every_module_and_the_report_templates(tmp_path):
    """Build the wheel from a copy of the tree: every file under src/phaseprune must ship."""
    tree = tmp_path / "tree"
    shutil.copytree(SRC, tree / "src" / "phaseprune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    build = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path)!r}))"
    done = subprocess.run(
        [sys.executable, "-c", build], cwd=tree, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / done.stdout.split()[-1]) as wheel:
        names = set(wheel.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = wheel.read(entry_points).decode()
    shipped = {n for n in names if n.startswith("phaseprune/")}
    source = {
        str(p.relative_to(SRC.parent))
        for p in SRC.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "phaseprune/presentation/report/templates/report.html.j2" in source
    assert shipped == source
    assert "phaseprune = phaseprune.cli:main" in scripts


def test_no_source_file_is_ignored_by_git():
    """A source file that .gitignore matches never reaches a clone (a `runs/` pattern once hid
    `src/phaseprune/runs/*.py` created after the move, and CI's clean clone lacked them)."""
    root = ROOT
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [
        str(p.relative_to(root))
        for d in ("src", "tests", "experiments", "benchmarks")
        for p in (root / d).rglob("*")
        if p.suffix in (".py", ".j2", ".toml")
        and "__pycache__" not in p.parts
        and ".egg-info" not in str(p)
    ]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *sources], cwd=root, capture_output=True, text=True
    )
    assert done.stdout.split() == []
