"""The baselines: layers ranked by a published criterion, one-shot or re-scored every step.

Calibration data. The hidden-state baselines (block influence, angular distance) read the
calibration prompts exactly as the model sees them when it answers, so angular distance's
"last token" is the answer position. The NLL baselines (SLEB, PPL, Taylor+) read the
calibration items as plain text: each prompt followed by its gold letter (``prompt + " B"``),
real task text available offline and disjoint from the evaluation items. The formulas are in
:mod:`phaseprune.engine.baselines`, with the papers they come from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from phaseprune.core.errors import UsageError
from phaseprune.engine import baselines
from phaseprune.engine.candidates import final_readout, score_removals
from phaseprune.model.distributed import local_only
from phaseprune.model.surgery import kept_layers, without_layers
from phaseprune.strategies.context import (
    Choice,
    Criterion,
    PruneContext,
    heal_hook,
    item_subset,
    no_candidate,
    one_shot,
    remaining,
    stored_removals,
    unhealed,
    walk,
)


def block_influence(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """ShortGPT: one-shot order by Block Influence on the unpruned model (lowest first)."""

    def compute():
        with without_layers(ctx.model, ()) as parts:
            bi = baselines.block_influence(parts, ctx.calib_ids, max_tokens=ctx.max_tokens)
        return {k: float(v) for k, v in enumerate(bi)}

    ranking = one_shot(ctx, "block-influence", compute)
    criterion = Criterion("block influence 1 - cos(in, out) on the unpruned model", "min")
    return walk(ctx, removed, ranking, criterion)


def angular(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Gromov et al.: blocks of ``block_size`` ranked once by angular distance (lowest first)."""
    n = ctx.block_size

    def compute():
        with without_layers(ctx.model, ()) as parts:
            d = baselines.angular_distances(parts, ctx.calib_ids, n, max_tokens=ctx.max_tokens)
        return {k: float(v) for k, v in enumerate(d)}

    ranking = one_shot(ctx, f"angular-{n}", compute)
    free = set(remaining(ctx, removed))
    blocks = {s: v for s, v in ranking.items() if all(s + j in free for j in range(n))}
    if not blocks or len(kept_layers(ctx.n_layers, removed)) <= n:
        raise no_candidate(removed)
    best = min(blocks, key=lambda s: (blocks[s], s))
    scores = {s: {"score": v} for s, v in sorted(blocks.items())}
    crit = Criterion(f"angular distance arccos(cos(x_l, x_l+{n}))/pi on the unpruned model", "min")
    return Choice(tuple(range(best, best + n)), scores, crit)


def _nll_reduce(parts, hidden, positions, tokens, mask) -> torch.Tensor:
    """Per text: (sum of next-token NLL, tokens predicted), one text at a time to bound memory."""
    rows = []
    for b in range(hidden.shape[0]):
        n = int(mask[b].sum())
        logits = parts.logits(hidden[b, : n - 1]).float()
        nll = torch.nn.functional.cross_entropy(logits, tokens[b, 1:n], reduction="sum")
        rows.append(torch.stack([nll.cpu(), torch.tensor(float(n - 1))]))
    return torch.stack(rows)


def _mean_nll(values: torch.Tensor) -> float:
    return float(values[:, 0].sum() / values[:, 1].sum())


def _scan(ctx, removed, todo, input_ids, reduce, on_scored, groups=None) -> dict:
    """:func:`~phaseprune.engine.candidates.score_removals` with the run's batch and memory.

    Each candidate is healed with ``--heal-when search``.
    """
    return score_removals(
        ctx.model,
        removed,
        todo,
        input_ids,
        reduce,
        max_tokens=ctx.max_tokens,
        cache_budget=ctx.cache_budget,
        progress=ctx.progress,
        groups=groups,
        on_scored=on_scored,
        heal=heal_hook(ctx, removed, todo),
    )


def _removal_nll(ctx, removed, candidates) -> dict:
    """Calibration-text NLL of "current model minus k" for every candidate ``k``.

    Kept in the score store (kind ``nll``) candidate by candidate, like the option logits.
    """
    if not candidates:
        raise no_candidate(removed)

    def score(todo, keep, items):
        ids, _ = item_subset(ctx.calib_text_ids, None, items)
        return _scan(ctx, removed, todo, ids, _nll_reduce, keep)

    return stored_removals(ctx, "nll", removed, candidates, score)


def sleb(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """SLEB: iteratively remove the layer whose removal gives the lowest calibration NLL."""
    values = _removal_nll(ctx, removed, remaining(ctx, removed))
    ranking = {k: _mean_nll(v) for k, v in values.items()}
    criterion = Criterion("calibration NLL per token without the layer", "min")
    return walk(ctx, removed, ranking, criterion)


def ppl(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Shortened LLaMA PPL: one-shot, perplexity with each layer removed alone (lowest first)."""

    def compute():
        every = list(range(ctx.n_layers))
        values = _removal_nll(ctx, (), every)
        return {k: float(np.exp(_mean_nll(v))) for k, v in values.items()}

    ranking = one_shot(ctx, "ppl", compute)
    criterion = Criterion("calibration perplexity with the layer removed alone", "min")
    return walk(ctx, removed, ranking, criterion)


def taylor(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Shortened LLaMA Taylor+: one-shot, sum |w * dL/dw| per block (lowest first).

    The "+" rule of Kim et al. spares the first four and the last two blocks (fewer on models
    too shallow for that); those get an infinite score.
    """

    def compute():
        with without_layers(ctx.model, ()) as parts:
            imp = baselines.taylor_importance(ctx.model, parts, ctx.calib_text_ids)
        first, last = min(4, ctx.n_layers // 4), min(2, ctx.n_layers // 8)
        spared = set(range(first)) | set(range(ctx.n_layers - last, ctx.n_layers))
        return {k: (float("inf") if k in spared else float(v)) for k, v in enumerate(imp)}

    ranking = one_shot(ctx, "taylor", compute)
    criterion = Criterion("Taylor importance sum |w * grad|, Taylor+ spares the ends", "min")
    return walk(ctx, removed, ranking, criterion)


def _logprob_reduce(parts, hidden, positions, tokens, mask) -> torch.Tensor:
    last = hidden[torch.arange(hidden.shape[0]), positions.to(hidden.device)]
    return torch.log_softmax(parts.logits(last).float(), dim=-1).cpu()


def logit_js(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """FinerCut at block granularity: keep the output distribution closest to the unpruned one.

    Iteratively removes the layer whose removal gives the smallest mean Jensen-Shannon
    divergence of the last-token full-vocabulary distribution from the unpruned model's.
    Launched as several processes, every process scores every item: full-vocabulary rows are
    too large to gather.
    """
    with local_only():
        return _logit_js(ctx, removed)


def _logit_js(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    if ctx.cache.reference_logprobs is None:
        with unhealed(ctx):
            ctx.cache.reference_logprobs = final_readout(
                ctx.model,
                (),
                ctx.calib_ids,
                _logprob_reduce,
                max_tokens=ctx.max_tokens,
                groups=ctx.calib_groups,
            )
    ref = ctx.cache.reference_logprobs
    candidates = remaining(ctx, removed)
    if not candidates:
        raise no_candidate(removed)

    def score(todo, keep, items):
        # each item's divergence is what is kept (float64), not the vocabulary-wide log-probs
        ids, groups = item_subset(ctx.calib_ids, ctx.calib_groups, items)
        reference = ref if items is None else ref[items]
        js = {}

        def done(k, logprobs):
            js[k] = baselines.js_divergence(reference, logprobs)
            if keep is not None:
                keep(k, js[k])

        # reads the last position only, so prefixes can be shared; with several processes
        # on_scored is not called and the divergences are taken after the gather
        values = _scan(ctx, removed, todo, ids, _logprob_reduce, done, groups)
        return {
            k: js[k] if k in js else baselines.js_divergence(reference, v)
            for k, v in values.items()
        }

    values = stored_removals(ctx, "js", removed, candidates, score, parts=ctx.calib_groups)
    ranking = {k: float(v.mean()) for k, v in values.items()}
    criterion = Criterion("JS divergence from the unpruned output distribution", "min")
    return walk(ctx, removed, ranking, criterion)


def last(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Drop the final layers before the last one: L-2, L-3, ..., then the last itself."""
    ranking = {
        k: float(ctx.n_layers - 2 - k if k < ctx.n_layers - 1 else ctx.n_layers)
        for k in range(ctx.n_layers)
    }
    return walk(ctx, removed, ranking, Criterion("distance below layer L-2", "min"))


def random(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """A seeded random order, fixed once per run."""
    order = np.random.default_rng(ctx.seed).permutation(ctx.n_layers)
    ranking = {int(k): float(rank) for rank, k in enumerate(order)}
    return walk(
        ctx, removed, ranking, Criterion(f"position in a random order (seed {ctx.seed})", "min")
    )


def given(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """``--order``: the next listed layer not yet removed (its score is its position)."""
    gone = set(removed)
    left = [k for k in ctx.order if k not in gone]
    if not left:
        raise no_candidate(removed)
    ranking = {k: float(i) for i, k in enumerate(left)}
    return Choice((left[0],), {k: {"score": ranking[k]} for k in sorted(left)},
                  Criterion("position in --order", "min"))  # fmt: skip


def check_order(strategy: str, order, steps: int, protect, n_layers: int | None = None) -> None:
    """Refuse an ``--order`` that ``--strategy order`` cannot follow, in one line."""
    if (strategy == "order") != bool(order):
        raise UsageError(
            "--order lists the layers --strategy order removes: give both or neither"
            if order
            else "--strategy order needs --order L1,L2,... (the layers to remove, in order)"
        )
    if len(set(order)) < len(order):
        raise UsageError(f"--order {list(order)} names a layer twice")
    if set(order) & set(protect):
        raise UsageError(f"--order names protected layers {sorted(set(order) & set(protect))}")
    if order and steps > len(order):
        raise UsageError(f"--steps {steps} but --order lists {len(order)} layers: pass "
                         f"--steps {len(order)} or list more")  # fmt: skip
    if n_layers is not None and (max(order, default=0) >= n_layers or len(order) >= n_layers):
        raise UsageError(f"--order {list(order)}: layers are 0..{n_layers - 1}, and one must stay")
