"""Layer-input caches: run a model once keeping every layer's input, then resume from any layer.

The re-run engine that candidate scoring (:mod:`phaseprune.engine.candidates`) and the readout
after each pruning step (:mod:`phaseprune.engine.incremental`) share. Removing decoder layer ``k``
leaves the residual stream before ``k`` unchanged, so a model run once with :func:`run_batch` (every
layer's input kept in a :class:`CachedBatch`) can be continued from layer ``p``'s input by
:func:`resume`: the layers before ``p`` are replaced by
:class:`~phaseprune.model.arch.CachedLayer` stand-ins that return the cached input, and only the
layers from ``p`` on compute. Masks, rotary tables and per-layer attention kinds come from the
model's own forward, so the result equals a full forward of the same (pruned) model.

Items are handled in groups (one per subject) whose common token prefix, the few-shot
exemplars, runs once with a KV cache (:class:`SharedPrefix`); each item then runs only its own
tokens after it, in length-bucketed batches (:func:`group_batches`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from phaseprune.engine.readout import after_prefix, common_prefix, length_batches, pad_batch
from phaseprune.model.arch import (
    CachedLayer,
    DecoderParts,
    capture_layer_inputs,
    d_model,
    decoder_parts,
    stand_in_layers,
)


@dataclass
class CachedBatch:
    """One batch of one group, with what the current model left at every layer's input."""

    items: list[int]
    """Item indices of the rows."""
    tokens: torch.Tensor
    """``(batch, seq)`` the items' own tokens, right-padded."""
    mask: torch.Tensor
    """``(batch, seq)`` attention mask of ``tokens``."""
    positions: torch.Tensor
    """``(batch,)`` last real position of each row."""
    inputs: list[torch.Tensor]
    """Per layer of the current model, its input ``(batch, seq, d_model)``."""
    final: torch.Tensor
    """``(batch, seq, d_model)`` the last layer's output."""


@dataclass
class SharedPrefix:
    """A group's shared token prefix, run once through the current model (``n == 0``: none)."""

    n: int
    """Prefix length in tokens."""
    tokens: torch.Tensor | None = None
    """``(1, n)`` the prefix."""
    inputs: list[torch.Tensor] | None = None
    """Per layer of the current model, its input on the prefix ``(1, n, d_model)``."""
    cache: object = None
    """The prefix's KV cache in the current model."""

    def forward_args(self, mask: torch.Tensor) -> dict:
        """Base-call arguments for a batch of the group's own tokens."""
        if self.n:
            return after_prefix(self.cache, self.n, mask)
        return {"attention_mask": mask, "use_cache": False}


def capture(parts: DecoderParts, tokens: torch.Tensor, **forward):
    """Run ``parts`` once: ``(each layer's input, the last layer's output, the KV cache)``.

    ``forward`` holds the base call's other arguments (attention mask, cache, positions).
    """
    with capture_layer_inputs(parts, final=True) as captured:
        out = parts.base(input_ids=tokens, **forward)
    return captured[:-1], captured[-1], getattr(out, "cache", None)


def resume(
    parts: DecoderParts,
    start: int,
    resid: torch.Tensor,
    tokens: torch.Tensor,
    *,
    keep_inputs: bool = True,
    **forward,
):
    """Forward through ``parts`` from layer ``start``, whose input is ``resid``.

    Returns ``(inputs of layers start.. or [] without keep_inputs, the last layer's output, the
    KV cache)``; the layers before ``start`` are stand-ins that compute nothing and write
    nothing into the cache. Without ``keep_inputs`` no layer input outlives its layer (peak
    memory of a plain forward).
    """
    stand_ins = [CachedLayer(parts.layers[i], resid, parts.family) for i in range(start)]
    first = start if keep_inputs else len(parts.layers)
    with stand_in_layers(parts, stand_ins), capture_layer_inputs(parts, first, final=True) as c:
        out = parts.base(input_ids=tokens, **forward)
    return c[:-1], c[-1], getattr(out, "cache", None)


def run_prefix(parts: DecoderParts, rows, group: list[int], share: bool) -> SharedPrefix:
    """Run the group's common token prefix through ``parts``, keeping its layer inputs."""
    n = common_prefix([rows[i] for i in group]) if share and len(group) > 1 else 0
    if not n:
        return SharedPrefix(0)
    tokens = torch.tensor([list(rows[group[0]][:n])], device=parts.embed.weight.device)
    inputs, _, cache = capture(parts, tokens, use_cache=True)
    return SharedPrefix(n, tokens, inputs, cache)


def resume_prefix(parts: DecoderParts, start: int, prefix: SharedPrefix) -> SharedPrefix:
    """``prefix`` in a model that differs from the one it was run in from layer ``start`` on.

    The layers before ``start`` are unchanged, so their inputs and KV-cache entries are kept;
    the layers from ``start`` on run again on the prefix from the cached input.
    """
    fresh, _, cache = resume(parts, start, prefix.inputs[start], prefix.tokens, use_cache=True)
    for j in range(start):
        cache.layers[j] = copy.deepcopy(prefix.cache.layers[j])
    return SharedPrefix(prefix.n, prefix.tokens, prefix.inputs[:start] + fresh, cache)


def run_batch(parts: DecoderParts, prefix: SharedPrefix, rows, group, sub) -> CachedBatch:
    """Run one batch (positions ``sub`` of ``group``) of the items' own tokens, keeping inputs."""
    own = [rows[group[j]][prefix.n :] for j in sub]
    tokens, mask, positions = pad_batch(own, range(len(own)))
    device = parts.embed.weight.device
    tokens, mask = tokens.to(device), mask.to(device)
    inputs, final, _ = capture(parts, tokens, **prefix.forward_args(mask))
    return CachedBatch([group[j] for j in sub], tokens, mask, positions, inputs, final)


def resume_batch(
    parts: DecoderParts, start: int, batch: CachedBatch, prefix: SharedPrefix
) -> CachedBatch:
    """``batch`` in a model that differs from the one it was run in from layer ``start`` on."""
    if start == len(parts.layers):  # only trailing layers changed: the old input is final
        inputs, final = batch.inputs[:start], batch.inputs[start]
    else:
        fresh, final, _ = resume(
            parts, start, batch.inputs[start], batch.tokens, **prefix.forward_args(batch.mask)
        )
        inputs = batch.inputs[:start] + fresh
    return CachedBatch(batch.items, batch.tokens, batch.mask, batch.positions, inputs, final)


def group_batches(rows, group: Sequence[int], n_prefix: int, max_tokens: int) -> list[list[int]]:
    """Length-bucketed batches (positions within ``group``) of the items' own tokens."""
    return length_batches([len(rows[i]) - n_prefix for i in group], max_tokens)


def tokens_budget(model, n_layers: int, budget_bytes: int | None) -> int | None:
    """How many padded tokens' layer inputs fit in ``budget_bytes`` (None: no limit).

    Each token holds ``n_layers + 1`` hidden vectors (every layer's input and the output).
    """
    if budget_bytes is None:
        return None
    element = decoder_parts(model).embed.weight.element_size()
    return max(1, budget_bytes // ((n_layers + 1) * d_model(model) * element))


def model_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of ``model`` (through the architecture adapter)."""
    return decoder_parts(model).layers
