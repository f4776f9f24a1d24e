"""Silent and Decisive phases: where along the depth a model's decision appears.

**Rule.** The *transition layer* ``t`` is the first readout index such that

1. the layer's accuracy is credibly above chance: the lower end of its Wilson 95% interval
   exceeds ``chance = 1 / n_options``, and
2. the mean Decision Margin is positive at ``t`` and at every later index through the last.

Readout indices ``0 .. t-1`` form the **Silent Phase** (the readout cannot predict the answer),
``t .. n_layers`` the **Decisive Phase**. Condition 2 makes the decision one that holds to the
output: a model whose margin turns positive and later falls back (a late dip) gets its
transition after the dip, and a model whose last layer does not decide has no transition at
all (``None``), reported as such rather than guessed.

**Uncertainty.** Items are resampled with replacement (``n_boot`` times, seeded) and the rule
is re-applied to each resample's per-layer accuracy interval and mean margin. The result
gives the share of resamples that find no transition and a percentile interval of the
transition layer over those that do.

Decoder layer ``j`` (``model.layers[j]``, 0-based) writes readout index ``j + 1``; its phase is
the phase of that index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from phaseprune.core.metrics import wilson_interval

Phase = Literal["silent", "decisive"]
RemovalPhase = Literal["silent", "decisive", "none"]


def readout_phase(transition_layer: int | None, index: int) -> Phase:
    """The phase of readout index ``index`` in a model whose transition is ``transition_layer``.

    Without a transition the whole network is Silent ("Silent throughout").
    """
    decisive = transition_layer is not None and index >= transition_layer
    return "decisive" if decisive else "silent"


def removal_phase(transition_layer: int | None, position: int) -> RemovalPhase:
    """The phase of the decoder layer at ``position`` of a model, as a removal is labelled.

    The layer writes readout index ``position + 1``. A model without a transition has no
    measured phase to blame: its removals are ``"none"``, not Silent by default.
    """
    if transition_layer is None:
        return "none"
    return readout_phase(transition_layer, position + 1)


@dataclass(frozen=True)
class PhaseResult:
    """The transition layer with its bootstrap uncertainty."""

    transition_layer: int | None
    """First readout index of the Decisive Phase, or None when the model never decides."""
    transition_ci: tuple[int, int] | None
    """95% percentile interval of the transition over resamples that find one."""
    p_no_transition: float
    """Share of bootstrap resamples in which the rule finds no transition."""
    n_boot: int
    """Number of bootstrap resamples."""
    n_readout: int
    """Number of readout indices (n_layers + 1)."""

    @property
    def silent(self) -> tuple[int, int]:
        """Inclusive range of readout indices in the Silent Phase."""
        end = self.n_readout - 1 if self.transition_layer is None else self.transition_layer - 1
        return (0, end)

    @property
    def decisive(self) -> tuple[int, int] | None:
        """Inclusive range of readout indices in the Decisive Phase, if any."""
        if self.transition_layer is None:
            return None
        return (self.transition_layer, self.n_readout - 1)

    def layer_phase(self, decoder_layer: int) -> Phase:
        """``"silent"`` or ``"decisive"`` for decoder layer ``j`` (it writes index ``j + 1``)."""
        return readout_phase(self.transition_layer, decoder_layer + 1)

    def statement(self) -> str:
        """A plain sentence for the summary."""
        last = self.n_readout - 1
        if self.transition_layer is None:
            return (
                f"No transition: at no layer from which the margin stays positive through the "
                f"last ({last}) is accuracy above chance. The model does not decide on these items."
            )
        lo, hi = self.transition_ci or (self.transition_layer, self.transition_layer)
        return (
            f"Transition at readout layer {self.transition_layer} (95% bootstrap interval "
            f"{lo}-{hi}; {self.p_no_transition:.0%} of resamples find none): layers "
            f"0-{self.transition_layer - 1} are Silent, {self.transition_layer}-{last} Decisive."
        )


def find_transition(acc_low: np.ndarray, margin_mean: np.ndarray, chance: float) -> np.ndarray:
    """Apply the rule along the last axis.

    Args:
        acc_low: ``(..., n_readout)`` lower ends of the accuracy intervals.
        margin_mean: ``(..., n_readout)`` mean Decision Margins.
        chance: ``1 / n_options``.

    Returns:
        ``(...)`` int array: the transition index, or -1 where there is none.
    """
    positive = np.asarray(margin_mean) > 0
    # positive through the end: reverse cumulative AND along the layer axis
    stays_positive = np.flip(np.logical_and.accumulate(np.flip(positive, -1), axis=-1), -1)
    ok = stays_positive & (np.asarray(acc_low) > chance)
    first = ok.argmax(axis=-1)
    return np.where(ok.any(axis=-1), first, -1)


def detect_phases(
    correct: np.ndarray,
    margin: np.ndarray,
    n_options: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PhaseResult:
    """Transition layer and its bootstrap uncertainty from per-item results.

    Args:
        correct: ``(n_items, n_readout)`` bool, the layer's pick is gold.
        margin: ``(n_items, n_readout)`` Decision Margins in logits.
        n_options: options per item (chance = 1 / n_options).
        n_boot: bootstrap resamples of items.
        seed: seed of the resampling.
        confidence: level of the accuracy interval used by the rule.
    """
    correct = np.asarray(correct, dtype=bool)
    margin = np.asarray(margin, dtype=np.float64)
    n_items, n_readout = correct.shape
    chance = 1.0 / n_options
    acc_low, _ = wilson_interval(correct.sum(axis=0), n_items, confidence)
    point = int(find_transition(acc_low, margin.mean(axis=0), chance))
    idx = np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))
    boot_low, _ = wilson_interval(correct[idx].sum(axis=1), n_items, confidence)  # (n_boot, L1)
    boot = find_transition(boot_low, margin[idx].mean(axis=1), chance)
    found = boot[boot >= 0]
    ci = None
    if point >= 0 and found.size:
        ci = (
            int(np.percentile(found, 2.5, method="lower")),
            int(np.percentile(found, 97.5, method="higher")),
        )
    return PhaseResult(
        transition_layer=point if point >= 0 else None,
        transition_ci=ci,
        p_no_transition=float((boot < 0).mean()),
        n_boot=n_boot,
        n_readout=n_readout,
    )


def tail_cut_index(
    accuracy: Sequence[float], margin: Sequence[float], bar: float, first: int
) -> int:
    """The readout index where ``--decisive tail`` ends the model (the last index: no cut).

    Removing the last ``n - r`` layers leaves exactly the readout at index ``r``, so each
    Decisive readout index is a candidate cut. The one kept is the strongest decision that
    loses no accuracy: among the indices ``first .. n`` whose accuracy is at least ``bar``
    (the unpruned model's), the largest mean margin; ties go to the lower index (the deeper
    cut). When no index keeps ``bar`` the model is not cut.

    Args:
        accuracy: ``(n_readout,)`` accuracy of each readout index on the calibration items.
        margin: ``(n_readout,)`` mean Decision Margin of each readout index.
        bar: the unpruned model's accuracy on the same items.
        first: the lowest index allowed (the transition, or a protected layer's output).
    """
    n = len(accuracy) - 1
    keeping = [r for r in range(min(first, n), n + 1) if accuracy[r] >= bar]
    return max(keeping, key=lambda r: (margin[r], -r)) if keeping else n


def best_shorter_readout(accuracy: Sequence[float], transition: int) -> int | None:
    """The most accurate Decisive readout before the last (ties: the lower); None if none is."""
    n = len(accuracy) - 1
    return max(range(transition, n), key=lambda r: (accuracy[r], -r), default=None)


def tail_statement(accuracy: Sequence[float], margin: Sequence[float], transition: int | None):
    """What ``--decisive tail`` would cut on these items, as a sentence (None: no transition).

    Args:
        accuracy: ``(n_readout,)`` accuracy of each readout index.
        margin: ``(n_readout,)`` mean Decision Margin of each readout index.
        transition: the transition index (the first Decisive readout), or None.
    """
    if transition is None:
        return None
    n = len(accuracy) - 1
    cut = tail_cut_index(accuracy, margin, accuracy[n], transition)
    if cut < n:
        return (
            f"Decisive tail: readout {cut} keeps the whole model's accuracy "
            f"({100 * accuracy[cut]:.1f}% against {100 * accuracy[n]:.1f}%) with the largest "
            f"margin ({margin[cut]:.2f} against {margin[n]:.2f}): on these items the last "
            f"{n - cut} layer{'s' if n - cut != 1 else ''} can go at no accuracy cost."
        )
    if transition >= n:
        return "Decisive tail: only the last readout decides; no layer can be cut from the tail."
    best = best_shorter_readout(accuracy, transition)
    return (
        f"Decisive tail: no shorter Decisive readout keeps the whole model's "
        f"{100 * accuracy[n]:.1f}% (the best, readout {best}, has {100 * accuracy[best]:.1f}%): "
        f"the last layers add accuracy on these items, so cutting them is not free."
    )
