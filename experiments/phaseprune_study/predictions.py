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

    ``observed`` says what the runs show, in the prediction's terms (the 90% depths and the
    outcome), so a prediction that holds for another reason than the one it gave is seen to.

    Args:
        keys: the plan's prediction keys (of :data:`PREDICTIONS`).
        h2h: the unhealed head-to-head's numbers (``document.head_to_head_numbers``) or None.
        healed: the healed head-to-head's (``healing.healed_head_to_head``) or None.
    """
    out = []
    for key in keys:
        if key not in PREDICTIONS:
            raise KeyError(f"unknown prediction {key!r}; known: {', '.join(PREDICTIONS)}")
        source = h2h if key.startswith("unhealed") else healed
        held = observed = None
        if source is not None:
            v = source["healed"]["verdict"] if source is healed else source["verdict"]
            observed = (
                f"{v['depth_90']} against {v.get('best_other_depth_90')} for the deepest baseline "
                f"(`{v.get('best_other')}`): {v.get('outcome')}, claim (d) "
                f"{'supported' if v.get('supported') else 'not supported'}"
            )
            unexpected = v.get("outcome") == "deeper" and not v.get("supported")
            if key == "healed-not-supported" and unexpected:  # held, not for the reason it gave
                observed += "; deeper, not the tie or shallower outcome it expected"
            held = {
                "unhealed-not-deeper": v.get("outcome") != "deeper",
                "healed-not-supported": not v.get("supported"),
                "healed-short-of-7": v["depth_90"] < 7,
            }[key]
        final = source is not None and not (source["unfinished"] or source["missing"])
        out.append({"key": key, "text": PREDICTIONS[key], "held": held, "final": final,
                    "observed": observed})  # fmt: skip
    return out
