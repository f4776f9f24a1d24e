"""Token-level view of a task: prompt token ids and the option tokens that are scored.

The scored tokens are the option letters as continuations of the prompt, as in
lm-evaluation-harness: ``whole = encode(prompt + " A")``, ``ctx = encode(prompt)`` and the
continuation is ``whole[len(ctx):]``. phaseprune requires, for every item and option, that
``ctx`` is a prefix of ``whole``, that the continuation is exactly one token, and that the
letters' tokens are distinct and the same for every item; otherwise it stops with a clear
error rather than silently scoring something else.

Special tokens follow lm-evaluation-harness's ``HFLM``: none are added for causal models,
except a BOS token for the Gemma families (lm-eval forces ``add_bos_token`` for them, as
Gemma degrades badly without it). ``--bos``/``--no-bos`` override this.

With ``chat=True`` the prompt becomes the single user turn of the tokenizer's chat template
with the generation prompt appended; the template supplies its own special tokens, and the
letters are scored without the leading space (an assistant turn starts at a line start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from phaseprune.core.errors import UsageError
from phaseprune.core.items import LETTERS
from phaseprune.model.arch import default_add_bos


@dataclass(frozen=True)
class OptionTokens:
    """The tokens whose logits are read out."""

    letters: tuple[str, ...]
    """Option letters, ``("A", "B", ...)``."""
    texts: tuple[str, ...]
    """Continuation strings scored after the prompt, e.g. ``(" A", " B", ...)``."""
    ids: tuple[int, ...]
    """Their token ids, one per letter."""


@dataclass(frozen=True)
class EncodedPrompts:
    """Prompts as token ids, ready for the forward passes."""

    input_ids: list[list[int]]
    """One token-id list per item (special tokens included)."""
    options: OptionTokens
    """The scored option tokens."""
    add_bos: bool
    """Whether a BOS token was prepended."""
    chat: bool
    """Whether the chat template was applied."""


def apply_chat(tokenizer, prompts: Sequence[str]) -> list[str]:
    """Render each prompt as one user turn with the generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError("--chat was given but the tokenizer has no chat template; drop --chat")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


def option_tokens(
    tokenizer, prompts: Sequence[str], n_options: int, *, delimiter: str = " "
) -> OptionTokens:
    """Find and verify the single token of each option letter after every prompt.

    Raises:
        UsageError: a letter is several tokens, merges with the prompt's end, differs between
            items, or two letters share a token.
    """
    letters = tuple(LETTERS[:n_options])
    texts = tuple(delimiter + letter for letter in letters)
    contexts = _encode(tokenizer, prompts)
    ids: list[int] = []
    for letter, text in zip(letters, texts, strict=True):
        wholes = _encode(tokenizer, [p + text for p in prompts])
        seen: set[int] = set()
        for i, (ctx, whole) in enumerate(zip(contexts, wholes, strict=True)):
            cont = whole[len(ctx) :]
            if whole[: len(ctx)] != ctx or len(cont) != 1:
                pieces = [tokenizer.decode([t]) for t in cont] if whole[: len(ctx)] == ctx else []
                raise UsageError(
                    f"option {letter!r} is not a single token after item {i}'s prompt "
                    f"({text!r} -> {pieces or 'merges with the prompt end'}); this tokenizer "
                    "cannot be scored by letter; use a model whose letters are single tokens"
                )
            seen.add(cont[0])
        if len(seen) != 1:
            raise UsageError(
                f"option {letter!r} encodes to different tokens across items: {sorted(seen)}"
            )
        ids.append(seen.pop())
    if len(set(ids)) != len(ids):
        raise UsageError(f"option letters share tokens: {dict(zip(letters, ids, strict=True))}")
    return OptionTokens(letters, texts, tuple(ids))


def encode_prompts(
    tokenizer,
    prompts: Sequence[str],
    n_options: int,
    *,
    family: str,
    chat: bool = False,
    add_bos: bool | None = None,
) -> EncodedPrompts:
    """Token ids of every prompt and the verified option tokens."""
    if chat:
        prompts = apply_chat(tokenizer, prompts)
        add_bos = False
    elif add_bos is None:
        add_bos = default_add_bos(family)
    options = option_tokens(tokenizer, prompts, n_options, delimiter="" if chat else " ")
    ids = _encode(tokenizer, prompts)
    if add_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise UsageError("--bos was requested but the tokenizer has no BOS token; use --no-bos")
        ids = [[bos, *row] for row in ids]
    return EncodedPrompts(ids, options, add_bos, chat)


def check_context(task, input_ids: list[list[int]], window: int | None) -> None:
    """Refuse prompts (plus the answer letter) longer than the model's context window."""
    if window is None:
        return
    long = [(it.item_id, len(ids)) for it, ids in zip(task.items, input_ids, strict=True)
            if len(ids) + 1 > window]  # fmt: skip
    if long:
        shown = ", ".join(f"{item} ({n} tokens)" for item, n in long[:5])
        more = f" and {len(long) - 5} more" if len(long) > 5 else ""
        raise UsageError(
            f"{len(long)} prompts do not fit the model's context of {window} tokens: {shown}"
            f"{more}; use fewer --shots or drop those items"
        )
