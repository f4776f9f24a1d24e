"""The rounding error of a bfloat16 (or float16) run, measured once on its unpruned model.

The calibration items' all-layer option logits are read in the model's dtype and again with
its weights upcast to float32 in place (bfloat16 and float16 widen to float32 exactly, and
narrowing back restores every bit), so no second copy of the model is held;
:func:`~phaseprune.core.rounding.rounding_error` turns the two readouts into the error that
each step's :func:`~phaseprune.core.rounding.rounding_check` compares the runner-up against.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch

from phaseprune.core.rounding import rounding_error
from phaseprune.engine.readout import read_options
from phaseprune.model.arch import decoder_parts

HALF = (torch.bfloat16, torch.float16)
"""The dtypes whose runs are checked (float32 and wider decide as float32 would)."""


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's input embeddings (the dtype it runs in)."""
    return decoder_parts(model).embed.weight.dtype


@contextlib.contextmanager
def in_float32(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model with every half-precision parameter and buffer in float32, restored after.

    Each tensor gets back its own dtype (a float32 buffer such as a rotary table stays
    float32); tied weights are one tensor and are converted once.
    """
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if t.dtype in HALF}
    dtypes = {key: t.dtype for key, t in tensors.items()}
    try:
        for t in tensors.values():
            t.data = t.data.to(torch.float32)
        yield model
    finally:
        for key, t in tensors.items():
            t.data = t.data.to(dtypes[key])


def measure_rounding(
    model: torch.nn.Module,
    input_ids: Sequence[Sequence[int]],
    option_ids: Sequence[int],
    groups: Sequence[Sequence[int]] | None,
    *,
    max_tokens: int,
) -> float | None:
    """The rounding error of ``model``'s dtype on these items; None for a float32 model.

    Also None, with a warning, when the float32 weights do not fit in memory or are offloaded
    (no step then says whether it was within rounding).
    """
    if model_dtype(model) not in HALF:
        return None
    if any(p.device.type == "meta" for p in model.parameters()):
        warnings.warn(
            "the model's weights are offloaded: the steps do not say whether their decision "
            "was within bfloat16 rounding",
            stacklevel=2,
        )
        return None
    read = {"groups": groups, "max_tokens": max_tokens, "progress": False}
    approx = read_options(decoder_parts(model), input_ids, option_ids, **read)
    try:
        with in_float32(model):
            exact = read_options(decoder_parts(model), input_ids, option_ids, **read)
    except torch.OutOfMemoryError:
        warnings.warn(
            "the float32 weights do not fit in memory: the steps do not say whether their "
            "decision was within bfloat16 rounding",
            stacklevel=2,
        )
        return None
    return rounding_error(approx.numpy(), exact.numpy())
