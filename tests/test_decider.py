"""The trained decider fixture: it decides late, reloads exactly, and tokenizes as promised.

The session fixture ``decider`` in ``conftest.py`` loads ``build_decider(..., seed=0)``'s
committed output (tests/fixtures/decider); the last test trains the recipe again.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from decider import (
    LETTERS,
    build_decider,
    format_prompt,
    lens_accuracy,
    lens_letter_logits,
    letter_ids,
    letter_logits,
    load_eval_items,
    make_items,
    train_tokenizer,
)
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="session")
def reloaded(decider):
    """The saved decider read back with the Auto classes, and its eval items."""
    model = AutoModelForCausalLM.from_pretrained(decider.path)
    tokenizer = AutoTokenizer.from_pretrained(decider.path)
    return model.eval(), tokenizer, load_eval_items(decider.path)


@pytest.fixture(scope="session")
def lens(reloaded):
    return lens_accuracy(*reloaded)


def test_eval_items_are_mmlu_records_with_balanced_golds(decider, reloaded):
    items = reloaded[2]
    assert decider.n_eval == len(items) >= 120
    for item in items:
        assert set(item) == {"question", "choices", "answer", "subject"}
        assert len(item["choices"]) == 4 and item["subject"] == "synthetic"
    counts = Counter(item["answer"] for item in items)
    assert set(counts) == set(LETTERS)
    assert max(counts.values()) - min(counts.values()) <= 0.1 * len(items)


def test_prompt_is_the_lm_eval_mmlu_layout():
    item = {"question": "Q?", "choices": ["w", "x", "y", "z"], "answer": "C", "subject": "s"}
    assert format_prompt(item) == "Q?\nA. w\nB. x\nC. y\nD. z\nAnswer:"


def test_letters_are_distinct_single_tokens_that_never_merge(reloaded):
    _, tokenizer, items = reloaded
    ids = letter_ids(tokenizer)
    assert len(set(ids)) == 4 and tokenizer.pad_token is not None
    assert tokenizer.eos_token is not None
    for item in items:
        prompt = format_prompt(item)
        encoded = tokenizer.encode(prompt, add_special_tokens=False)
        assert tokenizer(prompt).input_ids == encoded  # no BOS or EOS added by default
        for letter, letter_id in zip(LETTERS, ids, strict=True):
            joined = tokenizer.encode(f"{prompt} {letter}", add_special_tokens=False)
            assert joined == [*encoded, letter_id]


def test_reload_reproduces_the_saved_logits(decider, reloaded):
    logits = letter_logits(*reloaded)
    torch.testing.assert_close(logits, decider.eval_letter_logits, rtol=1e-5, atol=1e-5)
    gold = torch.tensor([LETTERS.index(item["answer"]) for item in reloaded[2]])
    assert (logits.argmax(-1) == gold).float().mean().item() == decider.eval_accuracy


def test_decides_well_above_chance(decider):
    assert decider.n_layers == 6
    assert decider.eval_accuracy >= 0.9


def test_the_recipe_trains_the_committed_decider_up_to_float_rounding(decider, tmp_path):
    """build_decider(seed=0) again: the same items, tokenizer and config as the committed
    checkpoint, a model that decides as well; the weights equal it only on the machine kind
    that wrote it (another CPU's float32 kernels train another model, see conftest)."""
    fresh = build_decider(tmp_path / "d", seed=0)
    assert fresh.train_seconds > 0 and fresh.n_layers == decider.n_layers
    assert fresh.eval_accuracy >= 0.9
    for name in ("eval.jsonl", "tokenizer.json"):
        assert (tmp_path / "d" / name).read_text() == (decider.path / name).read_text(), name
    # The config as the model sees it: every field but the stamp of the transformers release
    # that wrote it (CI installs the newest 5.x, which may be later than the committed one's).
    fresh_config, committed = (
        {
            k: v
            for k, v in json.loads((d / "config.json").read_text()).items()
            if k != "transformers_version"
        }
        for d in (tmp_path / "d", decider.path)
    )
    assert fresh_config == committed


def test_last_lens_layer_is_the_model_output(reloaded):
    lens_logits = lens_letter_logits(*reloaded)  # (n_layers + 1, batch, 4)
    assert lens_logits.shape == (7, len(reloaded[2]), 4)
    torch.testing.assert_close(lens_logits[-1], letter_logits(*reloaded), rtol=1e-5, atol=1e-5)


def test_lens_is_silent_at_the_embeddings_and_decisive_at_the_end(decider, lens):
    accuracy, picks = lens
    assert len(accuracy) == len(picks) == decider.n_layers + 1
    assert all(sum(counts) == decider.n_eval for counts in picks)
    # Every prompt ends in the same ':' token, so layer 0 picks one letter for every item.
    assert max(picks[0]) == decider.n_eval
    assert accuracy[0] <= 0.4
    assert accuracy[-1] >= 0.8
    assert accuracy[-1] == pytest.approx(decider.eval_accuracy)


def test_items_and_tokenizer_are_deterministic_in_the_seed():
    train, eval_items = make_items(0)
    assert make_items(0) == (train, eval_items)
    assert make_items(1)[1] != eval_items
    assert not {format_prompt(item) for item in train} & {format_prompt(i) for i in eval_items}
    texts = [f"{format_prompt(item)} {item['answer']}" for item in train[:500]]
    assert train_tokenizer(texts).get_vocab() == train_tokenizer(texts).get_vocab()
