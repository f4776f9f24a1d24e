"""Layer removal without copying weights: a temporary view of a model with some layers dropped.

Inside :func:`without_layers` the model behaves exactly like the checkpoint one would get by
deleting those layers from its state dict and its config and reloading it; on exit everything is
put back. No weight is copied: the kept layer modules are the model's own, in a new
``nn.ModuleList``. :func:`export_config` gives the config of that pruned checkpoint, for
``save_pretrained``.

What a reloaded pruned model differs in, and so what the view edits (transformers 5.24):

* The layer list, and every ``layer_idx`` inside a kept layer: each KV-cache slot is addressed
  by it (``self_attn`` in the Llama-like families and OPT, ``attn`` in GPT-2, ``attention`` in
  GPT-NeoX, ``self_attention`` in Falcon; Gemma-3's decoder layer holds one too).
* What a layer computed from its index when it was built: GPT-2's ``attn.scaling`` under
  ``scale_attn_by_inverse_layer_idx`` (``1 / (layer_idx + 1)``).
* The config, which the model reads at every forward (``layers[: num_hidden_layers]``, the mask
  kind of layer ``i`` from ``layer_types[i]``, one cache slot of that kind per entry):
  ``num_hidden_layers`` (GPT-2's ``n_layer``), the per-layer lists ``layer_types`` (Gemma-2/3,
  Qwen2/3) and ``mlp_layer_types``, and Qwen2/3's ``max_window_layers`` (the layers below it
  use full attention), re-counted over the kept layers.
* What the model derived from the config when it was built: Qwen2/3's ``has_sliding_layers``.

Left alone because a reload gives the same behaviour: each layer's own ``layer_type``,
``sliding_window`` and ``is_sliding`` (they travel with the layer, as its ``layer_types`` entry
does), Gemma-3's per-layer-type rotary tables (one per type present at build time; a type no
kept layer uses is never read) and Gemma-3's legacy ``sliding_window_pattern`` (only read when a
config has no ``layer_types``, and transformers 5.24 always writes them).
"""

from __future__ import annotations

import copy
import operator
import warnings
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from transformers import PretrainedConfig

from phaseprune.core.errors import UsageError
from phaseprune.model.arch import DecoderParts, decoder_parts

# Config fields holding one entry per decoder layer.
_PER_LAYER_FIELDS = ("layer_types", "mlp_layer_types")


def kept_layers(n_layers: int, removed: Iterable[int]) -> list[int]:
    """Return the indices of the layers that remain once ``removed`` are dropped, in order.

    Args:
        n_layers: Number of decoder layers of the model.
        removed: Indices of the layers to drop, in ``[0, n_layers)``; order and repeats do not
            matter.

    Returns:
        The kept indices, ascending.

    Raises:
        ValueError: If an index is out of range, or no layer would remain.
        TypeError: If an index is not an integer.
    """
    drop = {operator.index(i) for i in removed}
    bad = sorted(i for i in drop if not 0 <= i < n_layers)
    if bad:
        raise ValueError(f"layer indices {bad} out of range for a model with {n_layers} layers")
    kept = [i for i in range(n_layers) if i not in drop]
    if not kept:
        raise ValueError(f"cannot remove all {n_layers} layers of a model")
    return kept


def _config_edits(config: PretrainedConfig, kept: list[int]) -> dict[str, Any]:
    """New values of the config fields that count or index decoder layers."""
    n_layers = config.num_hidden_layers
    edits: dict[str, Any] = {"num_hidden_layers": len(kept)}  # GPT-2 maps it to n_layer
    for name in _PER_LAYER_FIELDS:
        values = getattr(config, name, None)
        if isinstance(values, list | tuple) and len(values) == n_layers:
            edits[name] = [values[i] for i in kept]
    # Qwen2/3: layers with index >= max_window_layers slide (when use_sliding_window is set).
    max_window = getattr(config, "max_window_layers", None)
    if isinstance(max_window, int) and max_window < n_layers:
        edits["max_window_layers"] = sum(i < max_window for i in kept)
    return edits


def export_config(model: nn.Module, removed: Iterable[int]) -> PretrainedConfig:
    """Return the config of ``model`` with decoder layers ``removed`` deleted.

    Together with the weights of :func:`without_layers`'s view (``save_pretrained`` inside the
    context), it makes a checkpoint that ``AutoModelForCausalLM.from_pretrained`` loads into a
    model equal to the view.

    Args:
        model: A causal LM of a supported family.
        removed: Indices into ``model``'s current layers, as for :func:`without_layers`.

    Returns:
        A deep copy of ``model.config`` with the layer count and per-layer fields edited; the
        model's own config is not changed.
    """
    parts = _check(model)
    config = copy.deepcopy(model.config)
    for name, value in _config_edits(config, kept_layers(len(parts.layers), removed)).items():
        setattr(config, name, value)
    return config


class _Undo:
    """Attribute assignments that can be taken back, newest first."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, object]] = []

    def set(self, obj: object, name: str, value: object) -> None:
        self._saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, value)

    def restore(self) -> None:
        while self._saved:
            obj, name, value = self._saved.pop()
            setattr(obj, name, value)


_OPEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Each model's open ``without_layers`` views, outermost first (their undo records)."""


def _close_view(model: nn.Module, undo: _Undo) -> None:
    """Take back ``undo`` and every view opened inside it, innermost first.

    Views exited out of order (the outer one first) would otherwise leave the model with the
    inner view's layers and duplicated ``layer_idx``: the inner ones are closed here too, with
    a warning, and their own exits later change nothing.
    """
    views = _OPEN.get(model, [])
    if undo not in views:  # closed already, by an outer view exited before it
        return
    inner = views[views.index(undo) + 1 :]
    if inner:
        warnings.warn(
            f"without_layers: a view was exited before {len(inner)} view(s) opened inside it; "
            "they are closed too and the model is whole again (exit views innermost first)",
            stacklevel=4,
        )
    for view in reversed(views[views.index(undo) :]):
        view.restore()
    del views[views.index(undo) :]


def _gpt2_scaling(attn: nn.Module, layer_idx: int) -> float:
    """``GPT2Attention.scaling`` as built for ``layer_idx``, in the same floating-point steps."""
    scaling = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    return scaling / float(layer_idx + 1)


def _reindex_layer(layer: nn.Module, old: int, new: int, undo: _Undo) -> None:
    """Give every ``layer_idx`` in ``layer`` (and what was computed from it) the value ``new``."""
    for module in layer.modules():
        idx = getattr(module, "layer_idx", None)
        if not isinstance(idx, int) or isinstance(idx, bool):
            continue
        if idx != old:
            raise RuntimeError(
                f"{type(module).__name__} at layer {old} has layer_idx {idx}; cannot re-index"
            )
        undo.set(module, "layer_idx", new)
        if getattr(module, "scale_attn_by_inverse_layer_idx", False):  # GPT-2
            undo.set(module, "scaling", _gpt2_scaling(module, new))


def _check(model: nn.Module) -> DecoderParts:
    """The model's parts, refusing what a layer view cannot keep exact."""
    parts = decoder_parts(model)
    # transformers 5.24 keys per-layer overrides by layer index; none of the supported families
    # is built from them, so a config carrying them is not re-keyed but refused.
    if getattr(model.config, "is_heterogeneous", False):
        raise UsageError("phaseprune cannot remove layers of a model with a per_layer_config")
    return parts


@contextmanager
def without_layers(model: nn.Module, removed: Iterable[int]) -> Iterator[DecoderParts]:
    """View of ``model`` with decoder layers ``removed`` dropped, restored on exit.

    Inside the context, ``model`` computes (with or without a KV cache) what the checkpoint
    with those layers deleted from its weights and config would, reloaded; see the module
    docstring for what is edited. The kept layers are the same module objects (no weights are
    copied), so hooks on them stay; hooks on the old ``ModuleList`` itself do not fire. On
    exit, also through an exception, the layer list, every ``layer_idx`` and the config fields
    get their original objects back.

    Contexts nest (exit them in reverse order): a view is a model like any other, so the
    indices of an inner ``without_layers`` refer to the outer view's layers. An outer view
    exited first closes the inner ones too (with a warning), so the model is always whole.

    Args:
        model: A causal LM of a supported family.
        removed: Indices of the layers to drop, into ``model``'s layers as they are on entry
            (0-based, not shifted by the other removals); empty for the identity.

    Yields:
        The parts of the pruned view (its ``layers`` hold only the kept layers).

    Raises:
        ValueError: If an index is out of range, or every layer would be removed.
    """
    parts = _check(model)
    old_layers = parts.layers
    kept = kept_layers(len(old_layers), removed)
    edits = _config_edits(model.config, kept)
    layers_attr = next(n for n, m in parts.base.named_children() if m is old_layers)
    undo = _Undo()
    _OPEN.setdefault(model, []).append(undo)
    try:
        for name, value in edits.items():
            undo.set(model.config, name, value)
        undo.set(parts.base, layers_attr, nn.ModuleList([old_layers[i] for i in kept]))
        for new, old in enumerate(kept):
            if new != old:
                _reindex_layer(old_layers[old], old, new, undo)
        if hasattr(parts.base, "has_sliding_layers"):  # Qwen2/3, built from layer_types
            undo.set(
                parts.base,
                "has_sliding_layers",
                "sliding_attention" in (getattr(model.config, "layer_types", None) or ()),
            )
        yield decoder_parts(model)
    finally:
        _close_view(model, undo)


@contextmanager
def plain_checkpoint(model):
    """Let a model loaded from GGUF (already dequantised) save as a plain checkpoint.

    transformers marks GGUF-loaded models with a quantizer that refuses ``save_pretrained``;
    their weights are ordinary tensors once loaded, so the mark is lifted while saving.
    """
    quantizer, config = getattr(model, "hf_quantizer", None), model.config
    model.hf_quantizer = None
    try:
        yield
    finally:
        model.hf_quantizer, model.config = quantizer, config
