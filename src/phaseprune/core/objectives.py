"""Pruning objectives: how good is a candidate removal, from its calibration readout.

Pure functions of option logits. Every objective returns a key tuple; **larger is better to
remove**, and candidates are compared by the tuple, then by the lower original layer index,
so choices are deterministic.

* ``accuracy`` (default; the paper's Iterative Pruning): calibration accuracy of the pruned
  model's own answers, ties broken by the mean Decision Margin.
* ``margin``: mean Decision Margin (logits), ties by accuracy.
* ``prob-margin``: mean probability margin (softmax over the options), ties by accuracy.
* ``kl``: minus the mean KL divergence ``KL(p_ref || p_cand)`` of the option distribution
  (softmax over the options) from the unpruned model's, ties by accuracy.
"""

from __future__ import annotations

import numpy as np

from phaseprune.core.metrics import item_metrics

OBJECTIVES = ("accuracy", "margin", "prob-margin", "kl")
DEFAULT_OBJECTIVES = {"phase-aware": "kl"}
"""``--objective`` when not given, by strategy (any other: accuracy). Phase-aware's is the
ablation's best on Qwen2.5-Coder-1.5B / MMLU (docs/findings.md: 90% of the accuracy kept to 5
removals as with accuracy, 80% to 7 against 6, the larger retained area); on ARC-Challenge,
run after the choice, 90% to 2 against accuracy's 1 but 80% to 2 against 4."""


def objective_of(strategy: str, objective: str | None) -> str:
    """``--objective``'s value for ``strategy``: ``objective``, or its default when None."""
    return DEFAULT_OBJECTIVES.get(strategy, "accuracy") if objective is None else objective


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax along the last axis, in float64."""
    x = np.asarray(x, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def option_kl(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """``KL(p_ref || p)`` per item, softmax over options: ``(n, k), (n, k) -> (n,)``."""
    log_p_ref, log_p = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(log_p_ref) * (log_p_ref - log_p)).sum(axis=-1)


def candidate_metrics(logits: np.ndarray, gold: np.ndarray, ref_logits: np.ndarray) -> dict:
    """Accuracy, mean margins and mean option KL of one candidate's final-layer readout.

    Args:
        logits: ``(n_calib, n_options)`` the pruned model's own option logits.
        gold: ``(n_calib,)`` gold option indices.
        ref_logits: ``(n_calib, n_options)`` the unpruned model's option logits.
    """
    m = item_metrics(np.asarray(logits)[:, None, :], gold)
    return {
        "accuracy": float(m.correct.mean()),
        "margin": float(m.margin.mean()),
        "prob_margin": float(m.prob_margin.mean()),
        "kl": float(option_kl(ref_logits, logits).mean()),
    }


def objective_key(objective: str, metrics: dict) -> tuple[float, float]:
    """The comparison key of a candidate under ``objective`` (larger = better to remove)."""
    if objective == "accuracy":
        return (metrics["accuracy"], metrics["margin"])
    if objective == "margin":
        return (metrics["margin"], metrics["accuracy"])
    if objective == "prob-margin":
        return (metrics["prob_margin"], metrics["accuracy"])
    if objective == "kl":
        return (-metrics["kl"], metrics["accuracy"])
    raise ValueError(f"unknown objective {objective!r}; one of {OBJECTIVES}")


def best_candidate(keys: dict[int, tuple[float, ...]]) -> int:
    """The layer whose key is largest; ties go to the lowest layer index."""
    return min(keys, key=lambda layer: (tuple(-v for v in keys[layer]), layer))


def top_gap(logits: np.ndarray) -> np.ndarray:
    """The best option's logit minus the runner-up's, along the last axis."""
    top2 = np.sort(np.asarray(logits, dtype=np.float64), axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def difference_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest error of any option-logit difference: ``max_ij |(a_i - a_j) - (b_i - b_j)|``.

    Picks, margins and softmax probabilities depend on logits only through their
    differences, so this (not the raw logit error) is what a precision bound must cover.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return d.max(axis=-1) - d.min(axis=-1)


Key = tuple[float, ...]


MEANS = ("margin", "prob_margin", "kl")
"""The objectives' means over items (accuracy aside), as :func:`candidate_metrics` names them."""


def mean_errors(approx: np.ndarray, exact: np.ndarray, gold: np.ndarray, ref: np.ndarray) -> dict:
    """``|mean(approx) - mean(exact)|`` of each of :data:`MEANS` over the items."""
    a, e = candidate_metrics(approx, gold, ref), candidate_metrics(exact, gold, ref)
    return {m: abs(a[m] - e[m]) for m in MEANS}


def key_interval(
    objective: str,
    logits: np.ndarray,
    gold: np.ndarray,
    ref_logits: np.ndarray,
    exact: np.ndarray,
    bound: float,
    mean_bound: dict[str, float] | None = None,
) -> tuple[Key, Key]:
    """Lowest and highest values the exact ``objective_key`` can take, from approximate logits.

    Rows marked ``exact`` are exact; every other row's option-logit differences are within
    ``bound`` of the exact ones (:func:`difference_error`). Then an item whose top gap exceeds
    ``bound`` keeps its pick, each margin moves by at most ``bound``, each log-probability by
    at most ``bound`` (so the option KL too) and each probability margin by at most
    ``expm1(bound)``; an item whose gap is within ``bound`` may be right or wrong.
    ``mean_bound`` bounds the error of each mean over all items (:data:`MEANS`), which is far
    smaller than the per-row bound when row errors cancel; with some rows exact, the loose
    rows' share of the mean is within ``mean_bound`` plus the exact rows' share of ``bound``.

    Args:
        objective: one of :data:`OBJECTIVES`.
        logits: ``(n, n_options)`` one candidate's final option logits.
        gold: ``(n,)`` gold option indices.
        ref_logits: ``(n, n_options)`` the unpruned model's exact option logits.
        exact: ``(n,)`` rows computed exactly.
        bound: bound on the difference error of the other rows.
        mean_bound: bound on the error of each mean when no row is exact (None: no bound).
    """
    metrics = candidate_metrics(logits, gold, ref_logits)
    loose = ~np.asarray(exact, dtype=bool)
    unsure = loose & (top_gap(logits) <= bound)
    correct = np.argmax(logits, axis=-1) == np.asarray(gold)
    share = float(loose.mean())
    per_row = {"margin": bound, "prob_margin": float(np.expm1(bound)), "kl": bound}
    spans = {"accuracy": (float((correct & ~unsure).mean()), float((correct | unsure).mean()))}
    for name in MEANS:
        radius = per_row[name] * share
        if mean_bound is not None and share:
            radius = min(radius, mean_bound[name] + per_row[name] * (1 - share))
        value = -metrics[name] if name == "kl" else metrics[name]
        spans[name] = _span(value, radius)
    first, second = _KEY_PARTS[objective]
    return (spans[first][0], spans[second][0]), (spans[first][1], spans[second][1])


def _span(value: float, radius: float) -> tuple[float, float]:
    return (value - radius, value + radius) if radius else (value, value)


_KEY_PARTS = {
    "accuracy": ("accuracy", "margin"),
    "margin": ("margin", "accuracy"),
    "prob-margin": ("prob_margin", "accuracy"),
    "kl": ("kl", "accuracy"),
}


def contenders(intervals: dict[int, tuple[Key, Key]]) -> list[int]:
    """Candidates that may be the exact best (:func:`best_candidate`) given key intervals.

    ``j`` surely beats ``k`` when ``j``'s lowest key is above ``k``'s highest, with the lower
    layer index breaking exact ties as :func:`best_candidate` does; a candidate nobody surely
    beats is a contender. The exact best is always among them, and a single contender is it.
    """
    lo = {k: (*v[0], -k) for k, v in intervals.items()}
    hi = {k: (*v[1], -k) for k, v in intervals.items()}
    return [k for k in sorted(intervals) if not any(lo[j] > hi[k] for j in intervals if j != k)]
