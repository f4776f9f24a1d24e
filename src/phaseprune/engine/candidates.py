"""Score every "current model minus one layer" candidate, recomputing only the suffix.

Removing decoder layer ``k`` leaves the residual stream before ``k`` unchanged. So for each
chunk of calibration items the current (already pruned) model runs once, keeping the input of
every layer at every position; candidate ``k`` then resumes from layer ``k``'s input
(:mod:`phaseprune.engine.layer_cache`): only the layers after ``k`` compute, and the result equals a
full forward of the pruned model (tested against it).

Cost model, per step with ``L`` remaining layers and ``T`` calibration tokens: one full pass
(``L`` layer-passes over ``T`` tokens) plus, for candidate at position ``p``, ``L - 1 - p`` layer
passes: ``L + L(L-1)/2`` layer-passes instead of the naive ``L(L-1)``, about half.

Shared few-shot prefixes (``groups``, one per subject): the group's common token prefix runs
once through the current model with a KV cache; for candidate ``k`` its cache keeps the current
entries of the layers before ``k`` and recomputes the layers after ``k`` once, and every item
then runs only its own tokens on it. The prefix then costs ``L - 1 - p`` layer passes per
candidate instead of per item.

Memory: the layer inputs of the items being scored are held while every candidate runs on
them, ``(L + 1) x padded own tokens x d_model`` values: small for a small model on a few
dozen items, tens of GB for a 7B model on hundreds of few-shot items. ``cache_budget`` bounds
it: a group's batches are packed into chunks whose cached inputs fit, and each chunk is
scored by every candidate before the next runs. Chunking costs nothing on the items' own
tokens; only the shared prefix is recomputed, ``L - 1 - p`` layer passes per candidate per
extra chunk. Peak memory is then about the budget plus one batch's activations
(``max_tokens``) plus the prefix caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch

from phaseprune.core.progress import bar as progress_bar
from phaseprune.engine.layer_cache import (
    SharedPrefix,
    group_batches,
    model_layers,
    resume,
    resume_prefix,
    run_batch,
    run_prefix,
    tokens_budget,
)
from phaseprune.model.arch import DecoderParts
from phaseprune.model.distributed import item_shard, local_only
from phaseprune.model.surgery import kept_layers, without_layers

# reduce(parts, final hidden (batch, seq, d_model), positions (batch,), tokens, mask) -> (batch, ..)
Reduce = Callable[
    [DecoderParts, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]
# heal(k) -> (first changed original layer, context in which the model is candidate k's healed
# model): scoring a candidate healed (--heal-when search) resumes from that layer, not from k.
Heal = Callable[[int], tuple[int, AbstractContextManager]]


def option_reduce(option_ids: Sequence[int]) -> Reduce:
    """A reduce giving the option logits at the last real position: ``(batch, n_options)``."""
    ids = torch.tensor(list(option_ids))

    def reduce(parts, hidden, positions, tokens, mask):
        last = hidden[torch.arange(hidden.shape[0]), positions.to(hidden.device)]
        return parts.option_logits(last, ids).float().cpu()

    return reduce


def budget_chunks(batches, lengths, tokens_budget: int | None) -> list[list[list[int]]]:
    """Pack consecutive batches into chunks of at most ``tokens_budget`` padded tokens.

    A chunk always holds at least one batch, so a budget below one batch still makes progress
    (one batch at a time).
    """
    if tokens_budget is None:
        return [batches]
    chunks: list[list[list[int]]] = [[]]
    used = 0
    for sub in batches:
        size = len(sub) * max(lengths[j] for j in sub)
        if chunks[-1] and used + size > tokens_budget:
            chunks.append([])
            used = 0
        chunks[-1].append(sub)
        used += size
    return chunks


def _score_group(
    model, removed, candidates, position, rows, group, share, reduce, limits, tick, out, heal
):
    """Score every candidate on one group of items (sharing its token prefix if ``share``).

    ``limits`` is ``(max_tokens, tokens_budget)``: padded tokens per forward batch, and padded
    tokens whose layer inputs may be held at once (None: the whole group). ``tick(k, n)`` is
    told after each candidate's pass over ``n`` items.
    """
    max_tokens, budget = limits
    with without_layers(model, removed) as parts:
        prefix = run_prefix(parts, rows, group, share)
    lengths = [len(rows[i]) - prefix.n for i in group]
    batches = group_batches(rows, group, prefix.n, max_tokens)
    for chunk in budget_chunks(batches, lengths, budget):
        with without_layers(model, removed) as parts:
            run = [run_batch(parts, prefix, rows, group, sub) for sub in chunk]
        for k in candidates:
            first, healed = heal(k) if heal is not None else (k, nullcontext())
            with healed:
                _score_candidate(model, removed, k, position[first], prefix, run, reduce, out)
            tick(k, sum(len(b.items) for b in run))
        del run


def _score_candidate(model, removed, k, p, prefix: SharedPrefix, run, reduce, out) -> None:
    """Score candidate ``k`` on the batches ``run``, resuming at position ``p``.

    ``p`` is ``k``'s position in the current model, or an earlier healed layer's: the layers
    before ``p`` are unchanged.
    """
    with without_layers(model, [*removed, k]) as parts:
        last = p == len(parts.layers)  # k was the last layer: the output is k's input
        cand = resume_prefix(parts, p, prefix) if prefix.n and not last else prefix
        for b in run:
            if last:
                final = b.inputs[p]
            else:
                forward = cand.forward_args(b.mask)
                _, final, _ = resume(parts, p, b.inputs[p], b.tokens, keep_inputs=False, **forward)
            values = reduce(parts, final, b.positions, b.tokens, b.mask)
            for row, i in enumerate(b.items):
                out[k][i] = values[row]


@torch.inference_mode()
def score_removals(
    model,
    removed: Sequence[int],
    candidates: Sequence[int],
    input_ids: Sequence[Sequence[int]],
    reduce: Reduce,
    *,
    max_tokens: int = 8192,
    progress: bool = False,
    groups: Sequence[Sequence[int]] | None = None,
    cache_budget: int | None = None,
    on_scored: Callable[[int, torch.Tensor], None] | None = None,
    heal: Heal | None = None,
) -> dict[int, torch.Tensor]:
    """Reduce the final hidden states of "model without ``removed`` and ``k``" for each ``k``.

    Args:
        model: the full (unpruned) causal LM.
        removed: original indices already removed.
        candidates: original indices to try removing next (not in ``removed``).
        input_ids: one token list per calibration item.
        reduce: turns final hidden states into per-item values (e.g. :func:`option_reduce`).
            With ``groups`` it sees only the items' own tokens, so it must read the last
            position only.
        max_tokens: padded tokens per chunk.
        progress: show a progress bar over candidate evaluations.
        groups: item indices sharing a few-shot prefix (one group per subject); each group's
            common token prefix is computed once per candidate instead of once per item.
        cache_budget: bytes the cached layer inputs may take at once; a group that needs
            more is scored in chunks (each chunk recomputes the group's prefix cache per
            candidate). None: no limit.
        on_scored: called with ``(k, values)`` as soon as candidate ``k`` has every item's
            values (the same tensor as in the result), so a caller can keep each one before the
            scan ends: an interrupted scan then loses at most the candidates under way. With
            one chunk of items (zero-shot items within ``cache_budget``) candidates finish one
            by one; with several groups or chunks they finish in the last. Not called when
            launched as several processes (each holds a shard until the gather).
        heal: scores each candidate healed (:data:`Heal`); None scores it as removed.

    Returns:
        ``{k: (n_items, ...)}`` in item order (every item's, on every process, when launched
        as several: each scores its shard, :mod:`phaseprune.model.distributed`).
    """
    if (shard := item_shard(input_ids, groups)) is not None:
        local = None
        if shard.items:
            with local_only():
                local = score_removals(
                    model,
                    removed,
                    candidates,
                    shard.take(input_ids),
                    reduce,
                    max_tokens=max_tokens,
                    progress=progress,
                    groups=shard.groups,
                    cache_budget=cache_budget,
                    heal=heal,
                )
        return shard.gather(local)
    n_layers = len(model_layers(model))
    kept = kept_layers(n_layers, removed)
    position = {layer: p for p, layer in enumerate(kept)}
    missing = [k for k in candidates if k not in position]
    if missing:
        raise ValueError(f"candidates {missing} are not among the remaining layers")
    out: dict[int, list] = {k: [None] * len(input_ids) for k in candidates}
    bar = progress_bar(len(input_ids) * len(candidates), "candidates", enabled=progress)
    limits = (max_tokens, tokens_budget(model, len(kept), cache_budget))
    left = dict.fromkeys(candidates, len(input_ids))

    def tick(k: int, n: int) -> None:
        bar.update(n)
        left[k] -= n
        if left[k] == 0 and on_scored is not None:
            on_scored(k, torch.stack(out[k]))

    for group in groups or [list(range(len(input_ids)))]:
        _score_group(
            model,
            removed,
            candidates,
            position,
            input_ids,
            list(group),
            groups is not None,
            reduce,
            limits,
            tick,
            out,
            heal,
        )
    bar.close()
    return {k: torch.stack(rows) for k, rows in out.items()}


def final_readout(
    model,
    removed: Sequence[int],
    input_ids: Sequence[Sequence[int]],
    reduce: Reduce,
    *,
    max_tokens: int = 8192,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Reduce the final hidden states of the model without ``removed`` (one plain pass).

    With ``groups``, shared prefixes run once per group, exactly as in :func:`score_removals`
    (and, launched as several processes, sharded as there).
    """
    if (shard := item_shard(input_ids, groups)) is not None:
        local = None
        if shard.items:
            with local_only():
                local = final_readout(
                    model,
                    removed,
                    shard.take(input_ids),
                    reduce,
                    max_tokens=max_tokens,
                    groups=shard.groups,
                )
        return shard.gather(local)
    rows: list = [None] * len(input_ids)
    with torch.inference_mode(), without_layers(model, removed) as parts:
        for group in map(list, groups or [range(len(input_ids))]):
            prefix = run_prefix(parts, input_ids, group, groups is not None)
            for sub in group_batches(input_ids, group, prefix.n, max_tokens):
                b = run_batch(parts, prefix, input_ids, group, sub)
                values = reduce(parts, b.final, b.positions, b.tokens, b.mask)
                for row, i in enumerate(b.items):
                    rows[i] = values[row]
    return torch.stack(rows)
