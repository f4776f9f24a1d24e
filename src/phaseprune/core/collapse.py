"""Collapse attribution: which removal broke the model's decision, and what it was.

Pure functions of a pruning trajectory; the one place the collapse rule and its sentence live.
The **collapse step** is the first step whose evaluation accuracy fell below
``collapse_fraction`` x the unpruned accuracy: a rule that does not depend on the number of
evaluation items (an interval's reach does: on few items "within chance" fires far above
chance, on many only near it). Separately, ``within_chance_step`` flags the first step
whose 95% interval reaches chance (its lower end at or below ``chance``), a statement about
what these items can tell, not the collapse. A model that starts within chance (never decides)
cannot collapse: its attribution says so instead of naming a step.

``prune`` computes the record after every step and stores it in ``trajectory.json`` (final once
the run is complete, provisional before); every reader (compare, report, findings) reads the
stored record and never applies the rule again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from phaseprune.core.thresholds import below


def within_chance(ci_low: float, chance: float) -> bool:
    """Whether an accuracy whose 95% interval starts at ``ci_low`` is within chance."""
    return ci_low <= chance


def _pct0(share: float) -> str:
    return f"{share:.0%}"


def layers_text(removed: int | Sequence[int]) -> str:
    """``7`` -> ``"layer 7"``; an angular block ``[3, 4]`` -> ``"layers 3–4"``."""
    if isinstance(removed, int):
        return f"layer {removed}"
    if len(removed) == 1:
        return f"layer {removed[0]}"
    return f"layers {removed[0]}–{removed[-1]}"


def _what_was_removed(removed: int | Sequence[int], phase: str | None) -> str:
    """``"layer 6, a Silent-Phase layer,"`` or ``"layer 6 (from a model with no transition)"``."""
    noun = "layer" if isinstance(removed, int) or len(removed) == 1 else "block"
    if phase in (None, "none"):
        return f"{layers_text(removed)} (from a model with no transition left)"
    return f"{layers_text(removed)}, a {phase.capitalize()}-Phase {noun},"


def collapse_statement(
    collapse: Mapping,
    step0: Mapping,
    steps: Sequence[Mapping],
    chance: float,
    fraction: float,
    *,
    pct: Callable[[float], str] = _pct0,
    detailed: bool = False,
) -> str:
    """The sentence that says which removal broke the decision, from a collapse record.

    Args:
        collapse: the record of :func:`collapse_step`.
        step0: the unpruned readout (``eval_accuracy``, ``eval_accuracy_ci``).
        steps: the trajectory's step records (``removed_so_far``, ``eval_accuracy``).
        chance: 1 / n_options.
        fraction: the run's ``collapse_fraction``.
        pct: how a share is printed (the stored sentence rounds to whole percents).
        detailed: say, when nothing collapsed, against which rule (the report's wording).
    """
    base = step0["eval_accuracy"]
    if collapse.get("step") is not None:
        return (
            f"Removing {_what_was_removed(collapse['removed_layer'], collapse['phase_of_removed'])}"
            f" at step {collapse['step']} dropped accuracy from {pct(collapse['accuracy_before'])}"
            f" to {pct(collapse['accuracy_after'])} ({collapse['reason']})."
        )
    low = step0["eval_accuracy_ci"][0]
    if within_chance(low, chance) and base <= chance:
        return (
            f"The unpruned model is already within chance ({pct(base)}, chance "
            f"{pct(chance)}): it never decides, so no removal can be blamed for a collapse."
        )
    if within_chance(low, chance):  # above chance, but too few items to tell it from chance
        return (
            f"The unpruned accuracy ({pct(base)}) cannot be told from chance ({pct(chance)}) on "
            f"these items (its 95% interval starts at {pct(low)}), so no removal can be blamed "
            "for a collapse; more evaluation items would tell."
        )
    last = steps[-1]["eval_accuracy"] if steps else base
    sentence = f"No collapse within {len(steps)} removals (accuracy {pct(last)})."
    if not detailed:
        return sentence
    n = len(steps[-1]["removed_so_far"]) if steps else 0
    flag = collapse.get("within_chance_step")
    reached = f" (its interval reached chance at step {flag})" if flag else ""
    return (
        f"{sentence[:-2]}, unpruned {pct(base)}; {n} layer{'s' if n != 1 else ''} removed): it "
        f"never fell below {pct(fraction)} of the unpruned accuracy{reached}."
    )


def collapse_step(
    base_accuracy: float,
    base_ci_low: float,
    steps: Sequence[Mapping],
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
        "reason", "within_chance_step", "statement", "transition_path"}``; ``step`` is None when
        nothing collapsed, ``within_chance_step`` when no step's interval reached chance.
    """
    record = {
        "step": None,
        "removed_layer": None,
        "phase_of_removed": None,
        "accuracy_before": None,
        "accuracy_after": None,
        "reason": None,
        "within_chance_step": None,
        "transition_path": [s["transition_layer"] for s in steps],
    }
    step0 = {"eval_accuracy": base_accuracy, "eval_accuracy_ci": [base_ci_low, None]}
    previous = base_accuracy
    decides = not within_chance(base_ci_low, chance)
    for s in steps if decides else ():
        if record["within_chance_step"] is None and within_chance(s["eval_accuracy_ci"][0], chance):
            record["within_chance_step"] = s["step"]
    for s in steps if decides else ():
        acc = s["eval_accuracy"]
        if below(acc, collapse_fraction * base_accuracy):
            reason = f"below {collapse_fraction:.0%} of the unpruned accuracy"
            if within_chance(s["eval_accuracy_ci"][0], chance):
                reason += ", within chance"
            record.update(
                step=s["step"],
                removed_layer=s["removed_layer"],
                phase_of_removed=s["phase_of_removed"],
                accuracy_before=previous,
                accuracy_after=acc,
                reason=reason,
            )
            break
        previous = acc
    record["statement"] = collapse_statement(record, step0, steps, chance, collapse_fraction)
    return record


def trajectory_collapse(traj: Mapping) -> dict:
    """:func:`collapse_step` of a trajectory record, up to its last completed step."""
    s0 = traj["step0"]
    fraction = traj["settings"]["collapse_fraction"]
    return collapse_step(
        s0["eval_accuracy"], s0["eval_accuracy_ci"][0], traj["steps"], traj["chance"], fraction
    )


def layers_before_collapse(traj: Mapping) -> dict:
    """Layers removed before the collapse step (all removed if none), and whether it came.

    Reads the trajectory's stored collapse (provisional for an unfinished run). ``strategy``
    names the run: its ``label`` where a caller gave one (runs that share a strategy), else
    its strategy.
    """
    step = (traj.get("collapse") or {}).get("step")
    steps = traj["steps"]
    upto = (step - 1) if step else len(steps)
    n = len(steps[upto - 1]["removed_so_far"]) if upto > 0 else 0
    label = traj.get("label") or traj["strategy"]
    return {"strategy": label, "removed": n, "collapsed": step is not None,
            "steps_run": len(steps)}  # fmt: skip
