"""Threshold comparisons that floating point cannot flip.

Accuracies are item counts over item counts; their differences, means and ratios carry
rounding errors of about 1e-16, so a value that is exactly on a threshold in items can land
on either side of it in floats (a mean change of -6 items of 120 is stored as
-0.050000000000000044, which ``>= -0.05`` calls a miss). Every threshold in phaseprune is
compared with :data:`TOLERANCE`: a value within it of the threshold counts as on it, so "at
least 90%" holds at exactly 90%. 1e-9 is far below one item in any evaluation set (1/n for
n up to 10^8) and far above float64's rounding of such numbers.
"""

from __future__ import annotations

TOLERANCE = 1e-9
"""How far a value may be from a threshold and still count as on it."""


def at_least(value: float, threshold: float) -> bool:
    """``value >= threshold``, counting a value within :data:`TOLERANCE` of it as on it."""
    return value >= threshold - TOLERANCE


def below(value: float, threshold: float) -> bool:
    """``value < threshold`` by more than :data:`TOLERANCE` (the negation of :func:`at_least`)."""
    return not at_least(value, threshold)


def at_most(value: float, threshold: float) -> bool:
    """``value <= threshold``, counting a value within :data:`TOLERANCE` of it as on it."""
    return value <= threshold + TOLERANCE
