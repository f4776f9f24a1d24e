"""What a strategy reads and returns, and the helpers every strategy shares.

Every strategy is a function ``(ctx, removed) -> Choice``: given the pruning context and the
original indices removed so far, it returns the layer(s) to remove at this step and the score
of every candidate it considered (written to ``candidates.parquet``), under a
:class:`Criterion` that says which way is better. One-shot strategies rank layers once on the
unpruned model (kept in :class:`StrategyCache`) and then walk down that ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from phaseprune.core.progress import stage
from phaseprune.engine.incremental import IncrementalReadout
from phaseprune.model.distributed import sharding
from phaseprune.model.surgery import kept_layers


@dataclass
class StrategyCache:
    """What a strategy computes once per run and reads at later steps."""

    rankings: dict[str, dict[int, float]] = field(default_factory=dict)
    """One-shot rankings on the unpruned model, by name (e.g. ``"angular-2"``): layer -> score."""
    calib_readout: IncrementalReadout | None = None
    """Phase-aware: the calibration items' all-layer readout, kept across steps so each step
    recomputes only the layers after the removed one."""
    builders: list[int] | None = None
    """Phase-aware with ``spare``: the decision builders spared, from one scan at the start."""
    builder_scan: dict[int, float] | None = None
    """Phase-aware with ``spare``: each layer's objective score removed alone (the scan)."""
    reference_logprobs: torch.Tensor | None = None
    """logit-js: ``(n_calib, vocab)`` last-token log-probabilities of the unpruned model."""
    heal_fits: dict = field(default_factory=dict)
    """``--heal-when search``: ``(removed, candidate) -> HealFit`` of the candidates scored
    healed, so the chosen one's map is not fitted twice."""


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
    spare: int = 0
    """Phase-aware: the decision builders spared (those scoring worst removed alone)."""
    decisive: str = "objective"
    """Phase-aware: how Decisive-Phase layers are chosen (see search.phase_aware)."""
    after_decisive: str = "block-influence"
    """Phase-aware: the rule once no Decisive-Phase layer is eligible (see search.phase_aware)."""
    block_size: int = 1
    """Angular: layers removed per step."""
    seed: int = 0
    """Seed of the random strategy."""
    order: tuple[int, ...] = ()
    """The ``order`` strategy's layers, in removal order."""
    n_boot: int = 1000
    """Bootstrap resamples for phase estimates."""
    max_tokens: int = 8192
    """Padded tokens per forward batch."""
    cache_budget: int | None = None
    """Bytes the cached layer inputs of candidate scoring may take (None: no limit)."""
    progress: bool = False
    """Show progress bars."""
    store: Any = None
    """``--score-cache``: a :class:`phaseprune.runs.score_store.ScoreStore` (a later layer, so not
    imported here), keeping logits of pruned models on disk by removed set."""
    rounding: float | None = None
    """A bfloat16 or float16 run: its rounding error measured at step 0
    (:func:`~phaseprune.engine.rounding.measure_rounding`); None in float32."""
    unhealed_store: Any = None
    """A healed run's store of unhealed values (keyed as an unhealed run's): see
    :func:`unhealed`."""
    heal: Any = None
    """``--heal linear``: the run's :class:`~phaseprune.engine.healing.LinearHealer`, whose
    current maps the model holds; None without healing."""
    heal_when: str = "after"
    """``search``: every candidate is scored with its own fitted map; ``after``: candidates are
    scored removed, and only the chosen one is healed."""
    cache: StrategyCache = field(default_factory=StrategyCache)
    """What strategies computed at earlier steps."""


@dataclass(frozen=True)
class Criterion:
    """What a candidate's ``score`` means and which way is better."""

    text: str
    """What the score is, e.g. ``"calibration accuracy, ties by margin"``."""
    better: Literal["max", "min"]
    """Whether a larger or a smaller score is better to remove."""

    def __str__(self) -> str:
        return f"{self.text} ({self.better})"


@dataclass(frozen=True)
class Choice:
    """What a strategy decided at one step."""

    layers: tuple[int, ...]
    """Original indices removed at this step (one, or a block for angular)."""
    scores: dict[int, dict]
    """Candidate (first layer of its block) -> {"score": float, other metrics...}."""
    criterion: Criterion
    """What ``score`` means and which way is better."""
    note: str | None = None
    """A fallback or other rule the user must know about."""
    calib_phases: dict | None = None
    """Phase-aware: the calibration phases the choice was based on."""
    logits: dict[int, np.ndarray] | None = None
    """Objective-scored strategies: each candidate's ``(n_calib, n_options)`` final option
    logits, for the rounding check of a half-precision run."""
    precision: dict | None = None
    """A bfloat16 or float16 run: whether the choice was within rounding of the runner-up
    (:func:`~phaseprune.core.rounding.rounding_check`); None in float32."""


@contextmanager
def unhealed(ctx: PruneContext) -> Iterator[None]:
    """Context: the model with its own weights (what is defined on the unpruned model).

    With ``--heal-when after`` what is computed meanwhile is what an unhealed run computes, so
    ``ctx.store`` is the unhealed runs' store (``ctx.unhealed_store``): a healed run reads an
    unhealed run's scans from a shared ``--score-cache``. In search mode the scans heal each
    candidate (phase-aware's decision builders, PPL's ranking), so the run's own store stays.
    """
    if ctx.heal is None:
        yield
        return
    store = ctx.store
    if ctx.heal_when != "search" and ctx.unhealed_store is not None:
        ctx.store = ctx.unhealed_store
    try:
        with ctx.heal.original():
            yield
    finally:
        ctx.store = store


def heal_fit_key(heal, removed: Sequence[int], k) -> tuple:
    """``ctx.cache.heal_fits``'s key of candidate ``k``'s map.

    The removed layers and the layers holding maps (the model its sources are read in), then k.
    """
    return (tuple(removed), heal.reweighted(), k)


def heal_hook(ctx: PruneContext, removed: Sequence[int], todo: Sequence[int]):
    """``score_removals``'s ``heal``: each candidate scored with its own map (search mode).

    None without healing or with ``--heal-when after``. The fits are kept in
    ``ctx.cache.heal_fits`` for the rest of the step: a scan in parts (the subjects of the
    calibration items) fits each candidate once, and the chosen one's map is folded in.
    """
    if ctx.heal is None or ctx.heal_when != "search" or not todo:
        return None
    keys = {k: heal_fit_key(ctx.heal, removed, k) for k in todo}
    missing = [k for k in todo if keys[k] not in ctx.cache.heal_fits]
    for k, fit in (ctx.heal.fit(removed, missing) if missing else {}).items():
        ctx.cache.heal_fits[keys[k]] = fit
    fits = {k: ctx.cache.heal_fits[keys[k]] for k in todo}

    def heal(k):
        return min(k, fits[k].site.layer), ctx.heal.trying(fits[k])

    return heal


def stored(ctx: PruneContext, kind: str, removed, compute, candidate: int | None = None):
    """``compute()``, or its value kept in ``ctx.store`` by an earlier run (see score_store)."""
    if ctx.store is None:
        return compute()
    return ctx.store.fetch(kind, removed, compute, candidate)


def stored_removals(ctx: PruneContext, kind: str, removed, candidates, score, parts=None) -> dict:
    """Every candidate's values without ``removed`` + {k}, from ``ctx.store`` where kept.

    The rest come from ``score(missing, on_scored, items)`` (a
    :func:`~phaseprune.engine.candidates.score_removals` call on the items ``items``, all of them if
    None; :func:`item_subset` takes them). Each fresh candidate is stored as soon as it is
    scored (``on_scored``), so a scan interrupted part-way keeps what it finished and the
    resumed run scores only the rest. ``parts`` (the calibration items' subject groups) scans
    one group after another and keeps each candidate's values on each group as they finish:
    the scan of grouped items finishes its candidates only at the last group, so without parts
    an interrupted step of a few-shot setting loses everything (tens of minutes a step for a
    1.5B model on a CPU). Each group runs exactly as inside the whole
    scan, so the values are the same. Without a store, ``score(candidates, None, None)``.
    """
    if ctx.store is None:
        return score(list(candidates), None, None)
    found = {k: ctx.store.lookup(kind, removed, k) for k in candidates}
    missing = [k for k, v in found.items() if v is None]
    if not missing:
        return found
    if parts is None or len(parts) < 2 or sharding():  # sharded: each process scores a share
        found.update(_kept_scan(ctx.store, kind, removed, missing, score, None))
        return found
    parts = [list(p) for p in parts]
    values: dict[int, list] = {k: [] for k in missing}
    for i, items in enumerate(parts):
        part = f"{kind}.parts/{i}"
        have = {k: ctx.store.lookup(part, removed, k) for k in missing}
        todo = [k for k, v in have.items() if v is None]
        if todo:
            with stage(f"part {i + 1}/{len(parts)}"):
                have.update(_kept_scan(ctx.store, part, removed, todo, score, items))
        for k in missing:
            values[k].append(have[k])
    order = torch.from_numpy(np.argsort(np.concatenate(parts), kind="stable"))
    for k in missing:
        found[k] = torch.cat(values[k])[order]  # rows back in item order
        ctx.store.save(kind, removed, found[k], k)
        for i in range(len(parts)):
            ctx.store.drop(f"{kind}.parts/{i}", removed, k)
    return found


def _kept_scan(store, kind: str, removed, todo, score, items) -> dict:
    """``score(todo, on_scored, items)``, each candidate stored (as ``kind``) once scored."""
    kept = set()

    def keep(k, values):
        store.save(kind, removed, values, k)
        kept.add(k)

    fresh = score(todo, keep, items)
    for k in todo:
        if k not in kept:  # launched as several processes: stored after the gather
            store.save(kind, removed, fresh[k], k)
    return fresh


def item_subset(ids: list, groups: list[list[int]] | None, items: list[int] | None):
    """``(ids, groups)`` restricted to ``items`` (indices into ``ids``), groups renumbered.

    Unchanged if ``items`` is None.
    """
    if items is None:
        return ids, groups
    where = {i: p for p, i in enumerate(items)}
    if groups is not None:
        groups = [g for g in ([where[i] for i in g if i in where] for g in groups) if g]
    return [ids[i] for i in items], groups


def remaining(ctx: PruneContext, removed: Sequence[int]) -> list[int]:
    """Remaining, unprotected layers that may be removed (never the last one standing)."""
    kept = kept_layers(ctx.n_layers, removed)
    free = [k for k in kept if k not in ctx.protect]
    return free if len(kept) > 1 else []


class NoCandidate(ValueError):
    """A step found nothing it may remove (every remaining layer protected, or one left)."""


def no_candidate(removed: Sequence[int]) -> NoCandidate:
    """The error of a step with nothing left to remove."""
    return NoCandidate(f"no removable layer left after removing {sorted(removed)} (see --protect)")


def walk(
    ctx: PruneContext, removed: Sequence[int], ranking: dict[int, float], criterion: Criterion
) -> Choice:
    """Remove the best-ranked remaining layer (ties: the lowest index)."""
    free = set(remaining(ctx, removed))
    if not free:
        raise no_candidate(removed)
    sign = 1 if criterion.better == "min" else -1
    best = min(free, key=lambda k: (sign * ranking[k], k))
    return Choice((best,), {k: {"score": ranking[k]} for k in sorted(free)}, criterion)


def one_shot(
    ctx: PruneContext, name: str, compute: Callable[[], dict[int, float]]
) -> dict[int, float]:
    """The ranking ``name``, computed on first use and kept for the run."""
    if name not in ctx.cache.rankings:
        with unhealed(ctx):  # a resumed healed run holds its maps already
            ctx.cache.rankings[name] = compute()
    return ctx.cache.rankings[name]


def runner_up(choice: Choice) -> dict:
    """The best candidate not chosen and how far behind it scored (near ties made visible).

    ``score_gap`` is signed in the criterion's better direction: positive when the chosen
    layer scored better, 0 for an exact tie (broken by the lowest original index), negative
    when a rule other than the score decided (phase-aware's restriction to Decisive layers).
    On a GPU in bfloat16 a gap within rounding noise is where two runs may choose differently.
    """
    chosen = choice.layers[0]
    others = {k: v["score"] for k, v in choice.scores.items() if k != chosen}
    if not others:
        return {"runner_up_layer": None, "runner_up_score": None, "score_gap": None}
    sign = 1.0 if choice.criterion.better == "max" else -1.0
    layer = max(others, key=lambda k: (sign * others[k], -k))
    gap = sign * (choice.scores[chosen]["score"] - others[layer])
    return {
        "runner_up_layer": int(layer),
        "runner_up_score": float(others[layer]),
        "score_gap": float(gap),
    }
