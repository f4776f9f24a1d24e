"""API guard rails: settings type-checked when a config is built (whoever builds it), run
kinds checked, and pruned views that always give the model back whole."""

from __future__ import annotations

import re

import pytest
import torch
from decider_runs import quick_prune
from tiny_models import build_tiny

import phaseprune
from phaseprune.core.errors import UsageError
from phaseprune.model.arch import decoder_parts
from phaseprune.model.surgery import without_layers
from phaseprune.runs.config import AnalyzeConfig, PruneConfig, TaskConfig
from phaseprune.runs.files import load_run


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"limit": "4"}, "--limit '4': must be a whole number, not str"),
        ({"limit": 2.5}, "--limit 2.5: must be a whole number, not float"),
        ({"n_boot": 20.7}, "--n-boot 20.7: must be a whole number, not float"),
        ({"seed": "abc"}, "--seed 'abc': must be a whole number, not str"),
        ({"shots": True}, "--shots True: must be a whole number, not bool"),
        ({"plots": 1}, "--plots 1: must be true or false, not int"),
        ({"subjects": ("a", 3)}, "--subjects ('a', 3): must be a string, not int"),
    ],
)
def test_analyze_settings_of_the_wrong_type(decider, settings, message):
    """Refused by name before the model loads (the model given does not even exist)."""
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        phaseprune.analyze("no/such-model", task="mmlu", **settings)


def test_types_hold_for_configs_built_directly():
    with pytest.raises(UsageError, match="--steps True: must be a whole number"):
        PruneConfig(out="x", steps=True)
    with pytest.raises(UsageError, match="--min-accuracy 'high': must be a number"):
        PruneConfig(out="x", min_accuracy="high")
    assert PruneConfig(out="x", min_accuracy=1).min_accuracy == 1  # an int is a number
    assert PruneConfig(out="x", protect=[3, 1]).protect == (3, 1)  # a list, as the CLI's tuple
    assert TaskConfig(limit=None).limit is None
    assert AnalyzeConfig(out="", n_boot=5).n_boot == 5


def test_load_run_kind_is_checked(tmp_path):
    with pytest.raises(UsageError, match="kind='bogus': pass 'analyze', 'prune' or None"):
        load_run(tmp_path, kind="bogus")


def test_views_exited_out_of_order_leave_the_model_whole():
    model = build_tiny("llama", n_layers=6)
    layers = list(decoder_parts(model).layers)
    outer = without_layers(model, [0])
    inner = without_layers(model, [1])
    outer.__enter__()
    inner.__enter__()
    assert len(decoder_parts(model).layers) == 4
    with pytest.warns(UserWarning, match="exited before 1 view"):
        outer.__exit__(None, None, None)
    assert list(decoder_parts(model).layers) == layers
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))
    inner.__exit__(None, None, None)  # closed already: changes nothing
    assert list(decoder_parts(model).layers) == layers
    assert model.config.num_hidden_layers == 6
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), without_layers(model, [2]), without_layers(model, [0]):
        assert len(decoder_parts(model).layers) == 4  # nested in order: as before
        model(ids)
    assert list(decoder_parts(model).layers) == layers


def _held(decider):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(decider.path, dtype=torch.float32)
    return model, tf.AutoTokenizer.from_pretrained(decider.path)


def test_items_in_memory_are_a_task(decider):
    """A list of dicts or a DataFrame reads as the same items in a jsonl: file."""
    import json

    import pandas as pd

    lines = (decider.path / "eval.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    model, tok = _held(decider)
    settings = dict(limit=30, n_boot=20, quiet=True)
    want = phaseprune.analyze(model, tok, f"jsonl:{decider.path / 'eval.jsonl'}", **settings)
    for task in (records, pd.DataFrame(records)):
        got = phaseprune.analyze(model, tok, task, **settings)
        assert got.summary["accuracy"] == want.summary["accuracy"]
        assert list(got.items["gold"]) == list(want.items["gold"])
    with pytest.raises(UsageError, match="records, record 2: no 'answer' field"):
        phaseprune.analyze(model, tok, [records[0], {"question": "q", "choices": ["a", "b"]}])
    with pytest.raises(UsageError, match="task=int: pass a task name, a list of dicts"):
        phaseprune.analyze(model, tok, 7)


def test_another_models_tokenizer_is_refused(decider):
    from tiny_tokenizers import char_level

    model, _ = _held(decider)
    other = char_level()  # about 50 tokens against the decider's 497 rows
    with pytest.raises(UsageError, match="it is another model's tokenizer"):
        phaseprune.analyze(model, other, f"jsonl:{decider.path / 'eval.jsonl'}", limit=4)


def test_analyze_limit_beyond_the_items_is_refused(decider):
    with pytest.raises(UsageError, match="has 160 items; --limit 500 asks for more"):
        phaseprune.analyze(str(decider.path), task=f"jsonl:{decider.path / 'eval.jsonl'}",
                           limit=500)  # fmt: skip


def test_export_into_a_run_directory_is_refused(decider, tmp_path, capsys):
    from phaseprune.cli import main

    run = tmp_path / "run"
    quick_prune(decider, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for out in (run, run / "export", tmp_path / "run"):
        capsys.readouterr()
        assert main(["export", str(run), "--step", "1", "--out", str(out), "--overwrite"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pass another --out" in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / "export").exists()


def test_a_model_in_memory_is_known_by_its_tensors(decider, tmp_path):
    """An edited copy is another model to the score store, resume and export (it shared the
    first one's cache key and got its trajectory back)."""
    from phaseprune.model.identity import tensors_sha256

    task = f"jsonl:{decider.path / 'eval.jsonl'}"
    settings = dict(strategy="iterative", steps=2, calib=16, eval=24, n_boot=20, quiet=True,
                    score_cache=str(tmp_path / "store"))  # fmt: skip
    model, tok = _held(decider)
    first = phaseprune.prune(model, tok, task, out=tmp_path / "a", **settings)
    edited, _ = _held(decider)
    with torch.no_grad():
        decoder_parts(edited).layers[3].mlp.down_proj.weight.mul_(-3.0)
    assert tensors_sha256(edited) != tensors_sha256(model)
    second = phaseprune.prune(edited, tok, task, out=tmp_path / "b", **settings)
    alone = phaseprune.prune(edited, tok, task, **{**settings, "score_cache": None})
    assert alone.accuracies != first.accuracies  # the edit matters, so a shared key would show
    assert second.removed_layers() == alone.removed_layers()
    assert second.accuracies == alone.accuracies
    assert first.trajectory["model"]["weights_sha256"].startswith("memory:")
    with pytest.raises(UsageError, match="made with other model weights"):  # another object
        phaseprune.prune(edited, tok, task, out=tmp_path / "a", resume=True,
                         **{**settings, "steps": 3})  # fmt: skip
    # export: from the held model only, and only the one the run pruned
    with pytest.raises(
        UsageError, match=r"export it from Python, phaseprune.export_checkpoint\(run"
    ):
        phaseprune.export_checkpoint(tmp_path / "a", 2, tmp_path / "x")
    with pytest.raises(UsageError, match="not the one this run pruned"):
        phaseprune.export_checkpoint(tmp_path / "a", 2, tmp_path / "x", model=edited, tokenizer=tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    record = phaseprune.export_checkpoint(
        tmp_path / "a", 2, tmp_path / "x", model=model, tokenizer=tok
    )
    assert record["max_abs_logit_diff"] == 0.0
    assert record["removed_layers"] == first.removed_layers()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    card = (tmp_path / "x" / "README.md").read_text()
    assert "of its config and tensors (a model held in memory)" in card


def test_values_no_run_can_hold_are_refused_by_the_loader(decider, tmp_path, capsys):
    import json

    from phaseprune.cli import main

    run = tmp_path / "run"
    quick_prune(decider, run)
    good = (run / "trajectory.json").read_text()
    for edit, said in (
        ((("steps", 0, "eval_accuracy"), 5.0), "steps[0].eval_accuracy = 5.0"),
        ((("steps", 0, "removed_layers"), [999]), "removed_layers [999] (the model has 6 layers)"),
    ):
        traj = json.loads(good)
        (a, i, key), value = edit
        traj[a][i][key] = value
        (run / "trajectory.json").write_text(json.dumps(traj))
        with pytest.raises(UsageError, match=re.escape(said)):
            load_run(run)
        capsys.readouterr()
        assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_pickled_weights_are_refused_in_one_line(decider, tmp_path):
    import shutil

    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(decider.path, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")
    with pytest.raises(UsageError, match=r"only as pickles \(pytorch_model.bin\)"):
        phaseprune.analyze(str(folder), task=f"jsonl:{decider.path / 'eval.jsonl'}", limit=4)


def test_two_checkpoints_sharing_a_score_cache_stay_apart(decider, tmp_path):
    """On the command line, a checkpoint's identity is its files' sha256: an edited copy shares
    a --score-cache with the original and still gets its own numbers."""
    import json
    import shutil

    import transformers as tf

    from phaseprune.cli import main

    copy = tmp_path / "edited"
    shutil.copytree(decider.path, copy)
    model = tf.AutoModelForCausalLM.from_pretrained(copy)
    with torch.no_grad():
        decoder_parts(model).layers[3].mlp.down_proj.weight.mul_(-3.0)
    model.save_pretrained(copy)

    def prune(path, out, *extra):
        argv = ["prune", "--model", str(path), "--task", f"jsonl:{decider.path / 'eval.jsonl'}",
                "--quiet", "--no-plots", "--n-boot", "20", "--calib", "16", "--eval", "24",
                "--strategy", "iterative", "--steps", "2", "--out", str(out), *extra]  # fmt: skip
        assert main(argv) == 0
        traj = json.loads((out / "trajectory.json").read_text())
        return [s["eval_accuracy"] for s in traj["steps"]], [
            s["removed_layer"] for s in traj["steps"]
        ]

    shared = ["--score-cache", str(tmp_path / "store")]
    first = prune(decider.path, tmp_path / "a", *shared)
    second = prune(copy, tmp_path / "b", *shared)
    alone = prune(copy, tmp_path / "c")
    assert second == alone and alone != first
