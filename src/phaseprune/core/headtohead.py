"""Strategies against each other on the same evaluation items: depth, area, paired statistics.

Pure functions of pruning trajectories made on the same model and the same evaluation items
(runs made since each readout keeps every item's pick: ``eval_picks``, ``eval_gold``). For each
run, its accuracy at each depth (layers removed) as a share of the unpruned accuracy is its
**retained accuracy**; from it:

- the **retention depth** at a share ``s`` (0.9, 0.8): the deepest ``k`` at which the retained
  accuracy is at least ``s`` at every depth ``k' <= k`` (a strategy that dips and recovers is
  held to its dip);
- the **area** under the retained-accuracy curve from 0 to a common depth ``K`` (trapezoid,
  divided by ``K``: 1.0 is "no loss at any depth");
- the **collapse step**, as the run stored it (:mod:`phaseprune.core.collapse`).

For a pair of runs, at each depth, the **paired difference** in accuracy with a percentile
bootstrap interval that resamples the items (the same resample for both runs, so their
per-item agreement is kept: scipy.stats.bootstrap with ``paired=True``), and **McNemar's
exact test** (the two-sided binomial test on the discordant items, scipy.stats.binomtest) at
the first depth where either falls below 90% retained. See Dietterich (1998), "Approximate
statistical tests for comparing supervised classification learning algorithms", for why
paired tests on the same items are the right comparison of two classifiers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from phaseprune.core.errors import UsageError
from phaseprune.core.thresholds import below

NOT_BASELINES = ("phase-aware", "iterative")
"""Strategies that are not baselines in claim (d): phase-aware (the claim's subject, and its
variants) and the paper's Iterative Pruning (a greedy search, not a published baseline)."""

SHARES = (0.9, 0.8)
"""Retention shares reported: the deepest depth keeping 90% and 80% of the unpruned accuracy."""


@dataclass(frozen=True)
class Curve:
    """One run's evaluation accuracy by depth, with each item's outcome where recorded."""

    label: str
    strategy: str
    depths: tuple[int, ...]
    """Layers removed at each readout: 0 (unpruned), then after each step."""
    accuracy: tuple[float, ...]
    correct: np.ndarray | None
    """``(n_depths, n_items)`` bool, or None for runs made before items were kept."""
    collapse_step: int | None
    collapse_depth: int | None
    """Layers removed at the collapse step (None: no collapse within the run)."""
    complete: bool

    @property
    def base(self) -> float:
        """The unpruned accuracy."""
        return self.accuracy[0]

    def at(self, depth: int) -> int | None:
        """Index of ``depth`` in the curve (None: the run has no readout at that depth)."""
        return self.depths.index(depth) if depth in self.depths else None

    def retained(self) -> np.ndarray:
        """Accuracy at each depth as a share of the unpruned accuracy."""
        return np.asarray(self.accuracy) / self.base if self.base else np.zeros(len(self.depths))


def curve(traj: Mapping, label: str | None = None) -> Curve:
    """The :class:`Curve` of a pruning trajectory."""
    steps = traj["steps"]
    readouts = [traj["step0"], *steps]
    depths = (0, *(len(s["removed_so_far"]) for s in steps))
    correct = None
    gold = traj.get("eval_gold")
    if gold is not None and all("eval_picks" in r for r in readouts):
        correct = np.array([r["eval_picks"] for r in readouts]) == np.asarray(gold)[None, :]
    c = traj.get("collapse") or {}
    step = c.get("step")
    return Curve(
        label=label or traj["strategy"],
        strategy=traj["strategy"],
        depths=depths,
        accuracy=tuple(r["eval_accuracy"] for r in readouts),
        correct=correct,
        collapse_step=step,
        collapse_depth=depths[step] if step is not None and step < len(depths) else None,
        complete=bool(traj.get("complete")),
    )


def retention_depth(c: Curve, share: float) -> int:
    """The deepest depth at which the retained accuracy is >= ``share`` at every depth up to it.

    Only the depths the run reached count; a run that never falls below ``share`` returns its
    last depth (read it with :attr:`Curve.depths`: it may have been stopped there).
    """
    kept = 0
    for depth, r in zip(c.depths, c.retained(), strict=True):
        if below(r, share):
            break
        kept = depth
    return kept


def first_below(c: Curve, share: float) -> int | None:
    """The first depth whose retained accuracy is below ``share`` (None: never, in the run)."""
    for depth, r in zip(c.depths, c.retained(), strict=True):
        if below(r, share):
            return depth
    return None


def retained_area(c: Curve, depth: int) -> float | None:
    """Area under the retained-accuracy curve over depths 0..``depth``, divided by ``depth``.

    None when the run has not reached ``depth``, or skipped one of the depths (angular blocks
    larger than one layer are read at the depths they reach, by linear interpolation).
    """
    if depth <= 0 or max(c.depths) < depth:
        return None
    grid = np.arange(depth + 1)
    values = np.interp(grid, c.depths, c.retained())
    return float(np.trapezoid(values, grid) / depth)


def same_items(curves: Sequence[Curve], trajs: Sequence[Mapping]) -> None:
    """Refuse runs that were not evaluated on the same items (or lack per-item outcomes)."""
    first = trajs[0]["eval_items"]
    for t, c in zip(trajs, curves, strict=True):
        if t["eval_items"] != first:
            raise UsageError(
                f"{c.label} was evaluated on other items than {curves[0].label}; paired "
                "comparisons need runs made with the same --task, subjects, --calib and --eval"
            )


def paired_difference(
    a: Curve, b: Curve, depth: int, *, n_boot: int = 2000, seed: int = 0
) -> dict | None:
    """``a`` minus ``b`` in accuracy at ``depth``, with a paired bootstrap 95% interval.

    None when either run lacks that depth or per-item outcomes.
    """
    i, j = a.at(depth), b.at(depth)
    if i is None or j is None or a.correct is None or b.correct is None:
        return None
    diff, lo, hi = paired_interval(a.correct[i], b.correct[j], n_boot=n_boot, seed=seed)
    return {"depth": depth, "difference": diff, "ci": [lo, hi], "excludes_zero": lo > 0 or hi < 0}


def paired_interval(
    x: np.ndarray, y: np.ndarray, *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``x`` minus mean of ``y``, with a paired percentile bootstrap 95% interval.

    ``x`` and ``y`` are per-item outcomes of two models on the same items; each resample draws
    the same items for both. Returns ``(difference, low, high)``.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    diff = float(x.mean() - y.mean())
    if np.array_equal(x, y):  # no item differs: every resample gives 0
        return diff, 0.0, 0.0
    res = stats.bootstrap(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=n_boot,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return diff, float(res.confidence_interval.low), float(res.confidence_interval.high)


def mcnemar(a: Curve, b: Curve, depth: int) -> dict | None:
    """McNemar's exact test of ``a`` against ``b`` at ``depth`` (None without per-item data).

    ``a_only``: items ``a`` gets right and ``b`` wrong; ``b_only`` the reverse; ``p``: the
    two-sided exact binomial p-value of ``a_only`` among the discordant items.
    """
    i, j = a.at(depth), b.at(depth)
    if i is None or j is None or a.correct is None or b.correct is None:
        return None
    x, y = a.correct[i], b.correct[j]
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(a_only, n, 0.5).pvalue)
    return {"depth": depth, "a_only": a_only, "b_only": b_only, "p": p}


def strategy_row(c: Curve, depth: int) -> dict:
    """One run's head-to-head numbers."""
    row = {
        "run": c.label,
        "strategy": c.strategy,
        "accuracy_unpruned": c.base,
        "deepest": max(c.depths),
        "complete": c.complete,
        "area": retained_area(c, depth),
        "collapse_step": c.collapse_step,
        "collapse_depth": c.collapse_depth,
        "accuracy_at": {d: a for d, a in zip(c.depths, c.accuracy, strict=True)},
    }
    for share in SHARES:
        row[f"depth_{round(share * 100)}"] = retention_depth(c, share)
    return row


def pair_row(a: Curve, b: Curve, depth: int, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """``a`` against ``b``: paired differences at every depth both reached, and McNemar's test.

    ``depth`` is not a limit here: runs extended past the common depth are compared as deep as
    both went.
    """
    common = sorted(set(a.depths) & set(b.depths) - {0})
    diffs = [paired_difference(a, b, d, n_boot=n_boot, seed=seed) for d in common]
    firsts = [d for d in (first_below(a, SHARES[0]), first_below(b, SHARES[0])) if d is not None]
    at = min(firsts) if firsts else None
    return {
        "run": a.label,
        "against": b.label,
        "differences": [d for d in diffs if d is not None],
        "mcnemar_depth": at,
        "mcnemar": mcnemar(a, b, at) if at is not None else None,
    }


def head_to_head(
    trajs: Sequence[Mapping],
    labels: Sequence[str],
    reference: str,
    *,
    depth: int = 12,
    n_boot: int = 2000,
    seed: int = 0,
    baselines: Sequence[str] | None = None,
) -> dict:
    """Every run's row, and ``reference`` against every other run.

    Args:
        trajs: pruning trajectories of one model on the same evaluation items.
        labels: a name per run (unique).
        reference: the label of the run compared against every other (e.g. phase-aware).
        depth: the common depth of the areas and of the paired differences (more where both
            runs went deeper).
        n_boot: bootstrap resamples of each paired interval.
        seed: the bootstrap's seed.
        baselines: the runs the verdict judges ``reference`` against (default: every run
            whose strategy is not in :data:`NOT_BASELINES`); the paired numbers cover every
            run either way.
    """
    if reference not in labels:
        raise UsageError(f"--reference {reference!r} is none of the runs ({', '.join(labels)})")
    curves = [curve(t, label) for t, label in zip(trajs, labels, strict=True)]
    same_items(curves, trajs)
    ref = curves[list(labels).index(reference)]
    rows = [strategy_row(c, depth) for c in curves]
    pairs = [pair_row(ref, c, depth, n_boot=n_boot, seed=seed) for c in curves if c is not ref]
    if baselines is None:
        baselines = [c.label for c in curves if c.strategy not in NOT_BASELINES]
    judged = [ref, *(c for c in curves if c.label in baselines and c is not ref)]
    return {
        "reference": reference,
        "depth": depth,
        "rows": rows,
        "pairs": pairs,
        "paired": all(c.correct is not None for c in curves),
        "baselines": [c.label for c in judged[1:]],
        "verdict": verdict(ref, judged, pairs, depth),
    }


def verdict(ref: Curve, curves: Sequence[Curve], pairs: Sequence[Mapping], depth: int) -> dict:
    """Whether ``ref`` keeps 90% deeper than, as deep as, or shallower than the baselines.

    The rule was fixed before the runs; ties were made explicit later (a tie used to be
    broken by area, which could call a tie "supported"). ``outcome`` compares ``ref``'s
    90%-retention depth with the deepest baseline's: ``"deeper"`` (strictly), ``"tied"`` or
    ``"shallower"``. ``supported`` (claim (d)) needs ``"deeper"`` **and**, against every
    baseline as deep as the deepest one, a paired interval that excludes zero in ``ref``'s
    favour at some depth before that run's collapse (or at its last depth). A tie is reported
    as a tie whatever the areas say: the area only orders the baselines tied among themselves
    (``best_other`` is the first of them), for the paired evidence shown first.

    ``at_best_depth`` lists those baselines (best first), each with its area, collapse and the
    depths where ``ref``'s paired interval excludes zero in its favour (``paired_wins_at``) or
    against it (``paired_losses_at``) before that run's collapse: the paired evidence of the
    outcome, whichever it is. Areas are compared to the depth every baseline has reached, so
    that a run still going is not favoured by the area of its first steps.

    A run still going that has kept 90% at every depth it reached (fewer than ``depth``) has
    only a lower bound on its 90% depth: it counts against ``ref``'s depth with that bound,
    but it is not chosen as the best baseline until its depth is known; ``pending`` names it
    and ``provisional`` says the outcome may still change.
    """
    others = [c for c in curves if c is not ref]
    if not others:
        return {"supported": None, "outcome": None, "why": "nothing to compare with"}
    share = SHARES[0]
    pending = [c for c in others if first_below(c, share) is None and max(c.depths) < depth]
    known = [c for c in others if c not in pending] or others
    common = min(depth, *(max(c.depths) for c in known))

    def evidence(c: Curve) -> dict:
        pair = next(p for p in pairs if p["against"] == c.label)
        limit = c.collapse_depth if c.collapse_depth is not None else max(c.depths)
        before = [
            d
            for d in pair["differences"]
            if d["depth"] < limit + (c.collapse_depth is None) and d["excludes_zero"]
        ]
        return {
            "run": c.label,
            "area": retained_area(c, common),
            "collapse_depth": c.collapse_depth,
            "paired_wins_at": [d["depth"] for d in before if d["difference"] > 0],
            "paired_losses_at": [d["depth"] for d in before if d["difference"] < 0],
        }

    mine = retention_depth(ref, share)
    top = max(retention_depth(c, share) for c in others)
    deepest = max(retention_depth(c, share) for c in known)
    level = sorted(
        (c for c in known if retention_depth(c, share) == deepest),
        key=lambda c: retained_area(c, common) or 0.0,
        reverse=True,
    )
    best = level[0]
    rivals = [evidence(c) for c in level]
    outcome = "deeper" if mine > top else "tied" if mine == top else "shallower"
    return {
        "outcome": outcome,
        "supported": outcome == "deeper" and all(r["paired_wins_at"] for r in rivals),
        "best_other": best.label,
        "depth_90": mine,
        "best_other_depth_90": retention_depth(best, share),
        "lead": mine - top,
        "shortfall": max(0, top - mine),
        "paired_wins_at": rivals[0]["paired_wins_at"],
        "paired_losses_at": rivals[0]["paired_losses_at"],
        "at_best_depth": rivals,
        "pending": [c.label for c in pending],
        "provisional": bool(pending),
    }
