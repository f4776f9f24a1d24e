"""Portable exports: the model card, config fields transformers 4 reads, the reload check."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import transformers as tf
from conftest import spread_llama
from tiny_tokenizers import byte_bpe

import phaseprune.export as export
from phaseprune import __version__
from phaseprune.cli import main
from phaseprune.model import identity
from phaseprune.model.portable import legacy_rope_fields
from phaseprune.presentation.model_card import lm_eval_tasks

THETA = 777.0  # not transformers 4's default (10000), so a config that loses it shows


@pytest.fixture(autouse=True)
def hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(identity.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def rope_llama_dir(tmp_path_factory) -> Path:
    """A random 4-layer Llama with RoPE base 777."""
    path = tmp_path_factory.mktemp("rope-llama")
    tok = byte_bpe()
    model = spread_llama(tok, 4, 0.2, rope_parameters={"rope_type": "default", "rope_theta": THETA})
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pruned_run(rope_llama_dir, toy_mmlu_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    argv = ["prune", "--model", str(rope_llama_dir), "--task", "mmlu", "--data-dir",
            str(toy_mmlu_dir), "--calib", "4", "--eval", "8", "--strategy", "last", "--steps",
            "2", "--out", str(out), "--quiet", "--n-boot", "20", "--no-plots"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_export_card_config_and_tokenizer(pruned_run, rope_llama_dir, tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["export", str(pruned_run), "--step", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    traj = json.loads((pruned_run / "trajectory.json").read_text())
    removed = [k for s in traj["steps"] for k in s["removed_layers"]]
    card = (out / "README.md").read_text()
    rows = dict(re.findall(r"^\| ([^|]+?) \| (.+?) \|$", card, flags=re.M))
    assert rows["removed layers"].startswith(str(removed))
    assert rows["layers left"] == "2"
    assert rows["strategy"].startswith("`last`") and rows["step"] == "2 of 2"
    assert identity.weights_sha256(rope_llama_dir) in rows["base weights"]
    acc = [traj["step0"]["eval_accuracy"], traj["steps"][1]["eval_accuracy"]]
    assert rows["eval accuracy before (step 0)"].startswith(f"{acc[0]:.1%}")
    assert rows["eval accuracy after (step 2)"].startswith(f"{acc[1]:.1%}")
    assert rows["phaseprune"] == __version__
    assert rows["transformers"].startswith(">=4.57 (written with ")
    assert "on 4 evaluation prompts" in rows["reload check"]
    assert "base_model:" not in card  # a local checkpoint is no hub id
    assert (f"lm_eval --model hf --model_args pretrained={out},dtype=float32 --tasks "
            "mmlu_toy_subject --num_fewshot 0") in card  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == THETA
    assert config["rope_theta"] == THETA and "rope_scaling" not in config
    meta = config["phaseprune"]
    assert meta["requires_transformers"] == ">=4.57" and meta["removed_layers"] == removed
    assert meta["base_weights_sha256"] == identity.weights_sha256(rope_llama_dir)
    assert meta["version"] == __version__ and meta["transformers_4_fields"] == ["rope_theta"]
    tok = json.loads((out / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "PreTrainedTokenizerFast"
    # transformers 5 reads the edited files as before: the same RoPE, the same tokenizer
    reloaded = tf.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.config.rope_parameters == {"rope_type": "default", "rope_theta": THETA}
    text = "Question number 3, which letter?\nAnswer:"
    ours = tf.AutoTokenizer.from_pretrained(out)(text).input_ids
    assert ours == tf.AutoTokenizer.from_pretrained(rope_llama_dir)(text).input_ids


def test_reload_check_reads_several_evaluation_prompts(pruned_run, tmp_path, monkeypatch):
    seen: list[list[list[int]]] = []
    real = export._last_logits

    def spy(model, prompts):
        seen.append(prompts)
        return real(model, prompts)

    monkeypatch.setattr(export, "_last_logits", spy)
    record = export.run_export(str(pruned_run), 1, str(tmp_path / "e"))
    traj = json.loads((pruned_run / "trajectory.json").read_text())
    assert record["check_prompts"] == export.CHECK_PROMPTS == 4
    assert record["check_items"] == traj["eval_items"][:4]
    assert len(seen) == 2 and seen[0] == seen[1]  # the view, then the reloaded export
    tok = tf.AutoTokenizer.from_pretrained(tmp_path / "e")
    for item, ids in zip(record["check_items"], seen[0], strict=True):
        number = int(item.rsplit("/", 1)[1])  # toy rows are "Question number {i}, ..."
        assert f"Question number {number}, which letter?" in tok.decode(ids)
        assert tok.decode(ids).endswith("Answer:")


def test_reload_check_catches_a_config_that_changes_the_model(pruned_run, tmp_path, monkeypatch):
    """A portable edit that moved the logits would be caught on the evaluation prompts."""
    real = export.make_portable

    def wrong(out_dir, metadata):
        result = real(out_dir, metadata)
        config = json.loads((Path(out_dir) / "config.json").read_text())
        config["rope_parameters"]["rope_theta"] = 10000.0  # what transformers 4 would assume
        (Path(out_dir) / "config.json").write_text(json.dumps(config))
        return result

    monkeypatch.setattr(export, "make_portable", wrong)
    with pytest.raises(RuntimeError, match="differs from the pruned view"):
        export.run_export(str(pruned_run), 1, str(tmp_path / "e"))
    assert not (tmp_path / "e" / "README.md").exists()


def test_reload_check_without_the_task_data_says_so(pruned_run, toy_mmlu_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pruned_run, run)
    path = run / "trajectory.json"
    traj = json.loads(path.read_text())
    traj["settings"]["task"]["data_dir"] = str(tmp_path / "moved")
    path.write_text(json.dumps(traj))
    with pytest.warns(UserWarning, match="cannot rebuild the run's evaluation prompts"):
        record = export.run_export(str(run), 1, str(tmp_path / "e"))
    assert record["check_prompts"] == 1 and record["check_items"] == []
    card = (tmp_path / "e" / "README.md").read_text()
    assert "on the prompt 'Answer:' only (the run's evaluation prompts" in card


@pytest.mark.parametrize(
    ("config", "fields", "reasons"),
    [
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e5}}, {"rope_theta": 1e5}, []),
        (
            {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}},
            {"rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            [],
        ),
        (
            {
                "model_type": "gpt_neox",
                "rope_parameters": {
                    "rope_type": "default",
                    "rope_theta": 1e4,
                    "partial_rotary_factor": 0.5,
                },
            },
            {"rotary_emb_base": 1e4, "rotary_pct": 0.5},
            [],
        ),  # fmt: skip
        (
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                }
            },
            {
                "rope_theta": 1e6,
                "rope_scaling": {"rope_type": "linear", "factor": 8.0},
                "rope_local_base_freq": 1e4,
            },
            [],
        ),  # fmt: skip
        (
            {
                "rope_parameters": {
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
                }
            },
            {},
            ["scaled RoPE (yarn) on sliding-window layers"],
        ),  # fmt: skip
        (
            {
                "rope_parameters": {
                    "chunked_attention": {"rope_theta": 1.0},
                    "full_attention": {"rope_theta": 2.0},
                }
            },
            {},
            ["RoPE parameters per layer type ['chunked_attention', 'full_attention']"],
        ),  # fmt: skip
        ({"model_type": "gpt2"}, {}, []),
    ],
)
def test_legacy_rope_fields(config, fields, reasons):
    assert legacy_rope_fields(config) == (fields, reasons)


def test_lm_eval_task_names():
    assert lm_eval_tasks({"task": "mmlu", "subjects": ["a", "b"]}) == "mmlu_a,mmlu_b"
    assert lm_eval_tasks({"task": "mmlu", "subjects": []}) == "mmlu"
    assert lm_eval_tasks({"task": "mmlu", "subjects": []}, ["x"]) == "mmlu_x"  # what was scored
    assert lm_eval_tasks({"task": "mmlu", "subjects": []}, [f"s{i}" for i in range(57)]) == "mmlu"
    assert lm_eval_tasks({"task": "social_iqa"}) == "social_iqa"
    assert lm_eval_tasks({"task": "lm_eval:my_task"}) == "my_task"
    assert lm_eval_tasks({"task": "csv:items.csv"}) is None
