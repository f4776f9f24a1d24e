"""End-to-end CLI runs on tiny saved models, and the bad-input catalogue (exit 2, one line)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing

import pandas as pd
import pytest
from conftest import write_jsonl, write_mmlu_csv

from phaseprune import cli
from phaseprune.cli import main
from phaseprune.runs.config import (
    DTYPES,
    AnalyzeConfig,
    CompareConfig,
    ExportConfig,
    ModelConfig,
    ReportConfig,
    TaskConfig,
    TasksConfig,
    objective_names,
    strategy_names,
)
from phaseprune.runs.flags import plain_text
from phaseprune.strategies.registry import NEEDS_ARGUMENT


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def analyze_args(model, out, *extra, task="mmlu", data_dir=None):
    args = ["analyze", "--model", model, "--task", task, "--out", out, "--quiet", "--n-boot", "100"]
    if data_dir is not None:
        args += ["--data-dir", data_dir]
    return [*args, *extra]


@pytest.mark.filterwarnings("error")
def test_analyze_end_to_end_tiny(capsys, tiny_llama_dir, toy_mmlu_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, *analyze_args(tiny_llama_dir, out, "--shots", "2", data_dir=toy_mmlu_dir)
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == 1 and summary["n_layers"] == 3
    assert summary["task"]["n_items"] == 10  # 12 rows, first 2 are exemplars
    assert summary["task"]["excluded_exemplars"] == ["toy_subject/0", "toy_subject/1"]
    assert len(summary["layers"]) == 4
    assert summary["accuracy"] == summary["layers"][-1]["accuracy"]
    items = pd.read_parquet(out / "items.parquet")
    assert len(items) == 10 * 4
    assert set(items.columns) >= {
        "item_id",
        "layer",
        "logit_A",
        "logit_D",
        "margin",
        "pred",
        "gold",
    }
    last = items[items.layer == 3]
    assert last.correct.mean() == pytest.approx(summary["accuracy"])
    for name in ("margin.png", "option_frequency.png", "accuracy.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert "accuracy" in stdout


def test_rerun_refused_without_overwrite(capsys, tiny_llama_dir, toy_mmlu_dir, tmp_path):
    out = tmp_path / "run"
    args = analyze_args(tiny_llama_dir, out, "--no-plots", data_dir=toy_mmlu_dir)
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "already holds a run" in err and "--overwrite" in err
    assert run_cli(capsys, *args, "--overwrite")[0] == 0


def _assert_usage_error(capsys, argv, pattern):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert pattern in lines[0], lines[0]


def test_bad_model_inputs(capsys, tmp_path, toy_mmlu_dir, char_llama_dir, bert_dir):
    out = tmp_path / "o"
    _assert_usage_error(
        capsys, analyze_args(tmp_path / "nope", out, data_dir=toy_mmlu_dir), "does not exist"
    )
    _assert_usage_error(
        capsys, analyze_args(char_llama_dir, out, data_dir=toy_mmlu_dir), "not a single token"
    )
    _assert_usage_error(
        capsys, analyze_args(bert_dir, out, data_dir=toy_mmlu_dir), "supported families"
    )


def test_bad_task_inputs(capsys, tmp_path, tiny_llama_dir, toy_mmlu_dir):
    m, out = tiny_llama_dir, tmp_path / "o"
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_usage_error(capsys, analyze_args(m, out, data_dir=tmp_path / "missing"), "missing")
    _assert_usage_error(capsys, analyze_args(m, out, data_dir=empty), str(empty))
    _assert_usage_error(capsys, analyze_args(m, out, task="mmlu_x"), "mmlu")
    _assert_usage_error(
        capsys,
        analyze_args(m, out, "--subjects", "toy_subjekt", data_dir=toy_mmlu_dir),
        "toy_subject",
    )
    _assert_usage_error(
        capsys, analyze_args(m, out, "--limit", "0", data_dir=toy_mmlu_dir), "limit"
    )


def test_bad_data_files(capsys, tmp_path, tiny_llama_dir):
    m, out = tiny_llama_dir, tmp_path / "o"
    bad_csv = write_mmlu_csv(
        tmp_path / "badcsv", {"s": [["q", "a", "b", "c", "d", "A"], ["q2", "a", "b"]]}
    )
    _assert_usage_error(capsys, analyze_args(m, out, data_dir=bad_csv), "s_test.csv")
    bad_letter = write_mmlu_csv(tmp_path / "badletter", {"s": [["q", "a", "b", "c", "d", "E"]]})
    _assert_usage_error(capsys, analyze_args(m, out, data_dir=bad_letter), "answer")
    one = write_jsonl(tmp_path / "one.jsonl", [{"question": "q", "choices": ["x"], "answer": 0}])
    _assert_usage_error(capsys, analyze_args(m, out, task=f"jsonl:{one}"), "option")
    eleven = write_jsonl(
        tmp_path / "eleven.jsonl", [{"question": "q", "choices": list("abcdefghijk"), "answer": 0}]
    )
    _assert_usage_error(capsys, analyze_args(m, out, task=f"jsonl:{eleven}"), "option")


def test_tasks_lists_sources(capsys, toy_mmlu_dir):
    code, out, _ = run_cli(capsys, "tasks", "--data-dir", toy_mmlu_dir)
    assert code == 0 and "mmlu" in out and "winogrande" in out


def test_analyze_finds_transition_on_trained_decider(capsys, decider, tmp_path):
    """A model that really decides: Silent picks pile up, Decisive picks follow the gold letters."""
    out = tmp_path / "decider-run"
    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    code, printed, err = run_cli(capsys, *analyze_args(decider.path, out, task=task))
    assert code == 0, err
    s = json.loads((out / "summary.json").read_text())
    t = s["transition_layer"]
    assert t is not None and 0 < t <= s["n_layers"], s["phases"]["statement"]
    # what --decisive tail would cut on these items, in the printed result
    from phaseprune.core.phases import tail_statement

    tail = tail_statement([r["accuracy"] for r in s["layers"]],
                          [r["margin_mean"] for r in s["layers"]], t)  # fmt: skip
    assert tail.startswith("Decisive tail: ") and tail in printed.splitlines()
    assert s["accuracy"] >= 0.8
    lo, hi = s["transition_ci"]
    assert lo <= t <= hi
    layers = s["layers"]
    gold = s["gold_frequency"]
    # Silent Phase: picks concentrated (low entropy) compared with the gold letters' spread
    silent_entropy = max(r["pick_entropy"] for r in layers[:t])
    assert silent_entropy < 1.5  # of a maximum 2 bits for 4 letters
    # Decisive Phase output: picks follow the gold distribution
    last = layers[-1]["option_frequency"]
    assert max(abs(last[c] - gold[c]) for c in gold) < 0.1
    assert s["phases"]["layer_phases"][t - 1] == "decisive"


def test_interrupted_analyze_resumes_from_partial(
    capsys, monkeypatch, tiny_llama_dir, toy_mmlu_dir, tmp_path
):
    """An analyze run stopped after its first batch keeps it and the rerun only does the rest."""
    import phaseprune.analysis as analyze

    full = tmp_path / "full"
    base = analyze_args(
        tiny_llama_dir, full, "--max-tokens", "64", "--no-plots", data_dir=toy_mmlu_dir
    )
    assert run_cli(capsys, *base)[0] == 0
    real_read = analyze.read_options

    def read_one_batch_then_stop(*args, on_batch=None, **kwargs):
        def stop_after_first(batch, logits):
            on_batch(batch, logits)
            raise KeyboardInterrupt

        return real_read(*args, on_batch=stop_after_first, **kwargs)

    out = tmp_path / "stopped"
    argv = analyze_args(
        tiny_llama_dir, out, "--max-tokens", "64", "--no-plots", data_dir=toy_mmlu_dir
    )
    monkeypatch.setattr(analyze, "read_options", read_one_batch_then_stop)
    code, _, err = run_cli(capsys, *argv)
    assert code == 130 and "rerun the same command" in err
    assert (out / "partial" / "readout.npz").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(analyze, "read_options", real_read)
    assert run_cli(capsys, *argv)[0] == 0
    resumed = json.loads((out / "summary.json").read_text())
    reference = json.loads((full / "summary.json").read_text())
    assert 0 < resumed["timing"]["items_resumed"] < resumed["task"]["n_items"]
    assert resumed["layers"] == reference["layers"]
    assert not (out / "partial").exists()


# --- generated arguments: help text, choices, parse-time errors ---------------------------------


def _options(help_text: str) -> dict[str, str]:
    """``--flag`` -> its help entry (the option line and its indented continuation)."""
    entries, flag = {}, None
    for line in help_text.splitlines():
        start = re.match(r"  (--[\w-]+)", line)
        if start:
            flag = start[1]
            entries[flag] = line
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


def _fields(cls):
    """The fields that become arguments: nested config dataclasses are flattened."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name])
        else:
            yield f


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_help_is_plain_and_states_defaults(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and out.startswith(f"usage: phaseprune {command}")
    assert "`" not in out and ":class:" not in out
    entries = _options(out)
    for f in _fields(cli.COMMANDS[command][0]):
        assert f.metadata["help"], f"{command}: field {f.name} has no help"
        if f.metadata.get("positional"):
            continue
        flag = "--" + f.name.replace("_", "-")
        has_default = f.default is not dataclasses.MISSING
        assert ("(default:" in entries[flag]) == has_default, entries[flag]


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "`" not in out
    for command, (cls, _) in cli.COMMANDS.items():
        assert re.search(rf"^    {command} +\S", out, re.M), out
        assert "`" not in cls.__doc__.splitlines()[0]
    assert run_cli(capsys, "--version")[0] == 0


def test_help_lists_choices(capsys):
    flat = " ".join(run_cli(capsys, "prune", "--help")[1].split())
    assert all(name in flat for name in (*strategy_names(), *objective_names(), *DTYPES))
    assert "(default: iterative)" in flat and "(default: on)" in flat and "(default: off)" in flat
    demo = " ".join(run_cli(capsys, "demo", "--help")[1].split())
    assert all(name in demo for name in strategy_names() if name not in NEEDS_ARGUMENT)


def test_plain_text_strips_markup():
    text = (
        ":class:`~phaseprune.core.errors.UsageError` from :func:`a.b` in ``phaseprune x``, **bold**"
    )
    assert plain_text(text) == "UsageError from a.b in phaseprune x, bold"


BAD_VALUES = [
    (["prune", "--out", "o", "--strategy", "iterativ"], "did you mean iterative"),
    (["prune", "--out", "o", "--objective", "loss"], "--objective"),
    (["analyze", "--out", "o", "--dtype", "fp8"], "float32, bfloat16, float16"),
    (["analyze", "--out", "o", "--device", "tpu"], "cuda:N"),
    (["prune", "--out", "o", "--device", "cuda:x"], "--device"),
    (["demo", "--strategies", "last,shortgpt"], "shortgpt"),
    (["prune", "--out", "o", "--protect", "1,a"], "invalid int value: 'a'"),
    (["export", "run", "--out", "o"], "--step"),
    (["compare", "--out", "o"], "runs"),
]


@pytest.mark.parametrize(("argv", "pattern"), BAD_VALUES)
def test_bad_values_fail_at_parse_time(capsys, monkeypatch, argv, pattern):
    def never(cfg):
        raise AssertionError(f"ran with {cfg}")

    for name, (cls, _) in cli.COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, (cls, never))
    _assert_usage_error(capsys, argv, pattern)


def test_bad_values_load_nothing():
    """Importing the CLI and rejecting bad input imports neither torch nor transformers."""
    script = (
        "import sys; from phaseprune.cli import main; "
        f"codes = [main(a) for a in {[argv for argv, _ in BAD_VALUES]!r}]; "
        "print(set(codes), 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "{2} False False", done.stderr


def test_every_command_builds_its_config(capsys, monkeypatch):
    seen = []
    for name, (cls, _) in cli.COMMANDS.items():
        monkeypatch.setitem(cli.COMMANDS, name, (cls, lambda cfg: seen.append(cfg) or 0))
    argvs = [
        ["compare", "a", "b", "--out", "o"],
        ["export", "r", "--step", "2", "--out", "o", "--overwrite"],
        ["report", "a"],
        ["tasks", "--data-dir", "d"],
        ["analyze", "--out", "o", "--dtype", "none", "--device", "cuda:1", "--subjects", "x,y"],
    ]
    assert [main(argv) for argv in argvs] == [0] * len(argvs)
    assert seen[:4] == [
        CompareConfig(runs=("a", "b"), out="o"),
        ExportConfig(run="r", step=2, out="o", overwrite=True),
        ReportConfig(runs=("a",)),
        TasksConfig(data_dir="d"),
    ]
    assert seen[4] == AnalyzeConfig(
        out="o",
        model=ModelConfig(dtype=None, device="cuda:1"),
        task=TaskConfig(subjects=("x", "y")),
    )
