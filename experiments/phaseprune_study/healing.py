"""The healed runs (stages ``heal-<label>``) as tables: what healing bought at each step.

Each healed step records its evaluation readout and ``unhealed``, the same removals with no
map. A healed run is paired with itself unhealed (the same removals) and with the unhealed
head-to-head run of its rule (``h2h-<rule>``: the removals that rule chose without healing,
which for an iterative rule differ after the first healed step). Differences are paired
over the evaluation items, with scipy's paired percentile bootstrap (2,000 resamples, seed
0: :func:`phaseprune.core.headtohead.paired_interval`).

    .venv/bin/python -m phaseprune_study.healing    # every finished or partial healed run
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from phaseprune.core.headtohead import (
    SHARES,
    curve,
    paired_difference,
    paired_interval,
    retention_depth,
)
from phaseprune_study.plans import PLANS, ROOT
from phaseprune_study.records import committed


def _correct(picks, gold) -> np.ndarray:
    return np.asarray(picks) == np.asarray(gold)


def _base_rule(label: str, h2h: dict) -> str:
    return next(b for b in h2h if label in (b, f"{b}-after", f"{b}-search"))


def _trajectory(plan, stage: str, runs: Path) -> dict | None:
    for folder in (runs / plan.name / stage, committed(plan, stage)):
        path = folder / "trajectory.json"
        if path.exists():
            return json.loads(path.read_text())
    return None


def healing_rows(plan, label: str, runs: Path) -> list[dict]:
    """One row per completed step of ``heal-<label>``, with paired differences in points.

    The removed set, healed and unhealed accuracy, and the head-to-head run's at that depth.
    """
    healed = _trajectory(plan, f"heal-{label}", runs)
    if healed is None:
        return []
    plain = _trajectory(plan, f"h2h-{_base_rule(label, plan.h2h)}", runs)
    gold = healed["eval_gold"]
    rows = []
    for i, step in enumerate(healed["steps"]):
        ok = _correct(step["eval_picks"], gold)
        same = _correct(step["unhealed"]["eval_picks"], gold)
        diff, lo, hi = paired_interval(ok, same)
        row = {
            "step": step["step"],
            "removed": sorted(step["removed_so_far"]),
            "healed": step["eval_accuracy"],
            "unhealed": step["unhealed"]["eval_accuracy"],
            "vs_unhealed": [round(100 * v, 1) for v in (diff, lo, hi)],
            "map": step["heal"].get("map_sha256") is not None,
            "ridge": step["heal"].get("ridge"),
            "judged": step["heal"].get("judged"),
        }
        if plain is not None and i < len(plain["steps"]):
            other = plain["steps"][i]
            d, lo, hi = paired_interval(ok, _correct(other["eval_picks"], gold))
            row |= {"h2h": other["eval_accuracy"], "h2h_removed": sorted(other["removed_so_far"]),
                    "vs_h2h": [round(100 * v, 1) for v in (d, lo, hi)]}  # fmt: skip
        rows.append(row)
    return rows


def heal_when_choice(plan, runs: Path) -> dict | None:
    """The rule of docs/healing.md that picks ``--heal-when``'s default, applied.

    ``heal-<reference>-search`` against ``heal-<reference>-after`` over the evaluation items:
    ``search`` only if it keeps 90% to a deeper step than ``after``, or has a paired win (95%
    interval above zero) at some step and a paired loss at none; else ``after``, the cheaper.
    ``decided`` is False while either run is short of its planned steps (the choice so far).
    None until both runs have a step.
    """
    runs_of = {}
    for mode in ("after", "search"):
        traj = _trajectory(plan, f"heal-{plan.reference}-{mode}", runs)
        if traj is None or not traj["steps"]:
            return None
        runs_of[mode] = traj
    after, search = (curve(runs_of[m], m) for m in ("after", "search"))
    common = [d for d in search.depths if d in after.depths and d > 0]
    diffs = [paired_difference(search, after, d) for d in common]
    wins = [d["depth"] for d in diffs if d["excludes_zero"] and d["difference"] > 0]
    losses = [d["depth"] for d in diffs if d["excludes_zero"] and d["difference"] < 0]
    depth = {m: retention_depth(c, SHARES[0]) for m, c in (("after", after), ("search", search))}
    deeper = depth["search"] > depth["after"]
    planned = {m: plan.heal[f"{plan.reference}-{m}"]["steps"] for m in runs_of}
    return {
        "choice": "search" if deeper or (wins and not losses) else "after",
        "decided": all(len(runs_of[m]["steps"]) >= planned[m] for m in runs_of),
        "depth_90": depth,
        "steps": {m: len(runs_of[m]["steps"]) for m in runs_of},
        "differences": diffs,
        "wins": wins,
        "losses": losses,
    }


def markdown(plan, runs: Path) -> str:
    """Every healed run of ``plan`` as a Markdown table."""
    out = []
    for label in plan.heal:
        rows = healing_rows(plan, label, runs)
        if not rows:
            continue
        out += [f"### heal-{label}", "",
                "| step: removed | unhealed | healed (vs unhealed) | h2h unhealed (vs h2h) |",
                "|---|---|---|---|"]  # fmt: skip
        for r in rows:
            d = r["vs_unhealed"]
            healed = f"{r['healed']:.1%} ({d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}])"
            if not r["map"]:
                healed += "; no map kept"
            h2h = ""
            if "h2h" in r:
                e = r["vs_h2h"]
                h2h = f"{r['h2h']:.1%} {r['h2h_removed']} ({e[0]:+.1f} [{e[1]:+.1f}, {e[2]:+.1f}])"
            out.append(f"| {r['step']}: {r['removed']} | {r['unhealed']:.1%} | {healed} | {h2h} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    for plan in PLANS.values():
        if plan.heal:
            print(markdown(plan, ROOT / "runs" / "findings"))
            if choice := heal_when_choice(plan, ROOT / "runs" / "findings"):
                state = "decided" if choice["decided"] else f"so far ({choice['steps']} steps)"
                print(f"--heal-when default {state}: {choice['choice']}; 90% kept to "
                      f"{choice['depth_90']}; search's paired wins at {choice['wins']}, "
                      f"losses at {choice['losses']}")  # fmt: skip
