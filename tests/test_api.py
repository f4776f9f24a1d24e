"""The Python API: a model the caller holds gives what the CLI gives on the same items."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers as tf

import phaseprune
from phaseprune.cli import main
from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig

ROOT = Path(__file__).resolve().parent.parent


def _held(path: Path):
    model = tf.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tf.AutoTokenizer.from_pretrained(path)


def _task(decider) -> str:
    return f"jsonl:{decider.path / 'eval.jsonl'}"


def _same_numbers(got: dict, want: dict) -> None:
    """Per-layer records and phases equal (floats to 1e-5): the same readout."""
    assert got["accuracy"] == want["accuracy"]
    assert got["phases"] == want["phases"]
    assert got["transition_layer"] == want["transition_layer"]
    assert got["transition_ci"] == want["transition_ci"]
    for a, b in zip(got["layers"], want["layers"], strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
            else:
                assert a[key] == b[key], key


def test_analyze_held_model_equals_cli(decider, tmp_path, capsys):
    cli_out = tmp_path / "cli"
    argv = ["analyze", "--model", str(decider.path), "--task", _task(decider), "--limit", "60",
            "--n-boot", "100", "--quiet", "--no-plots", "--out", str(cli_out)]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    want = json.loads((cli_out / "summary.json").read_text())
    model, tok = _held(decider.path)
    got = phaseprune.analyze(model, tok, _task(decider), limit=60, n_boot=100, quiet=True)
    assert isinstance(got, phaseprune.Analysis) and got.out is None
    _same_numbers(got.summary, want)
    assert got.accuracy == want["accuracy"]
    assert got.transition_layer == want["transition_layer"] is not None
    assert got.summary["model"]["revision"] is None  # nothing hashes weights held in memory
    items = pd.read_parquet(cli_out / "items.parquet")
    assert got.items.shape == items.shape
    pd.testing.assert_frame_equal(
        got.items.drop(columns="precision", errors="ignore"),
        items.drop(columns="precision", errors="ignore"),
        atol=1e-5,
    )


def test_analyze_by_name_with_out_writes_the_cli_run(decider, tmp_path):
    out = tmp_path / "api"
    got = phaseprune.analyze(
        str(decider.path), task=_task(decider), limit=20, n_boot=50, quiet=True, out=out
    )
    assert got.out == out
    assert json.loads((out / "summary.json").read_text()) == got.summary
    assert not (out / "plots").exists() or any((out / "plots").iterdir())


def test_prune_held_model_equals_cli_and_leaves_nothing(decider, tmp_path, capsys, monkeypatch):
    argv = ["prune", "--model", str(decider.path), "--task", _task(decider), "--strategy",
            "iterative", "--steps", "2", "--calib", "20", "--eval", "40", "--n-boot", "50",
            "--quiet", "--no-plots", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    capsys.readouterr()
    want = json.loads((tmp_path / "cli" / "trajectory.json").read_text())
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    model, tok = _held(decider.path)
    got = phaseprune.prune(
        model, tok, _task(decider), strategy="iterative", steps=2, calib=20, eval=40,
        n_boot=50, quiet=True,
    )  # fmt: skip
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary run is gone
    assert got.removed_layers() == [k for s in want["steps"] for k in s["removed_layers"]]
    assert got.accuracies == [want["step0"]["eval_accuracy"],
                              *(s["eval_accuracy"] for s in want["steps"])]  # fmt: skip
    assert got.removed_layers(1) == want["steps"][0]["removed_layers"]
    cands = pd.read_parquet(tmp_path / "cli" / "candidates.parquet")
    assert sorted(got.candidates["layer"]) == sorted(cands["layer"])
    # the model given is left as it was: all its layers, in order
    assert len(model.model.layers) == want["n_layers"]
    with phaseprune.without_layers(model, got.removed_layers()) as parts:
        assert len(parts.layers) == want["n_layers"] - 2
    assert len(model.model.layers) == want["n_layers"]


def test_on_step_sees_each_step_on_disk_and_resumed_ones(decider, tmp_path):
    seen = []

    def on_step(traj, record, resumed):
        on_disk = json.loads((tmp_path / "r" / "trajectory.json").read_text())
        seen.append((record.get("step", 0), resumed, len(on_disk["steps"])))

    common = dict(task=_task(decider), strategy="last", calib=10, eval=20, n_boot=20,
                  quiet=True, out=tmp_path / "r", on_step=on_step)  # fmt: skip
    phaseprune.prune(str(decider.path), steps=1, **common)
    assert seen == [(0, False, 0), (1, False, 1)]
    seen.clear()
    phaseprune.prune(str(decider.path), steps=2, resume=True, **common)
    assert seen == [(0, True, 1), (1, True, 1), (2, False, 2)]


def test_make_config_flat_settings_and_refusals():
    cfg = phaseprune.make_config(
        PruneConfig, out="x", model="m", subjects=["a", "b"], steps=3, dtype="bfloat16"
    )
    assert cfg.model == ModelConfig(model="m", dtype="bfloat16")
    assert cfg.task == TaskConfig(subjects=("a", "b"))
    assert cfg.steps == 3
    with pytest.raises(TypeError, match=r"no setting 'step'.*did you mean steps"):
        phaseprune.make_config(PruneConfig, out="x", step=3)
    with pytest.raises(TypeError, match="either config= or keyword settings"):
        phaseprune.analyze(config=AnalyzeConfig(out="x"), n_boot=3)
    with pytest.raises(phaseprune.UsageError, match="tokenizer= was given without model="):
        phaseprune.analyze(tokenizer=object(), out="x")
    with pytest.raises(phaseprune.UsageError, match="--limit 0: must be at least 1"):
        phaseprune.make_config(AnalyzeConfig, out="x", limit=0)


def test_held_model_needs_its_tokenizer_and_a_known_family(decider, tiny_llama_dir):
    model, _ = _held(decider.path)
    with pytest.raises(phaseprune.UsageError, match="needs its tokenizer"):
        phaseprune.analyze(model, None, _task(decider), limit=4)
    with pytest.raises(phaseprune.UsageError, match="is float32, not bfloat16"):
        phaseprune.analyze(model, _held(decider.path)[1], _task(decider), limit=4,
                           dtype="bfloat16")  # fmt: skip


def test_package_namespace_and_python_m():
    assert sorted(phaseprune.__all__) == sorted(phaseprune._EXPORTS)
    for name in phaseprune.__all__:
        assert getattr(phaseprune, name) is not None
    from phaseprune.model.surgery import without_layers

    assert phaseprune.without_layers is without_layers
    with pytest.raises(AttributeError):
        phaseprune.nothing_here  # noqa: B018
    done = subprocess.run(
        [sys.executable, "-m", "phaseprune", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == f"phaseprune {phaseprune.__version__}"
    light = subprocess.run(
        [sys.executable, "-c", "import sys, phaseprune; print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert light.stdout.strip() == "False"


def test_api_docs_name_every_export():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in phaseprune.__all__
               if f"`{name}" not in text and f"`phaseprune.{name}(" not in text]  # fmt: skip
    assert missing == []


def _without_timing(record: dict) -> dict:
    """A record less what differs between two makings of the same run (times, settings.out)."""
    drop = {"timing", "created"}
    out = {k: v for k, v in record.items() if k not in drop}
    out["settings"] = {k: v for k, v in record["settings"].items()
                       if k not in ("out", "plots")}  # fmt: skip
    return out


def test_out_none_writes_nothing_and_equals_out_dir(decider, tmp_path, monkeypatch):
    """``out=None`` computes in memory what ``out=DIR`` writes: equal records, nothing on disk."""
    common = dict(task=_task(decider), n_boot=50, quiet=True, plots=False)
    prune_settings = dict(strategy="phase-aware", steps=2, calib=20, eval=40, **common)
    on_disk_a = phaseprune.analyze(str(decider.path), limit=40, out=tmp_path / "a", **common)
    on_disk_p = phaseprune.prune(str(decider.path), out=tmp_path / "p", **prune_settings)

    from phaseprune.runs import outdir

    def refuse(path, data):
        raise AssertionError(f"out=None wrote {path}")

    monkeypatch.setattr(outdir, "atomic_write_bytes", refuse)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path / "tmp")
    a = phaseprune.analyze(str(decider.path), limit=40, **common)
    p = phaseprune.prune(str(decider.path), **prune_settings)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert a.out is None and p.out is None and on_disk_p.out == tmp_path / "p"
    assert _without_timing(a.summary) == _without_timing(on_disk_a.summary)
    assert _without_timing(p.trajectory) == _without_timing(on_disk_p.trajectory)
    pd.testing.assert_frame_equal(a.items, on_disk_a.items)
    pd.testing.assert_frame_equal(p.candidates, on_disk_p.candidates)
    # what DIR holds is what the records say, read back through the one loader
    assert _without_timing(phaseprune.load_run(tmp_path / "p").record) == _without_timing(
        on_disk_p.trajectory
    )
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "items.parquet"), a.items)


def test_resume_needs_out(decider):
    with pytest.raises(phaseprune.UsageError, match="resume needs"):
        phaseprune.prune(str(decider.path), task=_task(decider), strategy="last", steps=1,
                         calib=10, eval=20, quiet=True, resume=True)  # fmt: skip
