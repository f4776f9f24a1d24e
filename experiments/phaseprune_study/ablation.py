"""The ablation: phase-aware's variants against each other, unhealed or healed (issue 32).

Which of phase-aware's settings keeps the decision deepest, by the rule that picked its
defaults: the deepest 90% retention, then the largest area, at the depth every variant
reached, with each variant's paired difference from the best
(:func:`phaseprune.core.headtohead.paired_difference`).
"""

from __future__ import annotations

from phaseprune_study.plans import Plan


def ablation(plan: Plan, runs: dict[str, dict], variants: dict | None = None) -> dict | None:
    """Phase-aware's variants against each other at the depth all of them are run to.

    For each variant that has reached ``depth``: its settings, the 90%/80% retention depths
    (up to ``depth``), the retained area to ``depth``, its accuracy there and, against the
    best variant, the paired difference at ``depth``. The best is the deepest 90% retention,
    then the largest area: the rule the default is picked by.

    Args:
        plan: the plan (its ``steps``: a variant's depth where its settings give none).
        runs: trajectories by label.
        variants: the runs' settings by label (default: the plan's head-to-head runs); the
            phase-aware ones are the variants.
    """
    from phaseprune.core.headtohead import curve, paired_difference, strategy_row

    variants = plan.h2h if variants is None else variants
    labels = [label for label, s in variants.items() if s.get("strategy") == "phase-aware"]
    if len(labels) < 2:  # one variant (ARC's plan: the reference alone) has nothing to ablate
        return None
    # the shallowest variant's steps (the issue lets the ablation's variants stop at 8)
    depth = min(variants[label].get("steps", plan.steps) for label in labels)
    curves = {label: curve(runs[label], label) for label in labels if label in runs}
    reached = {label: c for label, c in curves.items() if max(c.depths) >= depth}
    if not reached:
        return None
    rows = []
    for label, c in reached.items():
        # the head-to-head's row of the curve cut at the ablation depth
        row = strategy_row(_cut(c, sum(d <= depth for d in c.depths)), depth)
        rows.append({
            "run": label,
            "settings": {k: v for k, v in variants[label].items()
                         if k not in ("strategy", "steps", "heal", "heal_when")},
            "depth_90": row["depth_90"],
            "depth_80": row["depth_80"],
            "area": row["area"],
            "accuracy": row["accuracy_at"].get(depth),
            "collapse_depth": c.collapse_depth,
        })  # fmt: skip
    best = max(rows, key=lambda r: (r["depth_90"], r["area"] or 0.0))
    for r in rows:
        r["against_best"] = (
            None if r is best else paired_difference(reached[r["run"]], reached[best["run"]], depth)
        )
    return {"depth": depth, "rows": rows, "best": best["run"],
            "waiting": [label for label in labels if label not in reached]}  # fmt: skip


def _cut(c, n: int):
    """``c`` cut to its first ``n`` readouts (a variant's numbers up to the ablation depth)."""
    from dataclasses import replace

    return replace(c, depths=c.depths[:n], accuracy=c.accuracy[:n],
                   correct=None if c.correct is None else c.correct[:n])  # fmt: skip
