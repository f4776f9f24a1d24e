"""Strategies that score candidate removals by the decision readout of the calibration items.

For every remaining layer ``k`` the model without the removed layers and ``k`` answers the
calibration items (:func:`~phaseprune.engine.candidates.score_removals`: only the layers after ``k``
are recomputed), and the candidate is scored by ``--objective`` (:mod:`phaseprune.core.objectives`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from phaseprune.core.metrics import item_metrics
from phaseprune.core.objectives import best_candidate, candidate_metrics, objective_key
from phaseprune.core.phases import PhaseResult, detect_phases, tail_cut_index
from phaseprune.core.rounding import rounding_check
from phaseprune.engine import baselines
from phaseprune.engine.candidates import option_reduce, score_removals
from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.engine.rounding import measure_rounding, model_dtype
from phaseprune.model.surgery import kept_layers, without_layers
from phaseprune.strategies.context import (
    Choice,
    Criterion,
    PruneContext,
    heal_hook,
    item_subset,
    no_candidate,
    remaining,
    stored,
    stored_removals,
    unhealed,
)

OBJECTIVE_CRITERIA = {
    "accuracy": "calibration accuracy, ties by margin",
    "margin": "mean margin",
    "prob-margin": "mean probability margin",
    "kl": "minus option KL from the unpruned model",
}


def by_objective(ctx: PruneContext, removed: Sequence[int], candidates: list[int]) -> Choice:
    """Score each candidate removal by the objective on the calibration items; keep the best."""

    def score(todo, on_scored, items):
        ids, groups = item_subset(ctx.calib_ids, ctx.calib_groups, items)
        heal = heal_hook(ctx, removed, todo)
        return score_removals(
            ctx.model,
            removed,
            todo,
            ids,
            option_reduce(ctx.option_ids),
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
            progress=ctx.progress,
            groups=groups,
            on_scored=on_scored,
            heal=heal,
        )

    # each candidate kept in the score store (if any) once scored; the decision builders'
    # scan is step 1's: its candidates come back from the store
    scored = stored_removals(ctx, "candidates", removed, candidates, score, parts=ctx.calib_groups)
    logits = {k: v.numpy() for k, v in scored.items()}
    scores, keys = {}, {}
    for k, value in logits.items():
        metrics = candidate_metrics(value, ctx.calib_gold, ctx.ref_logits)
        keys[k] = objective_key(ctx.objective, metrics)
        # each calibration item's pick without k: paired intervals per removal (evidence)
        scores[k] = {**metrics, "score": keys[k][0], "picks": value.argmax(-1).tolist()}
    criterion = Criterion(OBJECTIVE_CRITERIA[ctx.objective], "max")
    return Choice((best_candidate(keys),), scores, criterion, logits=logits)


def start_rounding(ctx: PruneContext) -> None:
    """Set ``ctx.rounding``: the unpruned model's rounding error (None in float32)."""
    ctx.rounding = measure_rounding(
        ctx.model, ctx.calib_ids, ctx.option_ids, ctx.calib_groups, max_tokens=ctx.max_tokens
    )


def with_rounding(ctx: PruneContext, choice: Choice) -> Choice:
    """``choice`` with its rounding check in a half-precision run (float32: as it is).

    An objective-scored choice is checked against the best other candidate by the objective's
    key (:func:`~phaseprune.core.rounding.rounding_check`); a choice by another rule (a
    ranking, the Decisive tail, block influence) has no option logits to compare and says so
    with ``within_rounding`` None, as does a step with a single candidate.
    """
    if ctx.rounding is None:
        return choice
    dtype = str(model_dtype(ctx.model)).removeprefix("torch.")
    unchecked = dict.fromkeys(("score", "gap", "bound", "within_rounding"))
    record = {"dtype": dtype, "error": round(ctx.rounding, 6), **unchecked}
    chosen, logits = choice.layers[0], choice.logits or {}
    others = {k: objective_key(ctx.objective, choice.scores[k]) for k in logits if k != chosen}
    if others:
        runner = logits[best_candidate(others)]
        record |= rounding_check(
            ctx.objective,
            logits[chosen],
            runner,
            ctx.calib_gold,
            ctx.ref_logits,
            ctx.rounding,
        )
    return dataclasses.replace(choice, precision=record)


def iterative(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """The paper's Iterative Pruning: try every remaining layer, keep the best by the objective."""
    candidates = remaining(ctx, removed)
    if not candidates:
        raise no_candidate(removed)
    return by_objective(ctx, removed, candidates)


def calib_reader(ctx: PruneContext) -> IncrementalReadout:
    """The run's incremental readout of the calibration items (phases, the heal judge)."""
    if ctx.cache.calib_readout is None:  # kept across steps: each step recomputes the suffix
        ctx.cache.calib_readout = IncrementalReadout(
            ctx.model,
            ctx.calib_ids,
            ctx.option_ids,
            groups=ctx.calib_groups,  # each subject's few-shot prefix once
            max_tokens=ctx.max_tokens,
            cache_budget=ctx.cache_budget,
        )
    return ctx.cache.calib_readout


def _phases_of(ctx: PruneContext, logits) -> tuple[PhaseResult, float]:
    """Phases and last-readout mean margin of one all-layer calibration readout."""
    m = item_metrics(logits.numpy(), ctx.calib_gold)
    phases = detect_phases(
        m.correct, m.margin, len(ctx.option_ids), n_boot=ctx.n_boot, seed=ctx.seed
    )
    return phases, float(m.margin[:, -1].mean())


def calibration_readout(ctx: PruneContext, removed: Sequence[int]):
    """``(n_calib, n_readout, n_options)`` all-layer readout of the model without ``removed``."""
    return stored(ctx, "calib", removed, lambda: calib_reader(ctx)(removed))


def calibration_phases(ctx: PruneContext, removed: Sequence[int]) -> PhaseResult:
    """The phases of the model without ``removed``, on the calibration items."""
    return _phases_of(ctx, calibration_readout(ctx, removed))[0]


def decision_builders(ctx: PruneContext) -> list[int]:
    """The ``ctx.spare`` layers whose removal alone from the unpruned model scores worst.

    One scan of every layer on the calibration items by the objective (what an iterative step
    1 computes), done once per run and kept; protected layers are not scanned (never removed
    anyway). These are the layers that build the decision: removing one of them alone costs
    the most calibration accuracy or destroys the transition (docs/findings.md).
    """
    if ctx.cache.builders is None:
        free = [k for k in range(ctx.n_layers) if k not in ctx.protect]
        with unhealed(ctx):  # a resumed healed run holds its maps already
            scan = by_objective(ctx, (), free) if ctx.spare else None
        scores = {} if scan is None else scan.scores
        # the objective's whole key (accuracy ties go to the margin), worst first
        keys = {k: objective_key(ctx.objective, v) for k, v in scores.items()}
        worst = sorted(keys, key=lambda k: (keys[k], -k))
        ctx.cache.builders = sorted(worst[: ctx.spare])
        ctx.cache.builder_scan = {k: scores[k]["score"] for k in sorted(scores)}
    return ctx.cache.builders


DEPTH_SLACK = 0.15
"""``--after-decisive transition``: how far (as a share of the depth) the calibration
transition may move from the current model's relative depth and still count as kept."""
MARGIN_HELD = 0.5
"""``--after-decisive transition``: the share of the current model's last-readout mean
calibration margin a removal must keep."""
PROBES = 4
"""``--after-decisive transition``: how many of the objective's best candidates are checked
for the transition before the best is taken anyway (each check is one incremental readout)."""


def keeps_transition(ctx: PruneContext, removed: Sequence[int], k: int) -> dict:
    """Whether removing ``k`` keeps the calibration transition, and what was measured.

    Kept, against the current model (without ``removed``): a transition is still found; its
    relative depth (readout index over the number of layers) moves by at most
    :data:`DEPTH_SLACK`; and the last readout's mean margin keeps at least :data:`MARGIN_HELD`
    of the current one. (Against the unpruned model instead, nothing passes once the
    Decisive-Phase layers are gone: they carry much of the final margin.)
    """
    reader = calib_reader(ctx)
    now, now_margin = _phases_of(ctx, stored(ctx, "calib", removed, lambda: reader(removed)))
    probe = [*removed, k]
    phases, margin = _phases_of(ctx, stored(ctx, "calib", probe, lambda: reader.probe(probe)))
    t0, depth0 = now.transition_layer, now.n_readout - 1
    t, depth = phases.transition_layer, phases.n_readout - 1
    ok = t is not None and t0 is not None
    if ok:
        ok = abs(t / depth - t0 / depth0) <= DEPTH_SLACK and margin >= MARGIN_HELD * now_margin
    return {"layer": k, "transition_layer": t, "last_margin": round(margin, 4),
            "current_margin": round(now_margin, 4), "kept": bool(ok)}  # fmt: skip


def phase_aware(ctx: PruneContext, removed: Sequence[int]) -> Choice:
    """Remove Decisive-Phase layers first; phases re-estimated each step.

    Before every removal the phases of the current model are estimated on the calibration
    items. ``decisive`` says how Decisive-Phase layers go:

    - ``objective``: candidates are the decoder layers whose output lies in the Decisive Phase,
      except the transition layer itself (the layer writing the transition readout index), the
      ``guard`` layers before it, and the ``spare`` decision builders
      (:func:`decision_builders`); the best by the objective goes;
    - ``tail``: the tail after the best Decisive readout index is cut (:func:`tail_cut`); the
      Decisive layers before the cut stay.

    When no Decisive-Phase layer is eligible, ``after_decisive`` says what follows:

    - ``block-influence`` (the first version): the lowest block influence among the remaining
      layers;
    - ``objective``: the best by the objective among the remaining layers (builders spared);
    - ``transition``: as ``objective``, but the first of the :data:`PROBES` best whose removal
      keeps the calibration transition (:func:`keeps_transition`); if none does, or the model
      has no transition left to keep, the best.

    Every step's record says which rule chose (``note``) and what was checked.
    """
    readout = calibration_readout(ctx, removed)
    phases = _phases_of(ctx, readout)[0]
    kept = kept_layers(ctx.n_layers, removed)
    spared_builders = decision_builders(ctx) if ctx.spare else []
    free = set(remaining(ctx, removed)) - set(spared_builders)
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
    if ctx.spare:
        record["builders"] = spared_builders
        if not removed:  # the scan behind them, once
            record["builder_scan"] = {str(k): v for k, v in ctx.cache.builder_scan.items()}
    if t is not None and ctx.decisive == "tail":
        if cut := tail_cut(ctx, readout.numpy(), t, kept, record):
            return cut
        eligible = []  # the tail is cut: the Decisive layers before it carry the decision
    if eligible:
        choice = by_objective(ctx, removed, eligible)
        return dataclasses.replace(choice, calib_phases=record)
    why = "the model has no Decisive Phase" if t is None else "no Decisive-Phase layer is removable"
    if not free:
        raise no_candidate(removed)
    if ctx.after_decisive == "block-influence":
        return _block_influence_fallback(ctx, removed, kept, free, why, record)
    choice = by_objective(ctx, removed, sorted(free))
    note = f"after the Decisive Phase ({why}): the best by the objective"
    if ctx.after_decisive == "transition" and t is not None:
        return _keeping_transition(ctx, removed, choice, note, record)
    if ctx.after_decisive == "transition":  # every probe would fail: the objective's best
        note += "; the model has no transition to keep"
    return dataclasses.replace(choice, note=note, calib_phases=record)


def tail_cut(ctx: PruneContext, readout, t: int, kept: list[int], record: dict) -> Choice | None:
    """``--decisive tail``: remove the last layer while the best Decisive cut lies deeper.

    Removing the last ``n - r`` layers of a model leaves exactly its readout at index ``r``
    (the final norm and unembedding read the residual stream where the layers stop; this is
    what a logit lens reads, nostalgebraist 2020), so the calibration readout already measured
    for the phases scores every cut of the Decisive Phase's tail without a forward pass.

    The cut kept is the strongest decision that loses no calibration accuracy: among the
    Decisive readout indices (``t`` .. ``n``) whose calibration accuracy is at least the
    unpruned model's, the one with the largest mean margin, ties to the deeper cut; protected
    layers bound it. (Accuracy alone on a few dozen items moves by one item between readouts,
    so it ranks cuts by noise; the margin separates them.) Decision builders are not spared
    here: a layer that is costly to remove alone can be free to cut together with the layers
    that read it, so a cut is judged as a whole (docs/strategies.md).

    While the best cut lies before the last readout index, the last layer goes (one per step;
    the readouts before the cut and the unpruned accuracy do not change, so the next step finds
    the same cut). None once the model ends at the cut, or when no index keeps the accuracy.
    """
    n = readout.shape[1] - 1
    floor = max([t] + [p + 1 for p, k in enumerate(kept) if k in ctx.protect])
    bar = candidate_metrics(ctx.ref_logits, ctx.calib_gold, ctx.ref_logits)["accuracy"]
    every = [candidate_metrics(readout[:, r], ctx.calib_gold, ctx.ref_logits) for r in range(n + 1)]
    best = tail_cut_index([m["accuracy"] for m in every], [m["margin"] for m in every], bar, floor)
    metrics = {r: every[r] for r in range(min(floor, n), n + 1)}
    record["tail"] = {
        "accuracy": {str(r): m["accuracy"] for r, m in metrics.items()},
        "margin": {str(r): round(m["margin"], 6) for r, m in metrics.items()},
        "unpruned_accuracy": bar,
        "cut_at": best,
    }
    if best == n:
        return None
    last = kept[-1]
    m = metrics[n - 1]
    scores = {last: {**m, "score": m["margin"], "picks": readout[:, n - 1].argmax(-1).tolist()}}
    note = (
        f"Decisive tail: the readout at index {best} of {n} has the largest calibration margin "
        f"of those keeping the unpruned accuracy; the layers after it go, last first"
    )
    criterion = Criterion("calibration margin of the readout without the layer", "max")
    return Choice((last,), scores, criterion, note, record)


def _keeping_transition(ctx, removed, choice: Choice, note: str, record: dict) -> Choice:
    """``--after-decisive transition``: the objective's best that keeps the transition."""
    ranked = sorted(choice.scores, key=lambda k: (choice.scores[k]["score"], -k), reverse=True)
    checks = []
    for k in ranked[:PROBES]:
        checks.append(keeps_transition(ctx, removed, k))
        if checks[-1]["kept"]:
            break
    record["transition_checks"] = checks
    if checks[-1]["kept"]:
        layer = checks[-1]["layer"]
        note += " that keeps the calibration transition"
        if layer != ranked[0]:
            note += f" ({len(checks) - 1} better candidate(s) would lose it)"
        choice = dataclasses.replace(choice, layers=(layer,))
    else:
        note += f"; none of the best {len(checks)} keeps the calibration transition"
    return dataclasses.replace(choice, note=note, calib_phases=record)


def _block_influence_fallback(ctx, removed, kept, free, why, record) -> Choice:
    """The first version's rule after the Decisive Phase: the lowest block influence."""
    with without_layers(ctx.model, removed) as parts:
        bi = baselines.block_influence(parts, ctx.calib_ids, max_tokens=ctx.max_tokens)
    scores = {k: {"score": float(bi[p])} for p, k in enumerate(kept) if k in free}
    best = min(scores, key=lambda k: (scores[k]["score"], k))
    note = f"fallback: {why} on the calibration items; removed the lowest block-influence layer"
    criterion = Criterion("block influence of the current model", "min")
    return Choice((best,), scores, criterion, note, record)
