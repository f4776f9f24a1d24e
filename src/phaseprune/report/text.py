"""Numbers and sentences as the report prints them.

One formatting rule for every number on the page, so a test can find a JSON value in the
page by formatting it the same way. The collapse sentence is built here from the collapse
record's numbers, not copied from its ``statement``.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def layers_text(removed: int | Sequence[int]) -> str:
    """``7`` -> ``"layer 7"``; an angular block ``[3, 4]`` -> ``"layers 3–4"``."""
    if isinstance(removed, int):
        return f"layer {removed}"
    if len(removed) == 1:
        return f"layer {removed[0]}"
    return f"layers {removed[0]}{DASH}{removed[-1]}"


def phase_adjective(phase: str | None) -> str:
    """``"silent"`` -> ``"Silent-Phase"``."""
    return f"{(phase or 'unknown').capitalize()}-Phase"


def transition_text(layer: int | None, ci: Sequence[int] | None) -> str:
    """``"layer 3 (95% CI 3–4)"`` or ``"none"``."""
    if layer is None:
        return "none"
    return f"layer {layer} (95% CI {layer_ci(ci)})"


def collapse_sentence(collapse: dict, steps: Sequence[dict], step0: dict, chance: float,
                      fraction: float) -> str:  # fmt: skip
    """Say which removal broke the decision, from the collapse record's numbers.

    Args:
        collapse: a trajectory's ``collapse`` record (:func:`phaseprune.collapse.collapse_step`).
        steps: the trajectory's step records.
        step0: the unpruned readout (``eval_accuracy``, ``eval_accuracy_ci``).
        chance: 1 / n_options.
        fraction: the run's ``collapse_fraction``.
    """
    step = collapse.get("step")
    base = step0["eval_accuracy"]
    if step is not None:
        removed = collapse["removed_layer"]
        noun = "layer" if isinstance(removed, int) or len(removed) == 1 else "block"
        reason = f" ({collapse['reason']})" if collapse.get("reason") else ""
        return (
            f"Removing {layers_text(removed)}, a {phase_adjective(collapse['phase_of_removed'])} "
            f"{noun}, at step {step} dropped accuracy from {pct(collapse['accuracy_before'])} to "
            f"{pct(collapse['accuracy_after'])}{reason}."
        )
    if step0["eval_accuracy_ci"][0] <= chance:  # the rule of phaseprune.collapse
        return (
            f"No collapse to attribute: the unpruned model is already within chance "
            f"({pct(base)}, chance {pct(chance)}), so it never decided."
        )
    if not steps:
        return "No collapse: no layer has been removed yet."
    last = steps[-1]
    n = len(last["removed_so_far"])
    return (
        f"No collapse: after {n} layer{'s' if n != 1 else ''} removed in {len(steps)} "
        f"step{'s' if len(steps) != 1 else ''}, accuracy is {pct(last['eval_accuracy'])} "
        f"(unpruned {pct(base)}); its interval never reached chance ({pct(chance)}) and it "
        f"never fell below {pct(fraction)} of the unpruned accuracy."
    )
