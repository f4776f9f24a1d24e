"""Decision metrics: pure functions from option logits to per-item and per-layer numbers.

Conventions. ``option_logits`` has shape ``(n_items, n_layers + 1, n_options)``: readout
index 0 is the embedding output, index ``l`` the residual stream after ``l`` decoder layers.

* **Decision Margin** (logits): correct option's logit minus the best wrong option's logit.
  Because every option shares one softmax normaliser, this equals the difference of their
  log-probabilities under *any* softmax (full vocabulary or options only).
* **Probability margin**: ``p(correct) - max p(wrong)`` with the softmax over the options.
* **Pick**: ``argmax`` over options; exact ties go to the lowest letter, like ``np.argmax`` in
  lm-evaluation-harness's ``acc``.
* **Option Frequency**: share of items whose pick is each letter, beside the gold letters'
  distribution; its entropy (bits) tells how strongly picks pile onto few letters.

Intervals: mean margin gets a percentile bootstrap 95% CI over items
(``scipy.stats.bootstrap``); accuracy gets the Wilson score interval (the same as
``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``, vectorised here because the
phase bootstrap evaluates it thousands of times).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from phaseprune.core.items import LETTERS


@dataclass(frozen=True)
class ItemMetrics:
    """Per item and readout layer; every array has shape ``(n_items, n_layers + 1)``."""

    margin: np.ndarray
    """Decision Margin in logits: correct minus best wrong."""
    prob_margin: np.ndarray
    """p(correct) - max p(wrong), softmax over the options."""
    pred: np.ndarray
    """Index of the picked option (int)."""
    correct: np.ndarray
    """Whether the pick is the gold option (bool)."""


@dataclass(frozen=True)
class LayerStats:
    """Aggregates over items for one readout layer."""

    layer: int
    """Readout index: 0 = embeddings, l = after l decoder layers."""
    margin_mean: float
    """Mean Decision Margin (logits)."""
    margin_ci: tuple[float, float]
    """Percentile-bootstrap 95% CI of the mean margin."""
    prob_margin_mean: float
    """Mean probability margin."""
    accuracy: float
    """Share of items whose pick is gold."""
    accuracy_ci: tuple[float, float]
    """Wilson 95% interval of the accuracy."""
    option_frequency: dict[str, float]
    """Share of items picking each letter."""
    pick_entropy: float
    """Entropy of the option frequency, in bits."""


def item_metrics(option_logits: np.ndarray, gold: np.ndarray) -> ItemMetrics:
    """Margins, picks and correctness for every item and layer.

    Args:
        option_logits: ``(n_items, n_layers + 1, n_options)`` option logits.
        gold: ``(n_items,)`` index of the correct option.
    """
    logits = np.asarray(option_logits, dtype=np.float64)
    n_items, _, n_options = logits.shape
    gold = np.asarray(gold, dtype=np.int64)
    if gold.shape != (n_items,) or gold.min(initial=0) < 0 or gold.max(initial=0) >= n_options:
        raise ValueError(f"gold must be {n_items} indices in [0, {n_options})")
    is_gold = np.arange(n_options)[None, None, :] == gold[:, None, None]  # (n, 1, k)
    correct_logit = np.take_along_axis(logits, gold[:, None, None], axis=2)[..., 0]
    best_wrong = np.where(is_gold, -np.inf, logits).max(axis=2)
    probs = np.exp(logits - logits.max(axis=2, keepdims=True))
    probs /= probs.sum(axis=2, keepdims=True)
    correct_prob = np.take_along_axis(probs, gold[:, None, None], axis=2)[..., 0]
    best_wrong_prob = np.where(is_gold, -np.inf, probs).max(axis=2)
    pred = logits.argmax(axis=2)
    return ItemMetrics(
        margin=correct_logit - best_wrong,
        prob_margin=correct_prob - best_wrong_prob,
        pred=pred,
        correct=pred == gold[:, None],
    )


def wilson_interval(
    k: np.ndarray, n: int, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for ``k`` successes out of ``n`` (vectorised over ``k``)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    k = np.asarray(k, dtype=np.float64)
    p = k / n
    denom = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def mean_ci(values: np.ndarray, *, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0):
    """Percentile-bootstrap CI of the mean over axis 0, for every column at once.

    Args:
        values: ``(n_items, n_columns)``.
        confidence: level of the interval.
        n_boot: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``(low, high)`` arrays of shape ``(n_columns,)``; a single item gives ``(x, x)``.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[0] < 2:
        mean = values.mean(axis=0)
        return mean, mean
    res = stats.bootstrap(
        (values,),
        np.mean,
        axis=0,
        confidence_level=confidence,
        n_resamples=n_boot,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def option_frequency(picks: np.ndarray, n_options: int) -> np.ndarray:
    """Share of entries equal to each option index: ``(n_items, ...)`` -> ``(..., n_options)``."""
    counts = (np.asarray(picks)[..., None] == np.arange(n_options)).sum(axis=0)
    return counts / max(len(picks), 1)


def entropy_bits(shares: np.ndarray) -> np.ndarray:
    """Entropy in bits of distributions along the last axis (0 log 0 = 0)."""
    shares = np.asarray(shares, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(shares > 0, -shares * np.log2(shares), 0.0)
    return terms.sum(axis=-1)


def layer_stats(
    metrics: ItemMetrics,
    n_options: int,
    *,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[LayerStats]:
    """One :class:`LayerStats` per readout layer."""
    n_items = metrics.margin.shape[0]
    lo, hi = mean_ci(metrics.margin, confidence=confidence, n_boot=n_boot, seed=seed)
    k = metrics.correct.sum(axis=0)
    acc_lo, acc_hi = wilson_interval(k, n_items, confidence)
    freq = option_frequency(metrics.pred, n_options)  # (L1, k)
    entropy = entropy_bits(freq)
    letters = LETTERS[:n_options]
    return [
        LayerStats(
            layer=layer,
            margin_mean=float(metrics.margin[:, layer].mean()),
            margin_ci=(float(lo[layer]), float(hi[layer])),
            prob_margin_mean=float(metrics.prob_margin[:, layer].mean()),
            accuracy=float(k[layer] / n_items),
            accuracy_ci=(float(acc_lo[layer]), float(acc_hi[layer])),
            option_frequency={letter: float(freq[layer, i]) for i, letter in enumerate(letters)},
            pick_entropy=float(entropy[layer]),
        )
        for layer in range(metrics.margin.shape[1])
    ]
