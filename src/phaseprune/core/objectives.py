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
objective ablation's best on MMLU: it holds the unpruned accuracy as deep as the accuracy
objective, then loses it more slowly, with the larger area under the retained-accuracy curve.
On ARC-Challenge, checked after the choice, the result is mixed (see docs/findings.md)."""


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
