"""Score every "current model minus one layer" candidate, recomputing only the suffix.

Removing decoder layer ``k`` leaves the residual stream before ``k`` unchanged. So for each
chunk of calibration items the current (already pruned) model runs once, keeping the input of
every layer at every position; candidate ``k`` then resumes from layer ``k``'s input: in the
view without ``k``, the layers before it are replaced by :class:`~phaseprune.arch.CachedLayer`
stand-ins and only the layers after ``k`` compute. Masks, rotary tables and per-layer attention
kinds come from the model's own forward, so the result equals a full forward of the pruned
model (tested against it).

Cost model, per step with ``L`` remaining layers and ``T`` calibration tokens: one full pass
(``L`` layer-passes over ``T`` tokens) plus, for candidate at position ``p``, ``L - 1 - p`` layer
passes: ``L + L(L-1)/2`` layer-passes instead of the naive ``L(L-1)``, about half.

Shared few-shot prefixes (``groups``, one per subject): the group's common token prefix runs
once through the current model with a KV cache; for candidate ``k`` its cache keeps the current
entries of the layers before ``k`` and recomputes the layers after ``k`` once, and every item
then runs only its own tokens on it. The prefix then costs ``L - 1 - p`` layer passes per
candidate instead of per item.

Memory: the layer inputs of a whole group are held while its candidates are scored,
``(L + 1) x own tokens x d_model`` values (SmolLM2, 64 five-shot items: about 0.3 GB), plus
the prefix caches; a budget that splits large groups is still to come.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from phaseprune.arch import CachedLayer, DecoderParts, layer_output
from phaseprune.readout import after_prefix, common_prefix, length_batches, pad_batch
from phaseprune.surgery import kept_layers, without_layers

# reduce(parts, final hidden (batch, seq, d_model), positions (batch,), tokens, mask) -> (batch, ..)
Reduce = Callable[
    [DecoderParts, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor
]


def option_reduce(option_ids: Sequence[int]) -> Reduce:
    """A reduce giving the option logits at the last real position: ``(batch, n_options)``."""
    ids = torch.tensor(list(option_ids))

    def reduce(parts, hidden, positions, tokens, mask):
        last = hidden[torch.arange(hidden.shape[0]), positions.to(hidden.device)]
        return parts.option_logits(last, ids).float().cpu()

    return reduce


def _capture_inputs(parts: DecoderParts, tokens, **forward) -> tuple[list, torch.Tensor, object]:
    """Run the model once; return each layer's input, the last layer's output and the cache.

    ``forward`` holds the base call's other arguments (attention mask, cache, positions).
    """
    inputs: list[torch.Tensor] = []
    final: list[torch.Tensor] = []

    def pre(module, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in parts.layers]
    handles.append(
        parts.layers[-1].register_forward_hook(lambda m, a, o: final.append(layer_output(o)))
    )
    try:
        out = parts.base(input_ids=tokens, **forward)
    finally:
        for h in handles:
            h.remove()
    return inputs, final[0], getattr(out, "cache", None)


def _resume(parts: DecoderParts, start: int, resid: torch.Tensor, tokens, **forward):
    """Forward through ``parts`` with layers ``< start`` replaced by cached stand-ins.

    ``resid`` is the input of layer ``start``. Returns the last layer's output and the cache
    (the stand-ins write nothing into it).
    """
    final: list[torch.Tensor] = []
    originals = [parts.layers[i] for i in range(start)]
    for i in range(start):
        parts.layers[i] = CachedLayer(originals[i], resid, parts.family)
    handle = parts.layers[-1].register_forward_hook(lambda m, a, o: final.append(layer_output(o)))
    try:
        out = parts.base(input_ids=tokens, **forward)
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            parts.layers[i] = layer
    return final[0], getattr(out, "cache", None)


@dataclass
class _Batch:
    """One batch of one group, with what the current model left at every layer's input."""

    items: list[int]
    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    inputs: list[torch.Tensor]
    final: torch.Tensor


def _prefix_cache(parts, start, prefix_inputs, prefix, cache_cur):
    """The candidate's KV cache of the shared prefix.

    Layers before ``start`` are unchanged by the removal, so their entries are the current
    model's; the layers after it are recomputed on the prefix from the cached input.
    """
    _, cache = _resume(parts, start, prefix_inputs[start], prefix, use_cache=True)
    for j in range(start):
        cache.layers[j] = copy.deepcopy(cache_cur.layers[j])
    return cache


@dataclass
class _Group:
    """A group of items run through the current model: shared prefix and per-batch inputs."""

    n_prefix: int
    prefix: torch.Tensor | None
    prefix_inputs: list[torch.Tensor] | None
    cache: object
    batches: list[_Batch]


def _run_group(parts, rows, group, share: bool, max_tokens: int) -> _Group:
    """Run the current model (``parts``) over one group, keeping every layer's input."""
    device = parts.embed.weight.device
    n_prefix = common_prefix([rows[i] for i in group]) if share and len(group) > 1 else 0
    own = [rows[i][n_prefix:] for i in group]
    prefix = torch.tensor([list(rows[group[0]][:n_prefix])], device=device) if n_prefix else None
    prefix_inputs = cache = None
    if n_prefix:
        prefix_inputs, _, cache = _capture_inputs(parts, prefix, use_cache=True)
    batches = []
    for sub in length_batches([len(r) for r in own], max_tokens):
        tokens, mask, positions = pad_batch(own, sub)
        tokens, mask = tokens.to(device), mask.to(device)
        extra = (
            after_prefix(cache, n_prefix, mask)
            if n_prefix
            else {"attention_mask": mask, "use_cache": False}
        )
        inputs, final, _ = _capture_inputs(parts, tokens, **extra)
        batches.append(_Batch([group[j] for j in sub], tokens, mask, positions, inputs, final))
    return _Group(n_prefix, prefix, prefix_inputs, cache, batches)


def _score_group(
    model, removed, candidates, position, rows, group, share, reduce, max_tokens, bar, out
):
    """Score every candidate on one group of items (sharing its token prefix if ``share``)."""
    with without_layers(model, removed) as parts:
        run = _run_group(parts, rows, group, share, max_tokens)
    for k in candidates:
        p = position[k]
        with without_layers(model, [*removed, k]) as parts:
            last = p == len(parts.layers)  # k was the last layer: the output is k's input
            cand_cache = (
                _prefix_cache(parts, p, run.prefix_inputs, run.prefix, run.cache)
                if run.n_prefix and not last
                else None
            )
            for b in run.batches:
                if last:
                    final = b.inputs[p]
                else:
                    extra = (
                        after_prefix(cand_cache, run.n_prefix, b.mask)
                        if run.n_prefix
                        else {"attention_mask": b.mask, "use_cache": False}
                    )
                    final, _ = _resume(parts, p, b.inputs[p], b.tokens, **extra)
                values = reduce(parts, final, b.positions, b.tokens, b.mask)
                for row, i in enumerate(b.items):
                    out[k][i] = values[row]
        bar.update(len(group))


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

    Returns:
        ``{k: (n_items, ...)}`` in item order.
    """
    n_layers = len(model_layers(model))
    kept = kept_layers(n_layers, removed)
    position = {layer: p for p, layer in enumerate(kept)}
    missing = [k for k in candidates if k not in position]
    if missing:
        raise ValueError(f"candidates {missing} are not among the remaining layers")
    out: dict[int, list] = {k: [None] * len(input_ids) for k in candidates}
    bar = tqdm(total=len(input_ids) * len(candidates), desc="candidates", disable=not progress)
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
            max_tokens,
            bar,
            out,
        )
    bar.close()
    return {k: torch.stack(rows) for k, rows in out.items()}


def model_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of ``model`` (through the architecture adapter)."""
    from phaseprune.arch import decoder_parts

    return decoder_parts(model).layers


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

    With ``groups``, shared prefixes run once per group, exactly as in :func:`score_removals`.
    """
    rows: list = [None] * len(input_ids)
    with torch.inference_mode(), without_layers(model, removed) as parts:
        for group in groups or [list(range(len(input_ids)))]:
            run = _run_group(parts, input_ids, list(group), groups is not None, max_tokens)
            for b in run.batches:
                values = reduce(parts, b.final, b.positions, b.tokens, b.mask)
                for row, i in enumerate(b.items):
                    rows[i] = values[row]
    return torch.stack(rows)
