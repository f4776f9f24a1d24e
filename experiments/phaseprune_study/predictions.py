"""A pre-registered plan's predictions, judged from its head-to-heads as the runs come in.

The predictions are written in the plan's pre-registration file before any of its pruning
runs (experiments/preregistration-openbookqa.md); here each is one question of the numbers the
document already computes, so the document says how each fell without a hand-edited word.
A prediction reads ``None`` until a run it needs has a step, and ``final`` is False while
any run of its head-to-head is still to come.
"""

from __future__ import annotations

PREDICTIONS = {
    "unhealed-not-deeper": "Unhealed, `phase-aware-kl` is not deeper than the deepest unhealed "
    "baseline at 90%",
    "healed-not-supported": "Healed, claim (d) is not supported (a tie or shallower)",
    "healed-short-of-7": "The healed reference keeps 90% to fewer than 7 removals",
}
"""What each prediction key of :attr:`phaseprune_study.plans.Plan.predictions` says."""


def judge(keys: tuple[str, ...], h2h: dict | None, healed: dict | None) -> list[dict]:
    """Each prediction of ``keys``: its text, whether it held so far, and whether that is final.

    Args:
        keys: the plan's prediction keys (of :data:`PREDICTIONS`).
        h2h: the unhealed head-to-head's numbers (``document.head_to_head_numbers``) or None.
        healed: the healed head-to-head's (``healing.healed_head_to_head``) or None.
    """
    out = []
    for key in keys:
        if key == "unhealed-not-deeper":
            source, held = h2h, None if h2h is None else h2h["verdict"].get("outcome") != "deeper"
        elif key == "healed-not-supported":
            source = healed
            held = None if healed is None else not healed["healed"]["verdict"]["supported"]
        elif key == "healed-short-of-7":
            source = healed
            held = None if healed is None else healed["healed"]["verdict"]["depth_90"] < 7
        else:
            raise KeyError(f"unknown prediction {key!r}; known: {', '.join(PREDICTIONS)}")
        final = source is not None and not (source["unfinished"] or source["missing"])
        out.append({"key": key, "text": PREDICTIONS[key], "held": held, "final": final})
    return out
