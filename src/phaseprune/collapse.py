"""Collapse attribution: which removal broke the model's decision, and what it was.

Pure function of a pruning trajectory. The **collapse step** is the first step whose
evaluation accuracy is within chance, i.e. the lower end of its 95% interval is at or below
``chance``, or whose accuracy fell below ``collapse_fraction`` x the unpruned accuracy,
whichever comes first. A model that starts at chance (never decides) cannot collapse: its
attribution says so instead of naming a step.
"""

from __future__ import annotations

from collections.abc import Sequence


def collapse_step(
    base_accuracy: float,
    base_ci_low: float,
    steps: Sequence[dict],
    chance: float,
    collapse_fraction: float = 0.5,
) -> dict:
    """Find the collapse and attribute it.

    Args:
        base_accuracy: unpruned evaluation accuracy.
        base_ci_low: lower end of its 95% interval.
        steps: step records with ``step``, ``removed_layer``, ``phase_of_removed``,
            ``eval_accuracy``, ``eval_accuracy_ci`` and ``transition_layer``.
        chance: 1 / n_options.
        collapse_fraction: accuracy below this share of the unpruned one counts as collapse.

    Returns:
        ``{"step", "removed_layer", "phase_of_removed", "accuracy_before", "accuracy_after",
        "reason", "statement", "transition_path"}``; ``step`` is None when nothing collapsed.
    """
    path = [s["transition_layer"] for s in steps]
    record = {
        "step": None,
        "removed_layer": None,
        "phase_of_removed": None,
        "accuracy_before": None,
        "accuracy_after": None,
        "reason": None,
        "transition_path": path,
    }
    if base_ci_low <= chance:
        record["statement"] = (
            f"The unpruned model is already within chance ({base_accuracy:.0%}, chance "
            f"{chance:.0%}): it never decides, so no removal can be blamed for a collapse."
        )
        return record
    previous = base_accuracy
    for s in steps:
        acc, (low, _) = s["eval_accuracy"], s["eval_accuracy_ci"]
        reason = None
        if low <= chance:
            reason = "within chance"
        elif acc < collapse_fraction * base_accuracy:
            reason = f"below {collapse_fraction:.0%} of the unpruned accuracy"
        if reason:
            record.update(
                step=s["step"],
                removed_layer=s["removed_layer"],
                phase_of_removed=s["phase_of_removed"],
                accuracy_before=previous,
                accuracy_after=acc,
                reason=reason,
            )
            record["statement"] = (
                f"Removing layer {s['removed_layer']}, a {s['phase_of_removed'].capitalize()}-"
                f"Phase layer, at step {s['step']} dropped accuracy from {previous:.0%} to "
                f"{acc:.0%} ({reason})."
            )
            return record
        previous = acc
    record["statement"] = f"No collapse within {len(steps)} removals (accuracy {previous:.0%})."
    return record
