"""Live progress: step lines as steps complete, JSON lines, labelled bars, the demo's bar."""

from __future__ import annotations

import io
import json

import pytest

from phaseprune.cli import main
from phaseprune.cli.lines import StepPrinter, step_line
from phaseprune.core import progress


def _task(decider) -> str:
    return f"jsonl:{decider.path / 'eval.jsonl'}"


def _argv(decider, out, *extra):
    return ["prune", "--model", str(decider.path), "--task", _task(decider), "--strategy",
            "iterative", "--steps", "2", "--calib", "12", "--eval", "24", "--n-boot", "20",
            "--no-plots", "--out", str(out), *extra]  # fmt: skip


def test_stage_labels_nest_and_reset():
    assert progress.label("readout") == "readout"
    with progress.stage("demo prune last"), progress.stage("step 2/3"):
        assert progress.label("readout") == "demo prune last · step 2/3 · readout"
    assert progress.label("readout") == "readout"


def test_bars_during_prune_name_their_step(decider, tmp_path, monkeypatch, capsys):
    described = []
    real = progress.tqdm

    class recording(real):
        def __init__(self, *args, **kwargs):
            described.append(kwargs["desc"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(progress, "tqdm", recording)
    assert main(_argv(decider, tmp_path / "r")) == 0
    capsys.readouterr()
    assert "step 0 (unpruned) · readout" in described
    for step in (1, 2):
        assert f"step {step}/2 · candidates" in described
        assert f"step {step}/2 · readout" in described


def test_step_lines_are_printed_when_each_step_is_written(decider, tmp_path, monkeypatch, capsys):
    """Each line appears right after its step reaches the disk, before the next step starts."""
    import phaseprune.pruning as prune_module

    printed_at_write = []
    real_write = prune_module._write

    def write(run, traj, rows):
        real_write(run, traj, rows)
        printed_at_write.append(capsys.readouterr().out)

    monkeypatch.setattr(prune_module, "_write", write)
    assert main(_argv(decider, tmp_path / "r")) == 0
    tail = capsys.readouterr().out
    # writes: header (step 0), step 1, step 2, final; each step's line arrives after its write
    # and before the next write
    assert "step 1:" not in printed_at_write[1]  # step 1's line follows its write ...
    assert "step 0: unpruned" in printed_at_write[1]  # ... step 0's came before step 1's write
    assert "step 1: removed layer" in printed_at_write[2]
    assert "step 2: removed layer" in printed_at_write[3]
    assert "wrote " in tail and "step 2:" not in tail


def test_log_json_one_object_per_line(decider, tmp_path, capsys):
    assert main(_argv(decider, tmp_path / "r", "--log-json", "--quiet")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert [e["event"] for e in events] == ["step0", "step", "step", "end"]
    traj = json.loads((tmp_path / "r" / "trajectory.json").read_text())
    for event, step in zip(events[1:3], traj["steps"], strict=True):
        assert event["step"] == step["step"]
        assert event["removed_layers"] == step["removed_layers"]
        assert event["eval_accuracy"] == step["eval_accuracy"]
        assert event["resumed"] is False
    assert events[-1]["removed_layers"] == [k for s in traj["steps"] for k in s["removed_layers"]]
    assert events[-1]["statement"] == traj["collapse"]["statement"]


def test_quiet_prints_no_live_lines_but_the_result(decider, tmp_path, capsys):
    assert main(_argv(decider, tmp_path / "r", "--quiet")) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    out = captured.out.splitlines()
    assert sum("step " in line for line in out) == 3  # the result, printed once at the end


def test_printer_marks_resumed_steps(capsys):
    record = {"eval_accuracy": 0.5, "eval_accuracy_ci": [0.4, 0.6], "transition_layer": 3}
    traj = {"strategy": "last", "model": {"name": "m"}, "collapse": None}
    printer = StepPrinter(json_lines=False, quiet=False)
    printer(traj, record, True)
    out = capsys.readouterr().out
    assert "m · last:" in out and "step 0: unpruned -> accuracy 50.0%" in out
    assert "(resumed)" in out
    assert step_line(record) == "  step 0: unpruned -> accuracy 50.0%, transition 3"


@pytest.mark.parametrize("stopped_early", [False, True])
def test_demo_bar_moves_one_unit_per_step(stopped_early):
    from tqdm import tqdm

    from phaseprune.demo import _advance
    from phaseprune.runs.config import PruneConfig

    bar = tqdm(total=10, file=io.StringIO())
    on_step = _advance(bar, PruneConfig(out="x", strategy="last", steps=3))
    on_step({}, {"eval_accuracy": 0.5}, False)
    assert bar.n == 1
    for step in (1, 2) if stopped_early else (1, 2, 3):
        on_step({}, {"step": step}, False)
    assert bar.n == (3 if stopped_early else 4)
