"""Small tokenizers built in memory with the `tokenizers` library (no downloads)."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

CORPUS = [
    "The following are multiple choice questions (with answers) about geography.",
    "Which river is longest?\nA. Nile\nB. Rhine\nC. Seine\nD. Thames\nAnswer: A",
    "What is two plus two?\nA. three\nB. four\nC. five\nD. six\nAnswer: B",
] * 20


def byte_bpe(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE in which " A", " B", ... are single tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    letters = [f" {c}" for c in "ABCDEFGHIJ"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS + [" ".join(letters)] * 50, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )
    return fast


def char_level() -> PreTrainedTokenizerFast:
    """Every character is its own token, so " A" is two tokens."""
    chars = sorted({c for text in CORPUS for c in text} | set("ABCDEFGHIJ "))
    vocab = {"<pad>": 0, "<bos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>")
