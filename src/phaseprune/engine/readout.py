"""The multiple-choice readout: every layer's residual stream read through the option rows.

For each item, the residual stream at the last prompt position is captured at the input of
decoder layer 0 (readout index 0: embeddings, with whatever the model adds there, e.g. GPT-2's
position embeddings or Gemma's scaling) and at the output of every decoder layer (index
``l`` = after ``l`` layers). Each capture goes straight through the model's final norm and
the unembedding rows of the option tokens (:meth:`DecoderParts.option_logits`), so neither
full-sequence hidden states nor full-vocabulary projections are ever kept or computed; the
base decoder is run without the LM head. The last index equals the model's own logits at
the option tokens (the HF ``output_hidden_states`` tuple would not do: its last entry is
already normalised).

Batches are built from length-sorted prompts with right padding: causal attention means a
prompt's last real token never sees the padding after it, and its position ids are the same
as unpadded, so batching does not change the readout beyond floating-point reassociation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from functools import partial

import torch

from phaseprune.core.progress import bar as progress_bar
from phaseprune.model.arch import DecoderParts, layer_input, layer_output
from phaseprune.model.distributed import item_shard, local_only


@contextmanager
def readout_hooks(parts: DecoderParts, option_ids: torch.Tensor, sink: list):
    """Hooks that append ``(batch, n_options)`` option logits per readout index to ``sink``.

    Yields a dict whose ``"positions"`` the caller sets, before each forward, to a ``(batch,)``
    LongTensor of last-token indices; after the forward, ``sink`` holds ``n_layers + 1``
    tensors in readout order. Hooks are removed in ``finally``.
    """
    state: dict = {"positions": None, "skip": False}

    def read(hidden: torch.Tensor) -> None:
        if state["skip"]:  # a shared-prefix pass: nothing to read there
            return
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, state["positions"].to(hidden.device)]  # (batch, d_model)
        sink.append(parts.option_logits(last, option_ids).float().cpu())

    def pre_hook(module, args, kwargs):
        read(layer_input(args, kwargs))

    def post_hook(module, args, output):
        read(layer_output(output))

    handles = [parts.layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [layer.register_forward_hook(post_hook) for layer in parts.layers]
    try:
        yield state
    finally:
        for handle in handles:
            handle.remove()


def length_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Group item indices by length so each padded batch holds at most ``max_tokens`` tokens."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # sorted ascending, so the newest item is the longest of the batch
        if current and ((len(current) + 1) * lengths[i] > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_batch(input_ids: Sequence[Sequence[int]], batch: Sequence[int]):
    """Right-padded ``(tokens, attention_mask, last_positions)`` of the items in ``batch``."""
    lengths = [len(input_ids[i]) for i in batch]
    width = max(lengths)
    tokens = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    for row, i in enumerate(batch):
        tokens[row, : lengths[row]] = torch.as_tensor(input_ids[i])
        mask[row, : lengths[row]] = 1
    return tokens, mask, torch.tensor(lengths) - 1


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by all rows, leaving each row one own token."""
    first = rows[0]
    n = min(len(r) for r in rows) - 1
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def _batches(parts, input_ids, groups, max_tokens, state):
    """Yield ``(item indices, run)``: ``run()`` does the forward whose hooks read that batch."""
    device = parts.embed.weight.device
    for group in groups or [range(len(input_ids))]:
        group = list(group)
        n_prefix = common_prefix([input_ids[i] for i in group]) if groups else 0
        cache = None
        if n_prefix:
            state["skip"] = True
            prefix = torch.tensor([list(input_ids[group[0]][:n_prefix])], device=device)
            cache = parts.base(input_ids=prefix, use_cache=True).cache
            state["skip"] = False
        own = [input_ids[i][n_prefix:] for i in group]
        for sub in length_batches([len(r) for r in own], max_tokens):
            tokens, mask, positions = pad_batch(own, sub)
            state["positions"] = positions
            yield [group[j] for j in sub], partial(_forward, parts, tokens, mask, cache, n_prefix)


def after_prefix(cache, n_prefix: int, mask: torch.Tensor) -> dict:
    """Base-call arguments for right-padded tokens that follow a shared prefix in ``cache``.

    The cache is copied and repeated per row, the mask covers prefix and tokens, and positions
    continue after the prefix.
    """
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(mask.shape[0])
    ones = torch.ones(mask.shape[0], n_prefix, dtype=mask.dtype, device=mask.device)
    positions = torch.arange(n_prefix, n_prefix + mask.shape[1], device=mask.device)
    return {
        "attention_mask": torch.cat([ones, mask], 1),
        "position_ids": positions.expand(mask.shape[0], -1),
        "cache": batch_cache,
        "use_cache": True,
    }


def _forward(parts, tokens, mask, cache, n_prefix: int) -> None:
    """One forward of right-padded tokens, after a shared prefix's KV cache when there is one."""
    device = parts.embed.weight.device
    tokens, mask = tokens.to(device), mask.to(device)
    if cache is None:
        parts.base(input_ids=tokens, attention_mask=mask, use_cache=False)
    else:
        parts.base(input_ids=tokens, **after_prefix(cache, n_prefix, mask))


@torch.inference_mode()
def read_options(
    parts: DecoderParts,
    input_ids: Sequence[Sequence[int]],
    option_ids: Sequence[int],
    *,
    max_tokens: int = 8192,
    progress: bool = True,
    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """Option logits of every item at every readout index.

    Args:
        parts: the model's decoder parts (:func:`phaseprune.model.arch.decoder_parts`).
        input_ids: one token-id list per item.
        option_ids: token id of each option.
        max_tokens: padded tokens per forward batch (memory bound).
        progress: show a progress bar with ETA.
        on_batch: called with ``(item indices, their (batch, n_layers + 1, n_options) logits)``
            after every batch, e.g. to persist partial results.
        groups: item indices whose prompts share a prefix (e.g. one few-shot subject each).
            Each group's common token prefix runs once, its KV cache is reused for every item,
            and only the items' own tokens are computed (:func:`common_prefix`).

    Returns:
        ``(n_items, n_layers + 1, n_options)`` float32 tensor on the CPU, in item order.
        Launched as several processes, each reads its shard of the items and every process
        gets all rows (:mod:`phaseprune.model.distributed`); ``on_batch`` sees this process's
        batches, by global item index.
    """
    if (shard := item_shard(input_ids, groups)) is not None:
        local = None
        if shard.items:

            def local_batch(batch, logits):
                on_batch([shard.items[j] for j in batch], logits)

            with local_only():
                local = read_options(
                    parts,
                    shard.take(input_ids),
                    option_ids,
                    max_tokens=max_tokens,
                    progress=progress,
                    groups=shard.groups,
                    on_batch=None if on_batch is None else local_batch,
                )
        return shard.gather(local)
    ids_t = torch.tensor(list(option_ids), device=parts.unembed.weight.device)
    n_readout = len(parts.layers) + 1
    out = torch.empty(len(input_ids), n_readout, len(option_ids))
    sink: list[torch.Tensor] = []
    bar = progress_bar(len(input_ids), "readout", enabled=progress)
    with readout_hooks(parts, ids_t, sink) as state:
        for batch, run in _batches(parts, input_ids, groups, max_tokens, state):
            sink.clear()
            run()
            if len(sink) != n_readout:
                raise RuntimeError(f"captured {len(sink)} readouts, expected {n_readout}")
            logits = torch.stack(sink, dim=1)  # (batch, n_readout, n_options)
            out[batch] = logits
            if on_batch is not None:
                on_batch(batch, logits)
            bar.update(len(batch))
    bar.close()
    return out
