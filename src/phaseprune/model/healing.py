"""Fold a linear map into a decoder layer's MLP output projection, and take it back out.

Healing (ReplaceMe, arXiv 2505.02819) replaces removed blocks by one linear map ``T`` on the
residual-stream contribution of the kept layer before them: that layer's MLP output ``m``
becomes ``m T``. Since ``m`` is the output of a linear module (:func:`~phaseprune.model.arch.
mlp_out_projection`), ``m T`` is that module with other weights, so the pruned model stays a
standard checkpoint of its family:

* ``nn.Linear`` computes ``m = a W^T + b`` (``W`` is ``(d_model, d_ff)``): ``W' = T^T W``,
  ``b' = T^T b``;
* GPT-2's ``Conv1D`` computes ``m = a W + b`` (``W`` is ``(d_ff, d_model)``): ``W' = W T``,
  ``b' = b T``.

Every map is relative to the layer's original weights (a refit replaces it, maps never
compound) and folded in float64, then cast to the weights' dtype, so the view a run scores and
the checkpoint ``export`` writes hold the same numbers. :func:`healed` swaps in new parameter
objects and puts the originals back on exit; :func:`heal_tags` tells which layers are swapped
(the incremental readout resumes from the first changed one).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from phaseprune.model.arch import check_healable, decoder_parts, mlp_out_projection

_TAGS = itertools.count(1)
_TAG = "_phaseprune_heal_tag"


def _is_conv1d(module: nn.Module) -> bool:
    """Transformers' GPT-2 Conv1D (weight ``(in, out)``), told apart from ``nn.Linear``."""
    return not isinstance(module, nn.Linear) and type(module).__name__ == "Conv1D"


def folded(
    module: nn.Module, t: torch.Tensor, own: tuple | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` of ``module`` whose output is the original output times ``t``.

    Args:
        module: An output projection (``nn.Linear`` or GPT-2's ``Conv1D``) with its original
            weights.
        t: ``(d_model, d_model)`` map acting on output row vectors.
        own: The module's own ``(weight, bias)`` where it may hold another map's parameters
            now (a map is always folded into the original weights, never on top of another).

    Returns:
        New tensors in the module's dtype and device (the module is not changed).
    """
    weight, bias = own if own is not None else (module.weight, module.bias)
    w = weight.detach().double()
    t = t.to(device=w.device, dtype=torch.float64)
    out = w @ t if _is_conv1d(module) else t.T @ w
    if bias is not None:
        bias = (bias.detach().double() @ t).to(bias.dtype)
    return out.to(weight.dtype), bias


def out_projections(model: nn.Module) -> list[nn.Module]:
    """Each decoder layer's MLP output projection, by the model's current layer index."""
    parts = decoder_parts(model)
    return [mlp_out_projection(layer, parts.family) for layer in parts.layers]


def fold(
    module: nn.Module, t: torch.Tensor, own: tuple | None = None
) -> tuple[nn.Parameter, nn.Parameter | None]:
    """New parameters ``(weight, bias)`` folding ``t`` into ``module``.

    The weight is tagged for :func:`heal_tags`; ``bias`` is None where the module has none.
    """
    with torch.no_grad():
        weight, bias = folded(module, t, own)
    weight = nn.Parameter(weight, requires_grad=False)
    setattr(weight, _TAG, next(_TAGS))
    return weight, None if bias is None else nn.Parameter(bias, requires_grad=False)


@contextmanager
def swapped(
    modules: Mapping[int, nn.Module], params: Mapping[int, tuple[nn.Parameter, nn.Parameter | None]]
) -> Iterator[None]:
    """Give ``modules[k]`` the parameters ``params[k]`` (from :func:`fold`); originals on exit.

    The parameter objects the modules held are never written to, so the model is restored
    bit for bit; layers not in ``params`` are left as they are.
    """
    saved = []
    try:
        for k, (weight, bias) in params.items():
            module = modules[k]
            saved.append((module, module.weight, module.bias))
            module.weight = weight
            if bias is not None:
                module.bias = bias
        yield
    finally:
        for module, weight, bias in reversed(saved):
            module.weight = weight
            if bias is not None:
                module.bias = bias


@contextmanager
def healed(modules: Mapping[int, nn.Module], maps: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Fold ``maps[k]`` (``(d_model, d_model)``) into ``modules[k]``; undone on exit.

    ``modules`` are the unpruned model's output projections by original layer index
    (:func:`out_projections`), with their original weights.
    """
    with swapped(modules, {k: fold(modules[k], t) for k, t in maps.items()}):
        yield


def heal_tags(model: nn.Module) -> list[int]:
    """Per current layer, which map its output projection holds.

    0 where it holds its own weights, else the tag of the map folded in (a new tag each time a
    map is folded).
    """
    return [getattr(m.weight, _TAG, 0) for m in out_projections(model)]


def check_model(model: nn.Module) -> dict[int, nn.Module]:
    """The unpruned model's output projections by layer, refusing a family healing cannot fold."""
    check_healable(model)
    return dict(enumerate(out_projections(model)))
