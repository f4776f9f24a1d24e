"""`phaseprune demo` end to end on a tiny model: every stage, one report, a rerun that resumes."""

import json
from pathlib import Path

import transformers
from conftest import write_mmlu_csv

from phaseprune.cli import main


def demo_args(model, data, out, *extra):
    return ["demo", "--model", str(model), "--data-dir", str(data), "--subjects", "a,b",
            "--shots", "1", "--items", "12", "--calib", "6", "--eval", "8", "--steps", "2",
            "--strategies", "iterative,last", "--out", str(out), *extra]  # fmt: skip


def two_subjects(tmp_path: Path) -> Path:
    rows = [[f"Question {i}?", "one", "two", "three", "four", "ABCD"[i % 4]] for i in range(12)]
    return write_mmlu_csv(tmp_path / "data", {"a": rows, "b": rows})


def test_demo_runs_every_stage_and_resumes(capsys, tiny_llama_dir, tmp_path, monkeypatch):
    data, out = two_subjects(tmp_path), tmp_path / "demo"
    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)
    assert main(demo_args(tiny_llama_dir, data, out)) == 0
    printed = capsys.readouterr().out
    assert len(loads) == 1  # one model load for analyze and both pruning runs
    summary = json.loads((out / "analyze" / "summary.json").read_text())
    assert summary["task"]["n_items"] == 12 and summary["task"]["subjects"] == ["a", "b"]
    for strategy in ("iterative", "last"):
        traj = json.loads((out / f"prune-{strategy}" / "trajectory.json").read_text())
        assert traj["complete"] and len(traj["steps"]) == 2
        assert traj["strategy"] == strategy
    assert (out / "compare" / "compare.csv").exists()
    report = out / "report.html"
    assert report.exists() and str(report) in printed
    # a rerun reuses every finished stage: no model load for analyze, pruning runs resume
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    assert main(demo_args(tiny_llama_dir, data, out)) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == before


def test_demo_rejects_unknown_strategy(capsys, tmp_path):
    code = main(["demo", "--strategies", "iterative,shortgpt", "--out", str(tmp_path / "d")])
    assert code == 2
    assert "shortgpt" in capsys.readouterr().err
