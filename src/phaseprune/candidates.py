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
passes: ``L + L(L-1)/2`` layer-passes instead of the naive ``L(L-1)``, about half. The cache
holds ``(L + 1) x tokens x d_model`` values per chunk; chunks are sized by ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from phaseprune.arch import CachedLayer, DecoderParts, layer_output
from phaseprune.readout import length_batches, pad_batch
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


def _capture_inputs(parts: DecoderParts, tokens, mask) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the model once; return each layer's input and the last layer's output."""
    inputs: list[torch.Tensor] = []
    final: list[torch.Tensor] = []

    def pre(module, args, kwargs):
        inputs.append(args[0] if args else kwargs["hidden_states"])

    handles = [layer.register_forward_pre_hook(pre, with_kwargs=True) for layer in parts.layers]
    handles.append(
        parts.layers[-1].register_forward_hook(lambda m, a, o: final.append(layer_output(o)))
    )
    try:
        parts.base(input_ids=tokens, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return inputs, final[0]


def _resume(parts: DecoderParts, start: int, resid: torch.Tensor, tokens, mask) -> torch.Tensor:
    """Forward through ``parts`` with layers ``< start`` replaced by cached stand-ins.

    ``resid`` is the input of layer ``start``; returns the last layer's output.
    """
    final: list[torch.Tensor] = []
    originals = [parts.layers[i] for i in range(start)]
    for i in range(start):
        parts.layers[i] = CachedLayer(originals[i], resid, parts.family)
    handle = parts.layers[-1].register_forward_hook(lambda m, a, o: final.append(layer_output(o)))
    try:
        parts.base(input_ids=tokens, attention_mask=mask, use_cache=False)
    finally:
        handle.remove()
        for i, layer in enumerate(originals):
            parts.layers[i] = layer
    return final[0]


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
) -> dict[int, torch.Tensor]:
    """Reduce the final hidden states of "model without ``removed`` and ``k``" for each ``k``.

    Args:
        model: the full (unpruned) causal LM.
        removed: original indices already removed.
        candidates: original indices to try removing next (not in ``removed``).
        input_ids: one token list per calibration item.
        reduce: turns final hidden states into per-item values (e.g. :func:`option_reduce`).
        max_tokens: padded tokens per chunk.
        progress: show a progress bar over candidate evaluations.

    Returns:
        ``{k: (n_items, ...)}`` in item order.
    """
    n_layers = len(model_layers(model))
    kept = kept_layers(n_layers, removed)
    position = {layer: p for p, layer in enumerate(kept)}
    missing = [k for k in candidates if k not in position]
    if missing:
        raise ValueError(f"candidates {missing} are not among the remaining layers")
    device = next(model.parameters()).device
    out: dict[int, list] = {k: [None] * len(input_ids) for k in candidates}
    batches = length_batches([len(r) for r in input_ids], max_tokens)
    bar = tqdm(total=len(batches) * len(candidates), desc="candidates", disable=not progress)
    for batch in batches:
        tokens, mask, positions = pad_batch(input_ids, batch)
        tokens, mask = tokens.to(device), mask.to(device)
        with without_layers(model, removed) as parts:
            inputs, _ = _capture_inputs(parts, tokens, mask)
        for k in candidates:
            p = position[k]
            with without_layers(model, [*removed, k]) as parts:
                final = (
                    _resume(parts, p, inputs[p], tokens, mask) if p < len(parts.layers) else None
                )
                if final is None:  # k was the last layer: the output is k's input
                    final = inputs[p]
                values = reduce(parts, final, positions, tokens, mask)
            for row, i in enumerate(batch):
                out[k][i] = values[row]
            bar.update(1)
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
) -> torch.Tensor:
    """Reduce the final hidden states of the model without ``removed`` (one plain forward)."""
    device = next(model.parameters()).device
    rows: list = [None] * len(input_ids)
    with torch.inference_mode(), without_layers(model, removed) as parts:
        for batch in length_batches([len(r) for r in input_ids], max_tokens):
            tokens, mask, positions = pad_batch(input_ids, batch)
            tokens, mask = tokens.to(device), mask.to(device)
            _, final = _capture_inputs(parts, tokens, mask)
            values = reduce(parts, final, positions, tokens, mask)
            for row, i in enumerate(batch):
                rows[i] = values[row]
    return torch.stack(rows)
