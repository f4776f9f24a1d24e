"""Session fixtures: tiny saved checkpoints and small data files, all built locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers as tf
from tiny_tokenizers import byte_bpe, char_level

REPO = Path(__file__).resolve().parents[1]


SHARED_MMLU = REPO.parent / "shared" / "data" / "mmlu"


def llama_config(tokenizer, n_layers: int, **extra) -> tf.LlamaConfig:
    """The tiny Llama of the saved-checkpoint fixtures (hidden 32, 4 heads, 2 KV heads)."""
    return tf.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=None, **extra,
    )  # fmt: skip


def spread_llama(tokenizer, n_layers: int, noise: float, **extra) -> tf.LlamaForCausalLM:
    """A seeded tiny Llama whose weights get Gaussian ``noise`` added, so every layer matters."""
    torch.manual_seed(0)
    model = tf.LlamaForCausalLM(llama_config(tokenizer, n_layers, **extra))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def _save_tiny_llama(path: Path, tokenizer) -> Path:
    torch.manual_seed(0)
    tf.LlamaForCausalLM(llama_config(tokenizer, 3)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 3-layer Llama with a byte-level BPE in which " A".." J" are single tokens."""
    return _save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), byte_bpe())


@pytest.fixture(scope="session")
def char_llama_dir(tmp_path_factory) -> Path:
    """A random Llama whose tokenizer splits " A" into two tokens."""
    return _save_tiny_llama(tmp_path_factory.mktemp("char-llama"), char_level())


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT with an LM head: loads as a causal LM but is no supported family."""
    path = tmp_path_factory.mktemp("bert")
    tok = byte_bpe()
    config = tf.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, is_decoder=True,
    )  # fmt: skip
    tf.BertLMHeadModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_mmlu_csv(root: Path, rows_by_subject: dict[str, list[list[str]]]) -> Path:
    """Write a Hendrycks-format MMLU directory (``test/{subject}_test.csv``, no header)."""
    import csv

    (root / "test").mkdir(parents=True, exist_ok=True)
    for subject, rows in rows_by_subject.items():
        with open(root / "test" / f"{subject}_test.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return root


@pytest.fixture(scope="session")
def toy_mmlu_dir(tmp_path_factory) -> Path:
    """A small MMLU-format directory with invented questions."""
    rows = [
        [f"Question number {i}, which letter?", "one", "two", "three", "four", "ABCD"[i % 4]]
        for i in range(12)
    ]
    return write_mmlu_csv(tmp_path_factory.mktemp("mmlu"), {"toy_subject": rows})


DECIDER_FIXTURE = REPO / "tests" / "fixtures" / "decider"
"""``build_decider(..., seed=0)``'s output, committed (1.9 MB). Training it again gives another
model on another CPU: torch's float32 kernels differ in the last bits between AVX2 and AVX-512
builds, and 300 optimizer steps amplify that (seen: weights 2e-16 apart after 20 steps in
float64, 7e-9 after 100, 0.06 after 300), so the golden records pin this checkpoint;
``test_decider.py`` checks that the recipe still trains a decider. Rewrite it with
``build_decider(Path("tests/fixtures/decider"), seed=0)`` (then the golden records:
``python tests/golden_runs.py``)."""


@pytest.fixture(scope="session")
def decider(tmp_path_factory):
    """The trained tiny decider (tests/fixtures/decider, see DECIDER_FIXTURE) and its items."""
    import shutil

    from decider import DeciderInfo, gold_indices, letter_logits, load_eval_items

    path = tmp_path_factory.mktemp("decider") / "decider"
    shutil.copytree(DECIDER_FIXTURE, path)  # tests never touch the committed copy
    model = tf.AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    items = load_eval_items(path)
    logits = letter_logits(model, tokenizer, items)
    accuracy = (logits.argmax(-1) == gold_indices(items)).float().mean().item()
    # train_seconds 0: loaded, not trained (test_decider.py trains the recipe)
    return DeciderInfo(path, model.config.num_hidden_layers, accuracy, len(items), 0.0, logits)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
