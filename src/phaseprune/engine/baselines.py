"""Scores of the known layer-pruning baselines, computed on calibration texts.

Pure functions of a model (or a pruned view of it) and token ids: every per-layer score is
indexed by position in the *current* ``parts.layers``, so a view with layers removed is scored
like any other model and the caller maps positions back to original indices.

Texts are batched by length with right padding and an attention mask
(:func:`phaseprune.engine.readout.length_batches`); causal attention means padding never changes a
real token's hidden state, so padded positions are simply left out of every average. Hidden
states are read with hooks on the decoder layers (input of layer ``i`` and its output,
before any final norm), not from ``output_hidden_states``, whose last entry is normalised.
Each function's docstring gives its formula and the paper it comes from.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from phaseprune.engine.readout import length_batches, pad_batch
from phaseprune.model.arch import DecoderParts, d_model, layer_input, layer_output


def padded_batches(
    input_ids: Sequence[Sequence[int]], max_tokens: int, device: torch.device
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Text indices, token ids and mask (both ``(batch, seq)``) of right-padded batches."""
    lengths = [len(row) for row in input_ids]
    if not lengths or min(lengths) == 0:
        raise ValueError("need at least one text, and every text needs at least one token")
    for batch in length_batches(lengths, max_tokens):
        tokens, mask, _ = pad_batch(input_ids, batch)
        yield batch, tokens.to(device), mask.to(device)


@contextmanager
def _layer_io_hooks(
    parts: DecoderParts,
    on_input: Callable[[int, torch.Tensor], None],
    on_output: Callable[[int, torch.Tensor], None],
):
    """Call ``on_input(i, hidden)`` before and ``on_output(i, hidden)`` after each layer ``i``.

    ``hidden`` is ``(batch, seq, d_model)``; the hooks are removed in ``finally``.
    """

    def hooks(i: int):
        def pre_hook(module, args, kwargs):
            on_input(i, layer_input(args, kwargs))

        def post_hook(module, args, output):
            on_output(i, layer_output(output))

        return pre_hook, post_hook

    handles = []
    try:
        for i, layer in enumerate(parts.layers):
            pre_hook, post_hook = hooks(i)
            handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(layer.register_forward_hook(post_hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def block_influence(
    parts: DecoderParts, input_ids: Sequence[Sequence[int]], *, max_tokens: int = 8192
) -> np.ndarray:
    """ShortGPT's Block Influence of every layer (Men et al. 2024, arXiv:2403.03853).

    ``BI_i = 1 - E_t[cos(x_{i,t}, x_{i+1,t})]``, with ``x_{i,t}`` layer ``i``'s input and
    ``x_{i+1,t}`` its output at token ``t``, averaged over all real (non-padding) tokens of all
    texts. ``1 - cos`` is computed as ``|a/|a| - b/|b||^2 / 2`` (the same quantity), which is
    exactly 0 for an identity layer and keeps its precision when ``cos`` is close to 1.

    Args:
        parts: the model's decoder parts (possibly a pruned view).
        input_ids: one token-id list per calibration text.
        max_tokens: padded tokens per forward batch.

    Returns:
        ``(n_layers,)`` float64 array; low BI = removable.
    """
    totals = np.zeros(len(parts.layers))
    unit_inputs: dict[int, torch.Tensor] = {}  # layer -> (batch, seq, d_model), until its output
    current: dict[str, torch.Tensor] = {}

    def on_input(i: int, hidden: torch.Tensor) -> None:
        unit_inputs[i] = F.normalize(hidden.float(), dim=-1)

    def on_output(i: int, hidden: torch.Tensor) -> None:
        gap = (F.normalize(hidden.float(), dim=-1) - unit_inputs.pop(i)).pow(2).sum(-1)
        totals[i] += 0.5 * float((gap * current["mask"].to(gap.device)).sum())  # (batch, seq)

    n_tokens = 0
    with _layer_io_hooks(parts, on_input, on_output):
        for _, tokens, mask in padded_batches(input_ids, max_tokens, parts.embed.weight.device):
            current["mask"] = mask
            parts.base(input_ids=tokens, attention_mask=mask, use_cache=False)
            n_tokens += int(mask.sum())
    return totals / n_tokens


@torch.inference_mode()
def angular_distances(
    parts: DecoderParts,
    input_ids: Sequence[Sequence[int]],
    block_size: int = 1,
    *,
    max_tokens: int = 8192,
) -> np.ndarray:
    """Angular distance across every block of ``n`` layers (Gromov et al. 2024, arXiv:2403.17887).

    ``d(x_l, x_{l+n}) = arccos(cos(x_l, x_{l+n})) / pi`` at the last token of each text,
    averaged over texts, where ``x_l`` is the input of layer ``l`` and ``x_{l+n}`` the output of
    layer ``l+n-1``. The angle is computed as ``2 atan2(|a - b|, |a + b|)`` on unit vectors
    (equal to ``arccos(cos)`` but exact at 0). Unlike the public PruneMe implementation, which
    reads ``output_hidden_states``, the last layer's output is taken before the final norm.

    Args:
        parts: the model's decoder parts (possibly a pruned view).
        input_ids: one token-id list per calibration text.
        block_size: ``n``, the number of consecutive layers removed together.
        max_tokens: padded tokens per forward batch.

    Returns:
        ``(n_layers - n + 1,)`` float64 array; entry ``l`` scores removing layers ``l..l+n-1``;
        low = removable.

    Raises:
        ValueError: If ``block_size`` is not in ``1..n_layers``.
    """
    n_layers = len(parts.layers)
    if not 1 <= block_size <= n_layers:
        raise ValueError(f"block_size must be in 1..{n_layers}, got {block_size}")
    inputs: list[torch.Tensor] = []  # per batch: (batch, n_layers, d_model) unit vectors
    outputs: list[torch.Tensor] = []
    batch: dict = {}  # the current batch's last positions and per-layer captures

    def last(hidden: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        unit = F.normalize(hidden[rows, batch["positions"].to(hidden.device)].double(), dim=-1)
        return unit.cpu()  # (batch, d_model)

    def on_input(i: int, hidden: torch.Tensor) -> None:
        batch["inputs"].append(last(hidden))

    def on_output(i: int, hidden: torch.Tensor) -> None:
        batch["outputs"].append(last(hidden))

    with _layer_io_hooks(parts, on_input, on_output):
        for _, tokens, mask in padded_batches(input_ids, max_tokens, parts.embed.weight.device):
            batch.update(positions=mask.sum(1) - 1, inputs=[], outputs=[])
            parts.base(input_ids=tokens, attention_mask=mask, use_cache=False)
            inputs.append(torch.stack(batch["inputs"], dim=1))
            outputs.append(torch.stack(batch["outputs"], dim=1))
    x_in = torch.cat(inputs)[:, : n_layers - block_size + 1]  # (n_texts, n_blocks, d_model)
    x_out = torch.cat(outputs)[:, block_size - 1 :]
    angle = 2 * torch.atan2((x_in - x_out).norm(dim=-1), (x_in + x_out).norm(dim=-1))
    return (angle / math.pi).mean(0).numpy()


def nll_sum(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of the real tokens of one padded batch (a 0-dim tensor)."""
    logits = model(input_ids=tokens, attention_mask=mask, use_cache=False).logits  # (b, s, V)
    targets = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # (batch, seq - 1)
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=-100,
        reduction="sum",
    )


def n_predicted(input_ids: Sequence[Sequence[int]]) -> int:
    """How many tokens the texts predict (every token after each text's first)."""
    n = sum(len(row) - 1 for row in input_ids if len(row) > 1)
    if n == 0:
        raise ValueError("the texts have no token to predict (every text is one token long)")
    return n


BACKWARD_BYTES = 2 * 1024**3
"""Activations one Taylor forward/backward batch may keep (see :func:`backward_tokens`)."""


def backward_tokens(model: nn.Module, parts: DecoderParts, budget: int = BACKWARD_BYTES) -> int:
    """Padded tokens per Taylor batch whose saved activations stay near ``budget`` bytes.

    Autograd keeps, per token, roughly 12 residual-width and 4 MLP-width vectors of every layer
    and 3 vocabulary-wide float32 vectors (the logits, their log-softmax and its gradient). With
    a large vocabulary those dominate, and at thousands of tokens per batch they outgrow a GPU
    that also holds the weights and their gradients; at this budget a 1.5B model with a
    150k-token vocabulary takes one text at a time.
    Capped at 4096; a text longer than the result still runs, alone.
    """
    width = d_model(model)
    mlp = getattr(model.config.get_text_config(), "intermediate_size", None) or 4 * width
    vocab, element = parts.embed.weight.shape[0], parts.embed.weight.element_size()
    per_token = len(parts.layers) * (12 * width + 4 * mlp) * element + 3 * vocab * 4
    return int(max(1, min(4096, budget // per_token)))


def taylor_importance(
    model: nn.Module,
    parts: DecoderParts,
    input_ids: Sequence[Sequence[int]],
    *,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Shortened LLaMA's Taylor block importance (Kim et al. 2024, arXiv:2402.02834).

    ``I_i = sum_{w in block i} |w * dL/dw|``, the first-order Taylor estimate of the loss change
    from zeroing each weight, summed over every parameter of layer ``i`` (weights, biases and
    norm scales), with ``L`` the mean next-token NLL of the calibration texts. The gradient is
    accumulated over all batches before the absolute value is taken. The "+" of Taylor+ (never
    removing the first four and last two blocks) is a selection rule left to the caller. The
    public reference implementation (Nota-NetsPresso/shortened-llm) sums only tensors named
    ``weight``; for Llama-like models, which have no biases, the two agree.

    The model should be in eval mode (dropout off). Only the layers' parameters require grad
    during the pass; every parameter's flag and ``.grad`` are restored afterwards, even on error.

    Args:
        model: the causal LM (or pruned view).
        parts: its decoder parts; ``parts.layers`` are the blocks scored.
        input_ids: one token-id list per calibration text.
        max_tokens: padded tokens per forward/backward batch (default
            :func:`backward_tokens`, bounding the activations autograd keeps).

    Returns:
        ``(n_layers,)`` float64 array; low = removable.
    """
    n_tokens = n_predicted(input_ids)
    max_tokens = max_tokens or backward_tokens(model, parts)
    blocks = [list(layer.parameters()) for layer in parts.layers]
    unique = {id(p): p for p in itertools.chain(model.parameters(), *blocks)}
    saved = [(p, p.requires_grad, p.grad) for p in unique.values()]
    try:
        for p, _, _ in saved:  # only the blocks get gradients, so nothing else is touched
            p.grad = None
            p.requires_grad_(False)
        for params in blocks:
            for p in params:
                p.requires_grad_(True)
        device = parts.embed.weight.device
        with torch.inference_mode(False), torch.enable_grad():
            for _, tokens, mask in padded_batches(input_ids, max_tokens, device):
                (nll_sum(model, tokens, mask) / n_tokens).backward()
        scores = [
            sum(
                float((p.detach().float() * p.grad.float()).abs().sum())
                for p in params
                if p.grad is not None
            )
            for params in blocks
        ]
    finally:
        for p, flag, grad in saved:
            p.requires_grad_(flag)
            p.grad = grad
    return np.asarray(scores, dtype=np.float64)


def _kl_to_mixture(logp: torch.Tensor, logm: torch.Tensor) -> torch.Tensor:
    """``KL(P || M)`` per row, with ``0 log 0 = 0``."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logm), 0.0).sum(-1)


def js_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence, in nats, between matching rows of two log-probability batches.

    ``JS(P, Q) = KL(P || M) / 2 + KL(Q || M) / 2`` with ``M = (P + Q) / 2``; symmetric, 0 iff
    ``P = Q``, at most ``ln 2``. FinerCut (Zhang et al. 2024, arXiv:2405.18218) scores a pruning
    candidate by this divergence of the pruned model's output distribution from the
    original's. Computed in float64; ``-inf`` entries (zero probability) are allowed.

    Args:
        logp: log-probabilities, shape ``(n, vocab)`` (or any ``(..., vocab)``).
        logq: log-probabilities of the same shape.

    Returns:
        float64 tensor of shape ``(n,)`` (the leading shape of the inputs).

    Raises:
        ValueError: If the shapes differ.
    """
    if logp.shape != logq.shape:
        raise ValueError(f"shapes differ: {tuple(logp.shape)} vs {tuple(logq.shape)}")
    logp, logq = logp.double(), logq.double()
    logm = torch.logaddexp(logp, logq) - math.log(2)
    js = 0.5 * (_kl_to_mixture(logp, logm) + _kl_to_mixture(logq, logm))
    return js.clamp_min(0.0)
