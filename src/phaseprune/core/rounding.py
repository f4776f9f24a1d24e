"""Whether a pruning step's choice was within the rounding of a bfloat16 (or float16) run.

A run in bfloat16 reads option logits with rounding errors of a few tenths of a logit, so two
candidates whose objective values are close may rank the other way in float32. Every
objective is a function of the option logits' *differences* only (picks, margins, softmax
probabilities and the option KL all are), so one number measures the rounding:

* **The error** (:func:`rounding_error`), measured once at step 0: the largest error of any
  option-logit difference (:func:`difference_error`) between the run's dtype and float32,
  over the calibration items and every readout index after the embeddings of the unpruned
  model. Each readout index is the output of a shallower model, as each candidate's final
  readout is, so the deeper indices stand in for candidates the measurement cannot read
  ahead of time; it is a measured scale, not a guarantee.
* **The interval** (:func:`key_interval`): given that error ``e`` on every item, each
  candidate's objective key lies within reach of its bfloat16 value: a margin or an option
  log-probability moves by at most ``e`` (so a mean margin and the mean option KL too; the
  unpruned reference's own log-probabilities cancel in the difference of two candidates'
  KLs), a probability margin by at most ``expm1(e)``, and an item whose top two options are
  within ``e`` may be right or wrong (accuracy).
* **The check** (:func:`rounding_check`): the choice was within rounding when the runner-up's
  highest reachable key is at least the chosen's lowest, i.e. float32 might have chosen
  differently. The record states it on the key part that decides: its gap (the chosen's lead)
  and its bound (the most rounding can take from that lead: the two candidates' radii added).
"""

from __future__ import annotations

import numpy as np

from phaseprune.core.objectives import candidate_metrics, objective_key

Key = tuple[float, float]

KEY_PARTS = {
    "accuracy": ("accuracy", "margin"),
    "margin": ("margin", "accuracy"),
    "prob-margin": ("prob_margin", "accuracy"),
    "kl": ("kl", "accuracy"),
}
"""The metrics each objective's key is made of, in key order (``kl`` enters as ``-kl``)."""


def top_gap(logits: np.ndarray) -> np.ndarray:
    """The best option's logit minus the runner-up's, along the last axis."""
    top2 = np.sort(np.asarray(logits, dtype=np.float64), axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def difference_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest error of any option-logit difference: ``max_ij |(a_i - a_j) - (b_i - b_j)|``.

    Picks, margins and softmax probabilities depend on logits only through their
    differences, so this (not the raw logit error) is what a rounding bound must cover.
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return d.max(axis=-1) - d.min(axis=-1)


def rounding_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """The run's rounding error: the largest :func:`difference_error` over items and indices.

    Args:
        approx: ``(n_items, n_readout, n_options)`` all-layer option logits in the run's dtype.
        exact: the same read in float32.
    """
    later = slice(min(1, approx.shape[1] - 1), None)  # the embeddings' readout is no candidate
    return float(difference_error(approx[:, later], exact[:, later]).max())


def key_interval(
    objective: str, logits: np.ndarray, gold: np.ndarray, ref_logits: np.ndarray, error: float
) -> tuple[Key, Key]:
    """Lowest and highest float32 ``objective_key`` of a candidate read with rounding ``error``.

    Args:
        objective: one of :data:`~phaseprune.core.objectives.OBJECTIVES`.
        logits: ``(n, n_options)`` the candidate's final option logits in the run's dtype.
        gold: ``(n,)`` gold option indices.
        ref_logits: ``(n, n_options)`` the unpruned model's option logits.
        error: bound on every item's :func:`difference_error`.
    """
    metrics = candidate_metrics(logits, gold, ref_logits)
    unsure = top_gap(logits) <= error
    correct = np.argmax(logits, axis=-1) == np.asarray(gold)
    radius = {"margin": error, "prob_margin": float(np.expm1(error)), "kl": error}
    spans = {"accuracy": (float((correct & ~unsure).mean()), float((correct | unsure).mean()))}
    for name, r in radius.items():
        value = -metrics[name] if name == "kl" else metrics[name]
        spans[name] = (value - r, value + r)
    first, second = KEY_PARTS[objective]
    return (spans[first][0], spans[second][0]), (spans[first][1], spans[second][1])


def rounding_check(
    objective: str,
    chosen: np.ndarray,
    runner_up: np.ndarray,
    gold: np.ndarray,
    ref_logits: np.ndarray,
    error: float,
) -> dict:
    """Whether float32 might have preferred ``runner_up`` to ``chosen`` (see the module doc).

    Args:
        objective: the run's objective.
        chosen: ``(n, n_options)`` the chosen candidate's final option logits.
        runner_up: the same for the best candidate not chosen.
        gold: ``(n,)`` gold option indices.
        ref_logits: ``(n, n_options)`` the unpruned model's option logits.
        error: the run's :func:`rounding_error`.

    Returns:
        ``score`` (the key part compared: the first, or the second when the first ties with
        no rounding room), ``gap`` (the chosen's lead on it, negative when a rule other than
        the objective chose), ``bound`` (the most rounding can move that lead) and
        ``within_rounding`` (``|gap| <= bound``).
    """
    keys = [
        objective_key(objective, candidate_metrics(x, gold, ref_logits))
        for x in (chosen, runner_up)
    ]
    (lo, _), (_, hi) = (
        key_interval(objective, x, gold, ref_logits, error) for x in (chosen, runner_up)
    )
    part = 0
    gap, bound = keys[0][0] - keys[1][0], (keys[0][0] - lo[0]) + (hi[0] - keys[1][0])
    if gap == 0 and bound == 0:  # a tie no rounding can break: the second part decides
        part = 1
        gap, bound = keys[0][1] - keys[1][1], (keys[0][1] - lo[1]) + (hi[1] - keys[1][1])
    return {
        "score": KEY_PARTS[objective][part],
        "gap": round(float(gap), 6),
        "bound": round(float(bound), 6),
        "within_rounding": bool(abs(gap) <= bound),
    }
