"""`phaseprune demo` end to end on a tiny model: every stage, one report, a rerun that resumes;
and the findings study (experiments/) turning such runs into its document."""

import json
import shutil
from pathlib import Path

import pytest
import transformers
from conftest import write_mmlu_csv

from phaseprune.cli import main

ROOT = Path(__file__).resolve().parent.parent


def demo_args(model, data, out, *extra):
    return ["demo", "--model", str(model), "--data-dir", str(data), "--subjects", "a,b",
            "--shots", "1", "--items", "12", "--calib", "6", "--eval", "8", "--steps", "2",
            "--strategies", "iterative,last", "--no-decider", "--out", str(out),
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tiny_llama_dir, tmp_path_factory):
    """Run the demo once, counting model loads; ``(argv, out, loads, stdout)``."""
    tmp = tmp_path_factory.mktemp("demo")
    rows = [[f"Question {i}?", "one", "two", "three", "four", "ABCD"[i % 4]] for i in range(12)]
    data = write_mmlu_csv(tmp / "data", {"a": rows, "b": rows})
    out = tmp / "demo"
    loads = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting)
    try:
        argv = demo_args(tiny_llama_dir, data, out)
        assert main(argv) == 0
    finally:
        mp.undo()
    return argv, out, loads


def test_demo_runs_every_stage_with_one_model_load(demo_run, capsys):
    _, out, loads = demo_run
    assert len(loads) == 1  # one model load for analyze and both pruning runs
    summary = json.loads((out / "analyze" / "summary.json").read_text())
    assert summary["task"]["n_items"] == 12 and summary["task"]["subjects"] == ["a", "b"]
    for strategy in ("iterative", "last"):
        traj = json.loads((out / f"prune-{strategy}" / "trajectory.json").read_text())
        assert traj["complete"] and len(traj["steps"]) == 2
        assert traj["strategy"] == strategy
    assert (out / "compare" / "compare.csv").exists()
    assert (out / "report.html").stat().st_size > 100_000  # plotly inlined
    # the runs share a score store: `last` reads the unpruned model's readouts iterative stored
    first, second = (json.loads((out / f"prune-{s}" / "trajectory.json").read_text())
                     for s in ("iterative", "last"))  # fmt: skip
    assert first["timing"]["score_cache"]["key"] == second["timing"]["score_cache"]["key"]
    assert second["timing"]["score_cache"]["hits"] >= 2


def test_demo_rerun_resumes_without_rewriting(demo_run, capsys):
    argv, out, _ = demo_run

    def records():  # the runs' records (compare's tables and head-to-head are redrawn)
        return {p: p.stat().st_mtime_ns for p in out.glob("*/*.json") if p.parent.name != "compare"}

    before = records()
    assert main(argv) == 0
    assert str(out / "report.html") in capsys.readouterr().out
    assert records() == before


def test_demo_overwrite_starts_the_shared_store_again(demo_run, tmp_path):
    argv, out, _ = demo_run
    copy = tmp_path / "demo"
    shutil.copytree(out, copy)
    assert main([*argv[: argv.index("--out") + 1], str(copy), "--overwrite"]) == 0
    first = json.loads((copy / "prune-iterative" / "trajectory.json").read_text())
    assert first["timing"]["score_cache"]["hits"] == 0  # nothing read from the old store


def test_demo_rejects_unknown_strategy(capsys, tmp_path):
    code = main(["demo", "--strategies", "iterative,shortgpt", "--out", str(tmp_path / "d")])
    assert code == 2
    assert "shortgpt" in capsys.readouterr().err


def test_findings_document_renders_from_runs(demo_run, tmp_path):
    """The study's document: collect the numbers from runs, copy figures, render the doc."""
    from phaseprune_study import document as doc_half  # the study, not the tool: only here
    from phaseprune_study import plans

    _, out, _ = demo_run
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(out / "analyze", runs / "analyze-mmlu")
    for strategy in ("iterative", "last"):
        shutil.copytree(out / f"prune-{strategy}", runs / f"prune-{strategy}")
    docs = tmp_path / "docs" / "findings"
    numbers = doc_half.collect(plans.PLANS["smollm2-135m"], runs, docs)
    assert numbers["claims"]["a"]["verdict"] is False  # a random model has no transition
    iterative = next(t for t in numbers["prune"] if t["strategy"] == "iterative")
    assert numbers["single"]["base_accuracy"] == iterative["calib_step0"]["accuracy"]
    assert numbers["single"]["source"] == "prune-iterative"
    phases = numbers["analyze"]["phases"]["layer_phases"]  # grouped by the analyze run's phases
    assert [r["phase"] for r in numbers["single"]["layers"]] == phases
    doc = tmp_path / "docs" / "findings.md"
    doc_half.render({"smollm2-135m": numbers, "qwen2.5-coder-1.5b": None}, doc)
    text = doc.read_text()
    assert "not run yet" in text and "| last |" in text
    assert "(run `prune-iterative`)" in text
    # an unfinished run is shown up to its last step, marked, with a provisional collapse
    traj = json.loads((runs / "prune-last" / "trajectory.json").read_text())
    traj["complete"] = False
    traj["steps"] = traj["steps"][:-1]
    del traj["collapse"]
    (runs / "prune-last" / "trajectory.json").write_text(json.dumps(traj))
    partial = doc_half.collect(plans.PLANS["smollm2-135m"], runs, docs)
    last = next(t for t in partial["prune"] if t["strategy"] == "last")
    assert not last["complete"] and len(last["steps"]) == len(traj["steps"])
    assert "statement" in last["collapse"]
    doc_half.render({"smollm2-135m": partial, "qwen2.5-coder-1.5b": None}, doc)
    assert "| last (unfinished) |" in doc.read_text()
    # a dedicated single-removals run, when there is one, is preferred
    shutil.copytree(out / "prune-iterative", runs / "single-removals")
    again = doc_half.collect(plans.PLANS["smollm2-135m"], runs, docs)
    assert again["single"]["source"] == "single-removals"
    for rel in numbers["figures"].values():
        assert (tmp_path / "docs" / rel).exists()
    for key in ("analyze-mmlu/margin", "analyze-mmlu/option_frequency", "compare"):
        assert f"]({numbers['figures'][key]})" in text
    # rebuilt from the committed numbers alone when the runs are not on this machine
    assert doc_half.collect(plans.PLANS["smollm2-135m"], tmp_path / "none", docs) == json.loads(
        (docs / "smollm2-135m" / "numbers.json").read_text()
    )


def test_demo_decider_story(tmp_path):
    """The demo's decider part: the tiny decider trained, analyzed, pruned; phase-aware (its
    defaults) held against the rest on the same items, and removing its last (Decisive-Phase)
    layer keeps the decision."""
    from phaseprune.demo import _decider_story
    from phaseprune.runs.config import DemoConfig

    cfg = DemoConfig(out=str(tmp_path), strategies=("phase-aware", "last"), steps=3)
    story = _decider_story(cfg, tmp_path / "decider")
    assert story["analyze"]["transition_layer"] is not None  # it decides
    pa, last = story["prune"]["phase-aware"], story["prune"]["last"]
    assert last["steps"][0]["phase_of_removed"] == "decisive"
    assert last["steps"][0]["eval_accuracy"] >= last["step0"]["eval_accuracy"] - 0.05
    # the decider's margin grows to its last layer: the tail is not cut, and every step says
    # which rule chose instead
    assert pa["steps"][0]["calib_phases"]["tail"]["cut_at"] == pa["n_layers"]
    assert all(s["note"] for s in pa["steps"])
    h = story["compare"].attrs["headtohead"]
    assert h["reference"].startswith("phase-aware")
    rows = {r["strategy"]: r for r in h["rows"]}
    assert rows["phase-aware"]["depth_90"] >= rows["last"]["depth_90"]
    assert (tmp_path / "decider" / "compare" / "headtohead.md").exists()
    assert story["report"].html.exists()
    # a rerun reuses the trained model and the finished runs
    before = (tmp_path / "decider" / "model" / "model.safetensors").stat().st_mtime_ns
    again = _decider_story(cfg, tmp_path / "decider")
    assert (tmp_path / "decider" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert again["prune"]["last"]["steps"] == last["steps"]
    # each strategy also ran healed; its steps read the same removals without any map
    for traj in story["healed"].values():
        assert traj["settings"]["heal"] == "linear"
        assert all("unhealed" in s and "heal" in s for s in traj["steps"])
    assert (tmp_path / "decider" / "compare-healed" / "compare.csv").exists()
