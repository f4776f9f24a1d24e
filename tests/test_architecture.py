"""The layering of docs/architecture.md, checked on the source tree and on every import form.

Each layer is a subpackage of ``phaseprune`` (the entry points are the package root's own
modules and ``cli/``); a module may import its own layer and the layers above it in
:data:`LAYERS`, never one below. Imports are read from the syntax tree, so ``import
phaseprune.x``, ``from phaseprune.x import y``, ``from phaseprune import x``, relative imports
and imports inside functions all count.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "phaseprune"
LAYERS = {  # docs/architecture.md's table, top to bottom
    "core": ["core"],
    "tasks": ["tasks"],
    "model": ["model"],
    "engine": ["engine"],
    "strategies": ["strategies"],
    "runs": ["runs"],
    "presentation": ["presentation"],
    "entry points": ["analysis", "pruning", "compare", "export", "demo", "api", "cli", "__main__"],
}
RANK = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}
ENTRY = set(LAYERS["entry points"])
COMPOSERS = {"demo", "api", "cli", "__main__", "export"}  # compose the other commands
ROOT_NAMES = {"__version__"}  # what ``phaseprune/__init__.py`` itself defines


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts != ("__init__.py",):
            yield path, rel.parts[0].removesuffix(".py")


def _dotted(path: Path) -> list[str]:
    """The package a module's relative imports start from, as a list of names."""
    return ["phaseprune", *path.relative_to(SRC).parent.parts]


def _targets(path: Path) -> set[str]:
    """The top-level names under ``phaseprune`` that ``path`` imports, in any form."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
            out |= {n[1] for n in names if n[0] == "phaseprune" and len(n) > 1}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _dotted(path)[: len(_dotted(path)) - node.level + 1]
                module = [*base, *(node.module.split(".") if node.module else [])]
            else:
                module = (node.module or "").split(".")
            if module[0] != "phaseprune":
                continue
            if len(module) > 1:
                out.add(module[1])
            else:  # from phaseprune import x: x is a layer, an entry point or a root name
                out |= {a.name for a in node.names} - ROOT_NAMES
    return out


def test_the_tree_is_the_layers():
    """Every entry of the package root is a layer's package or an entry point, nothing else."""
    entries = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__pycache__"}
    assert entries - {"__init__"} == set(RANK)
    packages = [p for p in SRC.rglob("*") if p.is_dir() and any(p.glob("*.py"))]
    assert [p for p in packages if not (p / "__init__.py").exists()] == []
    assert len([p for p in SRC.glob("*.py")]) <= 12


def test_every_import_names_a_known_layer():
    unknown = {
        f"{path.relative_to(SRC)} imports {t}"
        for path, _ in _modules()
        for t in _targets(path)
        if t not in RANK
    }
    assert unknown == set()


def test_no_import_points_to_a_later_layer():
    wrong = []
    for path, top in _modules():
        for target in _targets(path) - {top}:
            allowed = top in COMPOSERS and target in ENTRY
            if RANK.get(target, -1) > RANK[top] and not allowed:
                wrong.append(f"{path.relative_to(SRC)} imports {target}")
    assert wrong == []


def test_entry_points_do_not_import_each_other():
    wrong = [
        f"{top} imports {t}"
        for path, top in _modules()
        if top in ENTRY - COMPOSERS
        for t in _targets(path) & ENTRY - {top}
    ]
    assert wrong == []


def test_the_checker_sees_every_import_form(tmp_path, monkeypatch):
    """The checker itself: each import form is read, so a back-edge cannot hide in one."""
    pkg = tmp_path / "phaseprune" / "core"
    pkg.mkdir(parents=True)
    forms = {
        "import phaseprune.runs.files": {"runs"},
        "from phaseprune.runs import files": {"runs"},
        "from phaseprune import pruning, __version__": {"pruning"},
        "from ..runs import files": {"runs"},
        "from .. import demo": {"demo"},
        "from . import metrics": {"core"},
        "def f():\n    from phaseprune.engine.readout import read_options": {"engine"},
    }
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "phaseprune")
    for code, want in forms.items():
        path = pkg / "probe.py"
        path.write_text(code + "\n")
        assert _targets(path) == want, code


def test_no_module_over_400_lines():
    long = {
        str(p.relative_to(SRC)): n
        for p, _ in _modules()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
