"""Strategies that score candidate removals by the decision readout of the calibration items.

For every remaining layer ``k`` the model without the removed layers and ``k`` answers the
calibration items (:func:`~phaseprune.candidates.score_removals`: only the layers after ``k``
are recomputed), and the candidate is scored by ``--objective`` (:mod:`phaseprune.objectives`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phaseprune import baselines
from phaseprune.candidates import option_reduce, score_removals
from phaseprune.incremental import IncrementalReadout
from phaseprune.metrics import item_metrics
from phaseprune.objectives import best_candidate, candidate_metrics, objective_key
from phaseprune.phases import PhaseResult, detect_phases
from phaseprune.precision import score_removals_fast
from phaseprune.strategies.context import (
    Choice,
    Criterion,
    PruneContext,
    no_candidate,
    remaining,
)
from phaseprune.surgery import kept_layers, without_layers

OBJECTIVE_CRITERIA = {
    "accuracy": "calibration accuracy, ties by margin",
    "margin": "mean margin",
    "prob-margin": "mean probability margin",
    "kl": "minus option KL from the unpruned model",
}


def by_objective(ctx: PruneContext, removed: Sequence[int], candidates: list[int]) -> Choice:
    """Score each candidate removal by the objective on the calibration items; keep the best.

    With ``ctx.fast`` the candidates run in bfloat16 and float32 re-scores whatever could
    change the choice (:func:`~phaseprune.precision.score_removals_fast`).
    """

    def score(model, removed, candidates, ids, groups):
        return score_removals(
            model,
            removed,
            candidates,
            ids,
            option_reduce(ctx.option_ids),
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
            progress=ctx.progress,
            groups=groups,
        )

    if ctx.fast is None:
        logits = score(ctx.model, removed, candidates, ctx.calib_ids, ctx.calib_groups)
    else:
        logits = score_removals_fast(
            score,
            ctx.model,
            ctx.fast,
            removed,
            candidates,
            ctx.calib_ids,
            ctx.calib_groups,
            objective=ctx.objective,
            gold=ctx.calib_gold,
            ref_logits=ctx.ref_logits,
        )
    scores, keys = {}, {}
    for k, value in logits.items():
        metrics = candidate_metrics(value.numpy(), ctx.calib_gold, ctx.ref_logits)
        keys[k] = objective_key(ctx.objective, metrics)
        scores[k] = {**metrics, "score": keys[k][0]}
    criterion = Criterion(OBJECTIVE_CRITERIA[ctx.objective], "max")
    precision = None if ctx.fast is None else ctx.fast.record()
    return Choice((best_candidate(keys),), scores, criterion, precision=precision)


def iterative(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """The paper's Iterative Pruning: try every remaining layer, keep the best by the objective."""
    candidates = remaining(ctx, removed)
    if not candidates:
        raise no_candidate(removed)
    return by_objective(ctx, removed, candidates)


def calibration_phases(ctx: PruneContext, removed: Sequence[int]) -> PhaseResult:
    """The phases of the model without ``removed``, on the calibration items."""
    if ctx.cache.calib_readout is None:  # kept across steps: each step recomputes the suffix
        ctx.cache.calib_readout = IncrementalReadout(
            ctx.model,
            ctx.calib_ids,
            ctx.option_ids,
            groups=ctx.calib_groups,  # each subject's few-shot prefix once
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
        )
    logits = ctx.cache.calib_readout(removed).numpy()
    m = item_metrics(logits, ctx.calib_gold)
    return detect_phases(m.correct, m.margin, len(ctx.option_ids), n_boot=ctx.n_boot, seed=ctx.seed)


def phase_aware(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Remove only Decisive-Phase layers, chosen by the objective; phases re-estimated each step.

    Before every removal the phases of the current model are estimated on the calibration
    items. Candidates are the decoder layers whose output lies in the Decisive Phase, except
    the transition layer itself (the layer writing the transition readout index) and the
    ``guard`` layers before it. If the model has no Decisive Phase, or no eligible layer, the
    step falls back to the lowest block influence among the remaining layers and says so.
    """
    phases = calibration_phases(ctx, removed)
    kept = kept_layers(ctx.n_layers, removed)
    free = set(remaining(ctx, removed))
    t = phases.transition_layer
    record = {
        "transition_layer": t,
        "transition_ci": phases.transition_ci,
        "p_no_transition": phases.p_no_transition,
    }
    eligible = [] if t is None else [k for p, k in enumerate(kept) if p + 1 > t and k in free]
    spared = (
        [] if t is None else [kept[p] for p in range(max(0, t - 1 - ctx.guard), t) if p < len(kept)]
    )
    record["spared"] = spared
    if eligible:
        choice = by_objective(ctx, removed, eligible)
        return dataclasses.replace(choice, calib_phases=record)
    why = "the model has no Decisive Phase" if t is None else "no Decisive-Phase layer is removable"
    if not free:
        raise no_candidate(removed)
    with without_layers(ctx.model, removed) as parts:
        bi = baselines.block_influence(parts, ctx.calib_ids, max_tokens=ctx.max_tokens)
    scores = {k: {"score": float(bi[p])} for p, k in enumerate(kept) if k in free}
    best = min(scores, key=lambda k: (scores[k]["score"], k))
    note = f"fallback: {why} on the calibration items; removed the lowest block-influence layer"
    criterion = Criterion("block influence of the current model", "min")
    return Choice((best,), scores, criterion, note, record)
