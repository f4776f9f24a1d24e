"""Which layer to remove next: Iterative Pruning, phase-aware pruning and the baselines.

Every strategy is a function ``(ctx, removed) -> Choice``: given the pruning context and the
original indices removed so far, it returns the layer(s) to remove at this step and the score
of every candidate it considered (written to ``candidates.parquet``). Candidate scores follow
one convention per strategy, stated in ``Choice.criterion``; one-shot strategies rank layers
once on the unpruned model and then walk down that ranking.

Calibration data. The hidden-state baselines (block influence, angular distance, phase-aware's
fallback) read the calibration prompts exactly as the model sees them when it answers, so
angular distance's "last token" is the answer position. The NLL baselines (SLEB, PPL, Taylor+)
read the calibration items as plain text: each prompt followed by its gold letter
(``prompt + " B"``), real task text available offline and disjoint from the evaluation items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from phaseprune import baselines
from phaseprune.candidates import final_readout, option_reduce, score_removals
from phaseprune.incremental import IncrementalReadout
from phaseprune.metrics import item_metrics
from phaseprune.objectives import best_candidate, candidate_metrics, objective_key
from phaseprune.phases import detect_phases
from phaseprune.surgery import kept_layers, without_layers


@dataclass
class PruneContext:
    """Everything a strategy may read; built once per run."""

    model: torch.nn.Module
    """The full (unpruned) causal LM; strategies only ever see views of it."""
    n_layers: int
    """Decoder layers of the unpruned model."""
    calib_ids: list[list[int]]
    """Calibration prompts as token ids."""
    calib_text_ids: list[list[int]]
    """Calibration prompts followed by their gold answer, as plain text for NLL baselines."""
    calib_gold: np.ndarray
    """Gold option index per calibration item."""
    option_ids: tuple[int, ...]
    """Token ids of the option letters."""
    ref_logits: np.ndarray
    """``(n_calib, n_options)`` option logits of the unpruned model (for ``kl``)."""
    calib_groups: list[list[int]] | None = None
    """Calibration items grouped by subject; each group's shared prompt prefix runs once."""
    objective: str = "accuracy"
    """Objective of iterative and phase-aware pruning."""
    protect: frozenset[int] = frozenset()
    """Original indices never removed."""
    guard: int = 1
    """Phase-aware: layers before the transition layer also spared."""
    block_size: int = 1
    """Angular: layers removed per step."""
    seed: int = 0
    """Seed of the random strategy."""
    n_boot: int = 1000
    """Bootstrap resamples for phase estimates."""
    max_tokens: int = 8192
    """Padded tokens per forward batch."""
    cache_budget: int | None = None
    """Bytes the cached layer inputs of candidate scoring may take (None: no limit)."""
    progress: bool = False
    """Show progress bars."""
    cache: dict = field(default_factory=dict)
    """One-shot rankings, computed on first use."""


@dataclass(frozen=True)
class Choice:
    """What a strategy decided at one step."""

    layers: tuple[int, ...]
    """Original indices removed at this step (one, or a block for angular)."""
    scores: dict[int, dict]
    """Candidate (first layer of its block) -> {"score": float, other metrics...}."""
    criterion: str
    """What ``score`` means and which way is better, e.g. "calibration accuracy (max)"."""
    note: str | None = None
    """A fallback or other rule the user must know about."""
    calib_phases: dict | None = None
    """Phase-aware: the calibration phases the choice was based on."""


def _remaining(ctx: PruneContext, removed: Sequence[int]) -> list[int]:
    """Remaining, unprotected layers that may be removed (never the last one standing)."""
    kept = kept_layers(ctx.n_layers, removed)
    free = [k for k in kept if k not in ctx.protect]
    return free if len(kept) > 1 else []


def _no_candidate(removed) -> ValueError:
    return ValueError(f"no removable layer left after removing {sorted(removed)} (see --protect)")


def _by_objective(
    ctx: PruneContext, removed: Sequence[int], candidates: list[int]
) -> dict[int, dict]:
    logits = score_removals(
        ctx.model,
        removed,
        candidates,
        ctx.calib_ids,
        option_reduce(ctx.option_ids),
        max_tokens=ctx.max_tokens,
        cache_budget=ctx.cache_budget,
        progress=ctx.progress,
        groups=ctx.calib_groups,
    )
    scores = {}
    for k, value in logits.items():
        metrics = candidate_metrics(value.numpy(), ctx.calib_gold, ctx.ref_logits)
        metrics["score"] = objective_key(ctx.objective, metrics)[0]
        metrics["key"] = objective_key(ctx.objective, metrics)
        scores[k] = metrics
    return scores


def _criterion(ctx: PruneContext) -> str:
    return {
        "accuracy": "calibration accuracy, ties by margin (max)",
        "margin": "mean margin (max)",
        "prob-margin": "mean probability margin (max)",
        "kl": "minus option KL from the unpruned model (max)",
    }[ctx.objective]


def iterative(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """The paper's Iterative Pruning: try every remaining layer, keep the best by the objective."""
    candidates = _remaining(ctx, removed)
    if not candidates:
        raise _no_candidate(removed)
    scores = _by_objective(ctx, removed, candidates)
    best = best_candidate({k: v.pop("key") for k, v in scores.items()})
    return Choice((best,), scores, _criterion(ctx))


def _calib_phases(ctx: PruneContext, removed: Sequence[int]):
    if "calib_readout" not in ctx.cache:  # kept across steps: each step recomputes only the suffix
        ctx.cache["calib_readout"] = IncrementalReadout(
            ctx.model,
            ctx.calib_ids,
            ctx.option_ids,
            groups=ctx.calib_groups,  # each subject's few-shot prefix once
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
        )
    logits = ctx.cache["calib_readout"](removed).numpy()
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
    phases = _calib_phases(ctx, removed)
    kept = kept_layers(ctx.n_layers, removed)
    free = set(_remaining(ctx, removed))
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
        scores = _by_objective(ctx, removed, eligible)
        best = best_candidate({k: v.pop("key") for k, v in scores.items()})
        return Choice((best,), scores, _criterion(ctx), calib_phases=record)
    why = "the model has no Decisive Phase" if t is None else "no Decisive-Phase layer is removable"
    if not free:
        raise _no_candidate(removed)
    with without_layers(ctx.model, removed) as parts:
        bi = baselines.block_influence(parts, ctx.calib_ids, max_tokens=ctx.max_tokens)
    scores = {k: {"score": float(bi[p])} for p, k in enumerate(kept) if k in free}
    best = min(scores, key=lambda k: (scores[k]["score"], k))
    note = f"fallback: {why} on the calibration items; removed the lowest block-influence layer"
    return Choice((best,), scores, "block influence of the current model (min)", note, record)


def _walk(
    ctx: PruneContext,
    removed: Sequence[int],
    ranking: dict[int, float],
    criterion: str,
    *,
    lower_is_better: bool = True,
) -> Choice:
    free = set(_remaining(ctx, removed))
    if not free:
        raise _no_candidate(removed)
    sign = 1 if lower_is_better else -1
    best = min(free, key=lambda k: (sign * ranking[k], k))
    return Choice((best,), {k: {"score": ranking[k]} for k in sorted(free)}, criterion)


def _one_shot(
    ctx: PruneContext, name: str, compute: Callable[[], dict[int, float]]
) -> dict[int, float]:
    if name not in ctx.cache:
        ctx.cache[name] = compute()
    return ctx.cache[name]


def block_influence(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """ShortGPT: one-shot order by Block Influence on the unpruned model (lowest first)."""

    def compute():
        with without_layers(ctx.model, ()) as parts:
            bi = baselines.block_influence(parts, ctx.calib_ids, max_tokens=ctx.max_tokens)
        return {k: float(v) for k, v in enumerate(bi)}

    ranking = _one_shot(ctx, "block-influence", compute)
    return _walk(
        ctx, removed, ranking, "block influence 1 - cos(in, out) on the unpruned model (min)"
    )


def angular(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Gromov et al.: blocks of ``block_size`` ranked once by angular distance (lowest first)."""
    n = ctx.block_size

    def compute():
        with without_layers(ctx.model, ()) as parts:
            d = baselines.angular_distances(parts, ctx.calib_ids, n, max_tokens=ctx.max_tokens)
        return {k: float(v) for k, v in enumerate(d)}

    ranking = _one_shot(ctx, f"angular-{n}", compute)
    free = set(_remaining(ctx, removed))
    blocks = {s: v for s, v in ranking.items() if all(s + j in free for j in range(n))}
    if not blocks or len(kept_layers(ctx.n_layers, removed)) <= n:
        raise _no_candidate(removed)
    best = min(blocks, key=lambda s: (blocks[s], s))
    scores = {s: {"score": v} for s, v in sorted(blocks.items())}
    crit = f"angular distance arccos(cos(x_l, x_l+{n}))/pi on the unpruned model (min)"
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


def _iterative_scores(ctx, removed, input_ids, reduce, score, groups=None) -> dict[int, float]:
    """Score "current model minus k" for every removable k with ``score(reduced values)``."""
    candidates = _remaining(ctx, removed)
    if not candidates:
        raise _no_candidate(removed)
    values = score_removals(
        ctx.model,
        removed,
        candidates,
        input_ids,
        reduce,
        max_tokens=ctx.max_tokens,
        cache_budget=ctx.cache_budget,
        progress=ctx.progress,
        groups=groups,
    )
    return {k: score(v) for k, v in values.items()}


def sleb(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """SLEB: iteratively remove the layer whose removal gives the lowest calibration NLL."""
    ranking = _iterative_scores(ctx, removed, ctx.calib_text_ids, _nll_reduce, _mean_nll)
    return _walk(ctx, removed, ranking, "calibration NLL per token without the layer (min)")


def ppl(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Shortened LLaMA PPL: one-shot, perplexity with each layer removed alone (lowest first)."""

    def compute():
        values = score_removals(
            ctx.model,
            (),
            list(range(ctx.n_layers)),
            ctx.calib_text_ids,
            _nll_reduce,
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
            progress=ctx.progress,
        )
        return {k: float(np.exp(_mean_nll(v))) for k, v in values.items()}

    ranking = _one_shot(ctx, "ppl", compute)
    return _walk(ctx, removed, ranking, "calibration perplexity with the layer removed alone (min)")


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

    ranking = _one_shot(ctx, "taylor", compute)
    return _walk(
        ctx, removed, ranking, "Taylor importance sum |w * grad| (min; Taylor+ spares ends)"
    )


def _logprob_reduce(parts, hidden, positions, tokens, mask) -> torch.Tensor:
    last = hidden[torch.arange(hidden.shape[0]), positions.to(hidden.device)]
    return torch.log_softmax(parts.logits(last).float(), dim=-1).cpu()


def logit_js(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """FinerCut at block granularity: keep the output distribution closest to the unpruned one.

    Iteratively removes the layer whose removal gives the smallest mean Jensen-Shannon
    divergence of the last-token full-vocabulary distribution from the unpruned model's.
    """
    if "logit-js-ref" not in ctx.cache:
        ctx.cache["logit-js-ref"] = final_readout(
            ctx.model,
            (),
            ctx.calib_ids,
            _logprob_reduce,
            max_tokens=ctx.max_tokens,
            groups=ctx.calib_groups,
        )
    ref = ctx.cache["logit-js-ref"]
    ranking = _iterative_scores(
        ctx,
        removed,
        ctx.calib_ids,
        _logprob_reduce,
        lambda v: float(baselines.js_divergence(ref, v).mean()),
        groups=ctx.calib_groups,  # reads the last position only, so prefixes can be shared
    )
    return _walk(ctx, removed, ranking, "JS divergence from the unpruned output distribution (min)")


def last(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Drop the final layers before the last one: L-2, L-3, ..., then the last itself."""
    ranking = {
        k: float(ctx.n_layers - 2 - k if k < ctx.n_layers - 1 else ctx.n_layers)
        for k in range(ctx.n_layers)
    }
    return _walk(ctx, removed, ranking, "distance below layer L-2 (min)")


def random(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """A seeded random order, fixed once per run."""
    order = np.random.default_rng(ctx.seed).permutation(ctx.n_layers)
    ranking = {int(k): float(rank) for rank, k in enumerate(order)}
    return _walk(ctx, removed, ranking, f"position in a random order (seed {ctx.seed}) (min)")


STRATEGIES: dict[str, Callable[[PruneContext, Sequence[int]], Choice]] = {
    "iterative": iterative,
    "phase-aware": phase_aware,
    "block-influence": block_influence,
    "angular": angular,
    "sleb": sleb,
    "ppl": ppl,
    "taylor": taylor,
    "logit-js": logit_js,
    "last": last,
    "random": random,
}
