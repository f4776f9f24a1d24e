"""Test-only references: plain computations the package's optimised paths are checked against."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from phaseprune.engine.baselines import n_predicted, nll_sum, padded_batches
from phaseprune.model.arch import DecoderParts


@torch.inference_mode()
def text_nll(
    model: nn.Module,
    parts: DecoderParts,
    input_ids: Sequence[Sequence[int]],
    *,
    max_tokens: int = 8192,
) -> float:
    """Mean next-token negative log-likelihood over all predicted tokens of the texts.

    ``NLL = sum_texts sum_{t >= 1} -log p(x_t | x_<t) / sum_texts (len - 1)``: the quantity
    SLEB (Song et al. 2024, arXiv:2402.09025) and Shortened LLaMA's PPL criterion (Kim et al.
    2024, arXiv:2402.02834) minimise when choosing a block to remove; perplexity is
    ``exp(NLL)``. Uses the model's own logits (so softcaps etc. apply), one length-sorted batch
    of at most ``max_tokens`` padded tokens at a time; padding is never a target.

    Args:
        model: the causal LM (or pruned view) whose logits are scored.
        parts: its decoder parts (only the device is read).
        input_ids: one token-id list per calibration text.
        max_tokens: padded tokens per forward batch (bounds the ``(tokens, vocab)`` logits).

    Returns:
        The mean NLL in nats per predicted token.
    """
    n_tokens = n_predicted(input_ids)
    total = 0.0
    for _, tokens, mask in padded_batches(input_ids, max_tokens, parts.embed.weight.device):
        total += float(nll_sum(model, tokens, mask))
    return total / n_tokens


@torch.inference_mode()
def output_distributions(
    model: nn.Module,
    parts: DecoderParts,
    input_ids: Sequence[Sequence[int]],
    *,
    max_tokens: int = 8192,
) -> torch.Tensor:
    """Full-vocabulary log-probabilities at the last token of each text.

    The reference distribution for FinerCut-style divergence (Zhang et al. 2024,
    arXiv:2405.18218): ``log_softmax(model(text).logits[-1])`` per text.

    Args:
        model: the causal LM (or pruned view).
        parts: its decoder parts (only the device is read).
        input_ids: one token-id list per text.
        max_tokens: padded tokens per forward batch.

    Returns:
        ``(n_texts, vocab)`` float32 tensor on the CPU, in text order.
    """
    out: torch.Tensor | None = None
    for batch, tokens, mask in padded_batches(input_ids, max_tokens, parts.embed.weight.device):
        logits = model(input_ids=tokens, attention_mask=mask, use_cache=False).logits  # (b, s, V)
        rows = torch.arange(len(batch), device=logits.device)
        last = logits[rows, (mask.sum(1) - 1).to(logits.device)]  # (batch, vocab)
        logprobs = F.log_softmax(last.float(), dim=-1).cpu()
        if out is None:
            out = torch.empty(len(input_ids), logprobs.shape[-1])
        out[batch] = logprobs
    return out
