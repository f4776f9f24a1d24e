"""The layering of docs/architecture.md, checked on the source: no import points backwards."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "phaseprune"
LAYERS = {  # docs/architecture.md's table, top to bottom
    "core": ["metrics", "phases", "calibration_size", "objectives", "collapse", "evidence",
             "headtohead", "prompts", "tasks", "errors", "progress"],
    "architecture": ["arch", "surgery", "portable"],
    "engine": ["cpu", "distributed", "identity", "gguf_reads", "models", "encoding", "readout",
               "layer_cache", "candidates", "incremental", "precision", "baselines", "decider"],
    "strategies": ["strategies"],
    "runs": ["flags", "config", "loading", "records", "runio", "runs", "lines",
             "trajectory", "lm_eval_scores", "score_store"],
    "presentation": ["figures", "report", "model_card"],
    "entry points": ["analysis", "pruning", "compare", "export", "demo", "api", "cli", "__main__"],
}  # fmt: skip
RANK = {m: i for i, (_, mods) in enumerate(LAYERS.items()) for m in mods}
ENTRY = set(LAYERS["entry points"])
COMPOSERS = {"demo", "api", "cli", "__main__"}  # compose the other commands


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        if top != "__init__":
            yield path, top


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        module = getattr(node, "module", None) or ""
        if isinstance(node, ast.ImportFrom) and module.startswith("phaseprune."):
            out.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("phaseprune.")}
    return out


def test_every_module_has_a_layer():
    assert {top for _, top in _modules()} <= set(RANK)


def test_no_import_points_to_a_later_layer():
    wrong = []
    for path, top in _modules():
        for target in _imports(path) - {top}:
            allowed = top in COMPOSERS and target in ENTRY
            if RANK[target] > RANK[top] and not allowed:
                wrong.append(f"{path.relative_to(SRC)} imports {target}")
    assert wrong == []


def test_entry_points_do_not_import_each_other():
    wrong = [f"{top} imports {t}" for path, top in _modules() if top in ENTRY - COMPOSERS
             for t in _imports(path) & ENTRY - {top}]  # fmt: skip
    assert wrong == []


def test_no_module_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p, _ in _modules()
            if (n := len(p.read_text().splitlines())) > 400}  # fmt: skip
    assert long == {}
