"""A tiny Llama, trained in seconds on CPU, that decides a synthetic multiple-choice task.

The task: "Which option names a fruit?". Each of the four options is a phrase of one to three
words drawn from seven non-fruit categories (animals, cities, tools, ...); in the gold option
one of its words is replaced by a fruit. Phrase lengths vary, so a word sits at no fixed
distance from its option's letter or from ``Answer:``. The answer position cannot know the
answer from the embeddings, and one attention hop gives it at most a rough guess from how far
the fruit is from the end: a fruit token must first pick up its option's letter (attend back
to the most recent ``A``/``B``/``C``/``D`` label), and only then can the answer position attend
to the fruit and copy that letter.

The model is a 6-layer ``LlamaForCausalLM`` whose token embeddings start at std 1 while every
other weight starts at std 0.1, so the residual stream starts large relative to what one layer
writes (as in many trained LMs). The answer position then stays dominated by the ``:``
embedding until the copied letter outgrows it: a logit lens piles the early layers' picks onto
one letter (the silent phase) and follows the gold letters from a later layer on (the
decisive phase). With small embeddings the same task is readable from layer 1 or 2.

``build_decider`` trains a byte-level BPE tokenizer and the model and saves both with
``save_pretrained``, with the held-out eval items as ``eval.jsonl`` in lm-evaluation-harness's
MMLU layout. ``lens_accuracy`` reads each layer's pick with a logit lens restricted to the four
option-letter tokens. Everything is deterministic in the seed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

LETTERS = ("A", "B", "C", "D")
SUBJECT = "synthetic"
PAD, EOS = "<pad>", "</s>"
TARGET = "fruit"
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "pear", "plum", "mango", "lemon", "grape", "peach", "melon"),
    "animal": ("horse", "tiger", "sheep", "mouse", "camel", "otter", "zebra", "goose"),
    "colour": ("red", "blue", "green", "black", "white", "pink", "brown", "grey"),
    "tool": ("hammer", "saw", "drill", "wrench", "chisel", "spade", "rake", "file"),
    "metal": ("iron", "gold", "silver", "copper", "tin", "zinc", "lead", "nickel"),
    "city": ("paris", "rome", "oslo", "lima", "cairo", "delhi", "tokyo", "quito"),
    "drink": ("tea", "coffee", "milk", "juice", "wine", "beer", "cocoa", "soda"),
    "tree": ("oak", "pine", "birch", "maple", "cedar", "elm", "ash", "willow"),
}
QUESTIONS = (
    "Which option names a fruit?",
    "Which of these mentions a fruit?",
    "Which choice includes a fruit?",
)
MAX_WORDS = 3
N_TRAIN, N_EVAL = 4000, 160
TRAIN_STEPS, BATCH_SIZE, LR = 300, 32, 3e-3
INIT_STD, EMBED_STD = 0.1, 1.0


@dataclass(frozen=True)
class DeciderInfo:
    """What ``build_decider`` saved and how well the saved model decides."""

    path: Path
    """Directory holding the checkpoint, the tokenizer and ``eval.jsonl``."""
    n_layers: int
    """Number of decoder layers of the saved model."""
    eval_accuracy: float
    """Accuracy on the eval items at save time (argmax over the four letter logits)."""
    n_eval: int
    """Number of items in ``eval.jsonl``."""
    train_seconds: float
    """Wall-clock seconds spent in the training loop (data and tokenizer excluded)."""
    eval_letter_logits: torch.Tensor
    """``(n_eval, 4)`` logits of ``" A"``..``" D"`` after ``Answer:`` at save time, to check a
    reloaded checkpoint against."""


class LensAccuracy(NamedTuple):
    """Per-layer logit-lens readout restricted to the option letters (layers ``0..n_layers``)."""

    accuracy: list[float]
    """``(n_layers + 1,)`` fraction of items whose lens pick is the gold letter."""
    picks: list[list[int]]
    """``(n_layers + 1, 4)`` number of items whose lens pick is A, B, C, D."""


def format_prompt(item: dict) -> str:
    """Return lm-evaluation-harness's zero-shot MMLU prompt for ``item``, ending in ``Answer:``."""
    pairs = zip(LETTERS, item["choices"], strict=True)
    options = "".join(f"\n{letter}. {choice}" for letter, choice in pairs)
    return f"{item['question']}{options}\nAnswer:"


def make_item(rng: random.Random, gold: int) -> dict:
    """Draw one item whose only fruit sits in the option at index ``gold``."""
    others = [word for name, words in CATEGORIES.items() if name != TARGET for word in words]
    phrases = [[rng.choice(others) for _ in range(rng.randint(1, MAX_WORDS))] for _ in LETTERS]
    phrases[gold][rng.randrange(len(phrases[gold]))] = rng.choice(CATEGORIES[TARGET])
    return {
        "question": rng.choice(QUESTIONS),
        "choices": [" ".join(phrase) for phrase in phrases],
        "answer": LETTERS[gold],
        "subject": SUBJECT,
    }


def make_items(seed: int) -> tuple[list[dict], list[dict]]:
    """Return ``(train, eval)`` items; eval golds cycle A-D and no eval prompt is in train."""
    rng = random.Random(seed)
    eval_items = [make_item(rng, index % len(LETTERS)) for index in range(N_EVAL)]
    held_out = {format_prompt(item) for item in eval_items}
    train: list[dict] = []
    while len(train) < N_TRAIN:
        item = make_item(rng, rng.randrange(len(LETTERS)))
        if format_prompt(item) not in held_out:
            train.append(item)
    return train, eval_items


def letter_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Return the token ids of ``" A"``..``" D"``, checking each is one token."""
    ids = []
    for letter in LETTERS:
        encoded = tokenizer.encode(" " + letter, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(f"' {letter}' is not a single token: {encoded}")
        ids.append(encoded[0])
    return ids


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; check the letters are distinct atomic tokens."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, eos_token=EOS)
    ids = letter_ids(tokenizer)
    if len(set(ids)) != len(LETTERS):
        raise ValueError(f"the option letters share tokens: {ids}")
    prompt = texts[0].rsplit(" ", 1)[0]
    for letter, letter_id in zip(LETTERS, ids, strict=True):
        joined = tokenizer.encode(f"{prompt} {letter}", add_special_tokens=False)
        if joined != tokenizer.encode(prompt, add_special_tokens=False) + [letter_id]:
            raise ValueError(f"' {letter}' merges with the end of the prompt: {joined}")
    return tokenizer


def encode_prompts(
    tokenizer: PreTrainedTokenizerFast, items: list[dict]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad the prompts; return ``input_ids``, ``attention_mask`` and ``last``.

    ``input_ids`` and ``attention_mask`` are ``(batch, seq)``; ``last`` is ``(batch,)``, the
    index of each prompt's final token (the ``:`` of ``Answer:``).
    """
    encoded = [tokenizer.encode(format_prompt(item), add_special_tokens=False) for item in items]
    width = max(map(len, encoded))
    input_ids = torch.full((len(items), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return input_ids, mask, mask.sum(1) - 1


def gold_indices(items: list[dict]) -> torch.Tensor:
    """Return the ``(batch,)`` gold option index of each item."""
    return torch.tensor([LETTERS.index(item["answer"]) for item in items])


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block, restoring the thread count after.

    The matrices are so small that a second thread costs more in synchronisation than it
    saves (much more on a busy machine), and one thread keeps the order of float
    reductions, hence the trained weights, independent of the machine's core count.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Return a freshly initialised 6-layer Llama (draws from torch's global generator)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=EMBED_STD)
    return model


def train_model(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, train: list[dict], seed: int
) -> None:
    """Train with next-token cross-entropy on the answer-letter token only."""
    input_ids, mask, last = encode_prompts(tokenizer, train)
    targets = torch.tensor(letter_ids(tokenizer))[gold_indices(train)]  # (n_train,)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=LR, total_steps=TRAIN_STEPS, pct_start=0.1
    )
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(BATCH_SIZE)
    model.train()
    for _ in range(TRAIN_STEPS):
        batch = torch.randint(len(train), (BATCH_SIZE,), generator=generator)
        hidden = model.model(input_ids=input_ids[batch], attention_mask=mask[batch])
        answer = hidden.last_hidden_state[rows, last[batch]]  # (batch, d_model)
        loss = torch.nn.functional.cross_entropy(model.lm_head(answer), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


@torch.no_grad()
def letter_logits(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, items: list[dict]
) -> torch.Tensor:
    """Return the model's ``(batch, 4)`` logits of ``" A"``..``" D"`` right after ``Answer:``."""
    input_ids, mask, last = encode_prompts(tokenizer, items)
    with one_thread():
        logits = model(input_ids=input_ids, attention_mask=mask).logits  # (batch, seq, vocab)
    return logits[torch.arange(len(items)), last][:, letter_ids(tokenizer)]


def build_decider(out_dir: Path, *, seed: int = 0) -> DeciderInfo:
    """Train the decider for ``seed``; save model, tokenizer and ``eval.jsonl`` in ``out_dir``."""
    train, eval_items = make_items(seed)
    tokenizer = train_tokenizer([f"{format_prompt(item)} {item['answer']}" for item in train])
    with one_thread(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model(tokenizer)
        start = time.perf_counter()
        train_model(model, tokenizer, train, seed)
        train_seconds = time.perf_counter() - start
        logits = letter_logits(model, tokenizer, eval_items)
    accuracy = (logits.argmax(-1) == gold_indices(eval_items)).float().mean().item()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    with open(out_dir / "eval.jsonl", "w") as f:
        f.writelines(json.dumps(item) + "\n" for item in eval_items)
    return DeciderInfo(
        out_dir, model.config.num_hidden_layers, accuracy, len(eval_items), train_seconds, logits
    )


def load_eval_items(path: Path) -> list[dict]:
    """Read ``eval.jsonl`` from a directory written by ``build_decider``."""
    with open(Path(path) / "eval.jsonl") as f:
        return [json.loads(line) for line in f]


@torch.no_grad()
def lens_letter_logits(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, items: list[dict]
) -> torch.Tensor:
    """Logit lens on the four letters at the last prompt position, for layers ``0..n_layers``.

    Layer 0 reads the input of the first decoder layer (the embeddings), layer ``l`` the output
    of decoder layer ``l - 1``; each goes through the final norm and the ``lm_head`` rows of
    ``" A"``..``" D"``. Returns ``(n_layers + 1, batch, 4)`` logits; the last layer's equal the
    model's own.
    """
    input_ids, mask, last = encode_prompts(tokenizer, items)
    layers = model.model.layers
    resid: list[torch.Tensor] = [torch.empty(0)] * (len(layers) + 1)  # each (batch, seq, d_model)

    def save_input(_module, args, kwargs):
        resid[0] = args[0] if args else kwargs["hidden_states"]

    def save_output(index):
        def hook(_module, _args, output):
            resid[index] = output[0] if isinstance(output, tuple) else output

        return hook

    handles = [layers[0].register_forward_pre_hook(save_input, with_kwargs=True)]
    try:
        for index, layer in enumerate(layers, start=1):
            handles.append(layer.register_forward_hook(save_output(index)))
        with one_thread():
            model(input_ids=input_ids, attention_mask=mask)
    finally:
        for handle in handles:
            handle.remove()
    W_U = model.lm_head.weight[letter_ids(tokenizer)]  # (4, d_model)
    resid_last = torch.stack([hidden[torch.arange(len(items)), last] for hidden in resid])
    return model.model.norm(resid_last) @ W_U.T


def lens_accuracy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, items: list[dict]
) -> LensAccuracy:
    """Per-layer accuracy and pick counts of the letter-restricted logit lens (see above)."""
    picks = lens_letter_logits(model, tokenizer, items).argmax(-1)  # (n_layers + 1, batch)
    accuracy = (picks == gold_indices(items)).float().mean(-1)
    counts = [torch.bincount(row, minlength=len(LETTERS)).tolist() for row in picks]
    return LensAccuracy(accuracy.tolist(), counts)
