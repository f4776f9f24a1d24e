"""Numbers and sentences as the report prints them.

One formatting rule for every number on the page, so a test can find a JSON value in the
page by formatting it the same way. The collapse sentence is :mod:`phaseprune.core.collapse`'s, with
these formats.
"""

from __future__ import annotations

from collections.abc import Sequence

from phaseprune.core.collapse import layers_text

__all__ = ["DASH", "layer_ci", "layers_text", "num", "pct", "pct_ci", "transition_text"]

DASH = "–"


def pct(share: float | None) -> str:
    """``0.61`` -> ``"61%"``, ``0.175`` -> ``"17.5%"``; one decimal at most, ``"n/a"`` for None."""
    if share is None:
        return "n/a"
    text = f"{100 * share:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def pct_ci(ci: Sequence[float] | None) -> str:
    """``[0.5, 0.7]`` -> ``"50–70%"``."""
    if not ci:
        return "n/a"
    return f"{pct(ci[0])[:-1]}{DASH}{pct(ci[1])}"


def num(value: float | None, digits: int = 2) -> str:
    """A float with ``digits`` decimals, a true minus sign, ``"n/a"`` for None."""
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}".replace("-", "−")


def layer_ci(ci: Sequence[int] | None) -> str:
    """A transition interval ``[3, 4]`` -> ``"3–4"``."""
    if not ci:
        return "n/a"
    return f"{ci[0]}{DASH}{ci[1]}"


def transition_text(layer: int | None, ci: Sequence[int] | None) -> str:
    """``"layer 3 (95% CI 3–4)"`` or ``"none"``."""
    if layer is None:
        return "none"
    return f"layer {layer} (95% CI {layer_ci(ci)})"
