"""Where the decoder layers, final norm and unembedding of each model family are.

This is the only module that knows transformers' module layouts. Everything else reads a model
through :class:`DecoderParts`: call ``base``, hook ``layers``, and turn a residual-stream vector
into the logits of a few option tokens with :meth:`DecoderParts.option_logits` (a logit lens
restricted to the option rows of ``W_U``, so the full-vocabulary projection is never computed).

Dispatch is on ``config.model_type`` (as tuned-lens's ``model_surgery.py`` dispatches on the
model class). Layouts, checked against transformers 5.24 (``base`` is relative to the
``*ForCausalLM`` wrapper; embedding, layers and final norm are attributes of ``base``):

* llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3_text, phi3, olmo, olmo2:
  ``model`` with ``embed_tokens``, ``layers``, ``norm``.
* gpt2: ``transformer`` with ``wte``, ``h``, ``ln_f``.
* gpt_neox: ``gpt_neox`` with ``embed_in``, ``layers``, ``final_layer_norm``.
* opt: ``model.decoder`` with ``embed_tokens``, ``layers``, ``final_layer_norm``, ``project_out``.
* falcon: ``transformer`` with ``word_embeddings``, ``h``, ``ln_f``.

All of them unembed with ``lm_head``.

Besides the layouts, this module holds every other family-specific fact the package uses: the
decoder-layer calling convention (:func:`layer_input`, :func:`layer_output`), which families
read a BOS token (:func:`default_add_bos`), the residual width (:func:`d_model`), and the two
hook contexts the engines build on: :func:`capture_layer_inputs` ("record what enters each
layer") and :func:`stand_in_layers` ("run these stand-ins in place of those layers").
Edits of a model (layer removal, re-indexing, export configs) are in
:mod:`phaseprune.model.surgery`; healing folds a linear map into the module
:func:`mlp_out_projection` names (:mod:`phaseprune.model.healing`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from phaseprune.core.errors import UsageError


@dataclass(frozen=True)
class _Layout:
    """Attribute names of one family's pieces."""

    base: str
    """Dotted path from the causal-LM wrapper to the decoder stack."""
    embed: str
    """Attribute of ``base`` holding the token embedding."""
    layers: str
    """Attribute of ``base`` holding the ``nn.ModuleList`` of decoder layers."""
    final_norm: str
    """Attribute of ``base`` holding the final norm (may hold ``None``: OPT post-LN)."""


_LLAMA_LIKE = _Layout(base="model", embed="embed_tokens", layers="layers", final_norm="norm")

_LAYOUTS: dict[str, _Layout] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    # Text-only Gemma3ForCausalLM; the multimodal Gemma3ForConditionalGeneration is "gemma3".
    "gemma3_text": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "gpt2": _Layout(base="transformer", embed="wte", layers="h", final_norm="ln_f"),
    "gpt_neox": _Layout(
        base="gpt_neox", embed="embed_in", layers="layers", final_norm="final_layer_norm"
    ),
    "opt": _Layout(
        base="model.decoder", embed="embed_tokens", layers="layers", final_norm="final_layer_norm"
    ),
    "falcon": _Layout(base="transformer", embed="word_embeddings", layers="h", final_norm="ln_f"),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(_LAYOUTS)
"""The ``config.model_type`` values :func:`decoder_parts` can read."""

# Families whose *ForCausalLM.forward squashes logits as cap * tanh(logits / cap). A config of
# another family may carry the attribute too (configs accept any kwarg), so only these read it.
_SOFTCAPPED = frozenset({"gemma2", "gemma3_text"})


@dataclass(frozen=True)
class DecoderParts:
    """Where the pieces of a decoder-only causal LM are.

    Calling conventions of ``layers`` (transformers 5.24), which hooks must respect:

    * Every family passes the hidden states to a decoder layer as the first positional
      argument (``args[0]`` in a forward pre-hook); everything else is a keyword, except GPT-2,
      whose blocks also get ``cache``, ``attention_mask`` and ``encoder_hidden_states``
      positionally (``args[1:4]``).
    * Layers return the hidden-states tensor, except Falcon's, which return a tuple
      ``(hidden_states, attn_weights)``; read any of them with :func:`layer_output`.
    * The input of ``layers[0]`` already includes everything the model adds to the token
      embedding: GPT-2's and OPT's learned position embeddings (and OPT's ``project_in``),
      Gemma's ``sqrt(d_model)`` scaling (done inside Gemma's embedding module).
    * ``base(...).last_hidden_state`` is the lm_head input: the final norm (and OPT's
      ``project_out``) are applied inside ``base``.
    """

    family: str
    """The model's ``config.model_type``, one of :data:`SUPPORTED_FAMILIES`."""
    base: nn.Module
    """The decoder stack, callable as ``base(input_ids=, attention_mask=, use_cache=False)``."""
    embed: nn.Module
    """The token embedding module."""
    layers: nn.ModuleList
    """The decoder layers, in order (``n_layers`` of them)."""
    final_norm: nn.Module | None
    """Norm applied to the last layer's output before the unembedding; ``None`` where the model
    has none (OPT with ``do_layer_norm_before=False``)."""
    project_out: nn.Module | None
    """OPT's ``project_out`` (``d_model -> word_embed_proj_dim``) if they differ, else ``None``."""
    unembed: nn.Linear
    """The lm_head: weight ``W_U`` ``(vocab, d_unembed)``, bias ``(vocab,)`` or ``None``."""
    logit_softcap: float | None
    """Gemma-2/3 ``final_logit_softcapping``: logits become ``cap * tanh(logits / cap)``."""

    def option_logits(self, resid: torch.Tensor, option_ids: torch.Tensor) -> torch.Tensor:
        """Read the logits of a few tokens off a residual-stream vector, as the model would.

        Applies, in the model's order, the final norm, ``project_out``, the option rows of the
        unembedding (plus their bias) and the softcap; the full-vocabulary projection is never
        computed. On the last layer's output this equals ``model(...).logits[..., option_ids]``.

        Args:
            resid: Residual stream, not yet normalised, shape ``(..., d_model)``.
            option_ids: Token ids of the options, shape ``(n_options,)``.

        Returns:
            Logits of the option tokens, shape ``(..., n_options)``.
        """
        h = resid  # (..., d_model)
        if self.final_norm is not None:
            h = self.final_norm(h)
        if self.project_out is not None:
            h = self.project_out(h)  # (..., d_unembed)
        ids = option_ids.to(self.unembed.weight.device)
        w_u = self.unembed.weight[ids]  # (n_options, d_unembed)
        b_u = None if self.unembed.bias is None else self.unembed.bias[ids]  # (n_options,)
        logits = F.linear(h, w_u, b_u)  # (..., n_options)
        if self.logit_softcap is not None:
            # Same op order as Gemma2ForCausalLM.forward, so no extra rounding differences.
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits of residual-stream vectors, as the model computes them.

        Used by the baselines that need the whole output distribution (SLEB, FinerCut); call it
        on few positions at a time, since it is ``(..., vocab)``.
        """
        h = resid if self.final_norm is None else self.final_norm(resid)
        if self.project_out is not None:
            h = self.project_out(h)
        out = self.unembed(h)
        if self.logit_softcap is not None:
            out = torch.tanh(out / self.logit_softcap) * self.logit_softcap
        return out


def _cannot_read(model: nn.Module, why: str) -> UsageError:
    families = ", ".join(SUPPORTED_FAMILIES)
    return UsageError(
        f"phaseprune cannot read {type(model).__name__}: {why}; "
        f"supported families (a *ForCausalLM model of model_type): {families}"
    )


def check_family(model_type: str | None, name: str) -> None:
    """Refuse, before any weights are loaded, a config whose family phaseprune cannot read."""
    if model_type not in _LAYOUTS:
        families = ", ".join(SUPPORTED_FAMILIES)
        raise UsageError(
            f"phaseprune cannot read {name}: unsupported architecture (model_type {model_type!r}); "
            f"supported families: {families}"
        )


def decoder_parts(model: nn.Module) -> DecoderParts:
    """Find the decoder stack, layers, final norm and unembedding of a causal LM.

    Args:
        model: A transformers ``*ForCausalLM`` model of one of :data:`SUPPORTED_FAMILIES`.

    Returns:
        The model's parts; nothing is copied or changed.

    Raises:
        UsageError: If the model is not a causal LM of a supported family.
    """
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in _LAYOUTS:
        raise _cannot_read(model, f"unsupported architecture (model_type {family!r})")
    layout = _LAYOUTS[family]
    try:
        base = model.get_submodule(layout.base)
        embed = getattr(base, layout.embed)
        layers = getattr(base, layout.layers)
    except AttributeError:
        base = layers = None  # e.g. a bare LlamaModel: the layout starts one level down
    unembed = getattr(model, "lm_head", None)
    if not isinstance(unembed, nn.Linear) or not isinstance(layers, nn.ModuleList):
        raise _cannot_read(model, "not a causal LM (load it with AutoModelForCausalLM)")
    return DecoderParts(
        family=family,
        base=base,
        embed=embed,
        layers=layers,
        final_norm=getattr(base, layout.final_norm, None),
        project_out=getattr(base, "project_out", None) if family == "opt" else None,
        unembed=unembed,
        logit_softcap=(
            getattr(model.config, "final_logit_softcapping", None)
            if family in _SOFTCAPPED
            else None
        ),
    )


def layer_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a decoder layer is called with, from a forward pre-hook's arguments.

    Every supported family passes them first, positionally or as ``hidden_states=``.
    """
    return args[0] if args else kwargs["hidden_states"]


def layer_output(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Return the hidden states from a decoder layer's forward output.

    Args:
        output: What a layer returned: the hidden states ``(batch, seq, d_model)`` for most
            families, a tuple whose first element is the hidden states for Falcon.

    Returns:
        The hidden states, shape ``(batch, seq, d_model)``.

    Raises:
        TypeError: If ``output`` is neither a tensor nor a tuple starting with one.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"a decoder layer returned {type(output).__name__}, expected a tensor or tuple")


# Families whose decoder layers return ``(hidden_states, attn_weights)`` rather than a tensor.
_TUPLE_OUTPUT = frozenset({"falcon"})


class CachedLayer(nn.Module):
    """Stands in for a decoder layer and returns a precomputed output, computing nothing.

    Used to resume a forward pass from a cached residual stream: the layers before the resume
    point are replaced by these, so the model's own forward (masks, rotary tables, per-layer
    types, the layers after) runs unchanged. It copies the attributes a model's loop may read
    from a layer (``attention_type``, ``layer_type``) and returns its output in the family's
    format.
    """

    def __init__(self, like: nn.Module, output: torch.Tensor, family: str):
        super().__init__()
        for attr in ("attention_type", "layer_type", "is_sliding"):
            if hasattr(like, attr):
                setattr(self, attr, getattr(like, attr))
        self.output = output
        self.as_tuple = family in _TUPLE_OUTPUT

    def forward(self, hidden_states, *args, **kwargs):
        """Ignore the input; return the cached hidden states."""
        return (self.output, None) if self.as_tuple else self.output


# lm-evaluation-harness's HFLM forces a BOS token for these families (Gemma degrades badly
# without it) and adds no special tokens for any other causal model.
BOS_FAMILIES = frozenset({"gemma", "gemma2", "gemma3", "gemma3_text"})


def default_add_bos(family: str) -> bool:
    """lm-evaluation-harness's choice: BOS only for Gemma models."""
    return family in BOS_FAMILIES


def context_window(config) -> int | None:
    """Positions the model was built for (``max_position_embeddings``, GPT-2's ``n_positions``)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "max_position_embeddings", None) or getattr(text, "n_positions", None)
    return window if isinstance(window, int) and window > 0 else None


def d_model(model: nn.Module) -> int:
    """Width of the residual stream (``hidden_size``; the embedding width if a config lacks it)."""
    hidden = getattr(model.config.get_text_config(), "hidden_size", None)
    return hidden or decoder_parts(model).embed.weight.shape[1]


@contextmanager
def capture_layer_inputs(
    parts: DecoderParts, start: int = 0, *, final: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Record the input of every layer from ``start`` on (and the last layer's output).

    Yields a list that each forward of ``parts.base`` inside the block extends with the
    hidden states entering layers ``start, start + 1, ...`` in order, then, with ``final``, the
    last layer's output. Hooks are removed on exit.
    """
    captured: list[torch.Tensor] = []
    handles = [
        layer.register_forward_pre_hook(
            lambda m, args, kwargs: captured.append(layer_input(args, kwargs)), with_kwargs=True
        )
        for layer in list(parts.layers)[start:]
    ]
    if final:
        handles.append(
            parts.layers[-1].register_forward_hook(
                lambda m, a, out: captured.append(layer_output(out))
            )
        )
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def stand_in_layers(parts: DecoderParts, stand_ins: Sequence[nn.Module]) -> Iterator[None]:
    """Run ``stand_ins`` in place of the first ``len(stand_ins)`` layers; restored on exit.

    The model's own forward (masks, rotary tables, per-layer kinds, the layers after) runs
    unchanged around them; see :class:`CachedLayer`.
    """
    originals = [parts.layers[i] for i in range(len(stand_ins))]
    try:
        for i, module in enumerate(stand_ins):
            parts.layers[i] = module
        yield
    finally:
        for i, layer in enumerate(originals):
            parts.layers[i] = layer


# The module whose output a layer adds to the residual stream as its MLP's (path inside a layer,
# transformers 5.24); parallel-residual layouts (GPT-NeoX, Falcon) still add it as it is.
_MLP_OUT: dict[str, str] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "phi3", "olmo", "olmo2"), "mlp.down_proj"),
    "gpt2": "mlp.c_proj",
    "gpt_neox": "mlp.dense_4h_to_h",
    "falcon": "mlp.dense_4h_to_h",
    "opt": "fc2",
}  # fmt: skip

# Families whose layer normalises the MLP's output before adding it.
_NORM_AFTER_MLP = {
    "gemma2": "post_feedforward_layernorm",
    "gemma3_text": "post_feedforward_layernorm",
    "olmo2": "post_feedforward_layernorm",
}


def check_healable(model: nn.Module) -> None:
    """Refuse, in one line, a model whose layers a linear map cannot be folded into.

    A map ``T`` folded into the MLP's output projection acts on the residual stream only if
    the layer adds that projection's output as it is: not true behind a post-MLP norm
    (Gemma-2/3, OLMo-2) or in OPT's post-LN layout (``do_layer_norm_before=False``).
    """
    family = decoder_parts(model).family
    norm = _NORM_AFTER_MLP.get(family)
    if family == "opt" and not getattr(model.config, "do_layer_norm_before", True):
        norm = "final_layer_norm (post-LN)"
    if norm is not None:
        raise UsageError(
            f"--heal linear cannot heal {family}: its layers normalise the MLP output "
            f"({norm}) before adding it to the residual stream, so a linear map folded into "
            "the output projection is not linear there; prune without --heal"
        )


def mlp_out_projection(layer: nn.Module, family: str) -> nn.Module:
    """The module whose output is the layer's MLP contribution to the residual stream.

    An ``nn.Linear`` (weight ``(d_model, d_ff)``) or, for GPT-2, a ``Conv1D`` (weight
    ``(d_ff, d_model)``); see :mod:`phaseprune.model.healing` for the fold of each.
    """
    if family not in _MLP_OUT:
        raise UsageError(f"--heal linear cannot heal {family}: it has no single MLP output")
    return layer.get_submodule(_MLP_OUT[family])
