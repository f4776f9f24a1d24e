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
    pair_row,
    paired_interval,
    retention_depth,
)
from phaseprune_study.ablation import ablation
from phaseprune_study.advice import advice, advise
from phaseprune_study.plans import HEAL_WHEN, PLANS, ROOT, Plan
from phaseprune_study.records import committed, stage_runs


def _correct(picks, gold) -> np.ndarray:
    return np.asarray(picks) == np.asarray(gold)


def _base_rule(label: str, h2h: dict) -> str | None:
    """The head-to-head run a heal stage heals (``phase-aware-kl-after``: ``phase-aware-kl``)."""
    return next((b for b in h2h if label in (b, f"{b}-after", f"{b}-search")), None)


def _heal_when(settings: dict) -> str:
    """A heal stage's ``--heal-when``: its own, else the library's default (``after``)."""
    return settings.get("heal_when", HEAL_WHEN)


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
    diffs = pair_row(search, after, 0)["differences"]  # every depth both reached
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


def healed_reference(plan: Plan) -> str | None:
    """The heal stage's label of the reference healed with the default ``--heal-when``.

    ``phase-aware-kl-after`` on the MMLU plan (which also has its ``-search`` twin),
    ``phase-aware-kl`` on the held-out plans; None when the plan heals no reference.
    """
    for label, settings in plan.heal.items():
        if _base_rule(label, plan.h2h) == plan.reference and _heal_when(settings) == HEAL_WHEN:
            return label
    return None


def healed_runs(plan: Plan, run_root: Path) -> dict[str, dict]:
    """The plan's healed trajectories with at least one step, as ``heal-<label>``, in plan order.

    ``run_root``: the plan's run folder; runs only in experiments/records/ are restored first.
    """
    return stage_runs(plan, run_root, [f"heal-{label}" for label in plan.heal])


def healed_head_to_head(plan: Plan, run_root: Path, unhealed: dict[str, dict]) -> dict | None:
    """Issue 32's healed head-to-head: the healed reference against every other run.

    Judged twice with the head-to-head's rule (:func:`phaseprune.core.headtohead.verdict`):
    ``healed`` against the healed runs alone (the primary test: baseline + healing), and
    ``every`` against every run, healed (``heal-<label>``) or not (``unhealed``: the
    head-to-head's trajectories by label). The depth is the healed runs' planned removals.
    ``gains``: what healing bought each rule (:func:`healing_gains`); ``advice``: the run to
    use among every run (:func:`phaseprune_study.advice.advise`); ``ablation``: phase-aware's
    healed variants (:func:`phaseprune_study.ablation.ablation`). None until the healed
    reference and one other healed run have a step.
    """
    from phaseprune.compare import headtohead_markdown
    from phaseprune.core.headtohead import head_to_head

    healed = healed_runs(plan, run_root)
    label = healed_reference(plan)
    ref = f"heal-{label}"
    if label is None or ref not in healed or len(healed) < 2:
        return None
    depth = max(s.get("steps", plan.steps) for s in plan.heal.values())
    every = {**healed, **unhealed}
    judged = {name: head_to_head(list(runs.values()), list(runs), ref, depth=depth,
                                 n_boot=2000, seed=plan.seed)
              for name, runs in (("healed", healed), ("every", every))}  # fmt: skip
    for h in judged.values():
        h["markdown"] = headtohead_markdown(h).split("\n", 2)[2]  # without its title
    settings = {**plan.h2h, **{f"heal-{x}": s for x, s in plan.heal.items()}}
    variants = {f"heal-{x}": s for x, s in plan.heal.items() if _heal_when(s) == HEAL_WHEN}
    healed_ablation = ablation(plan, healed, variants)
    if healed_ablation:  # the rule of the best healed variant, to set beside the unhealed best
        best = healed_ablation["best"].removeprefix("heal-")
        healed_ablation["best_rule"] = _base_rule(best, plan.h2h)
    return {
        "reference": ref,
        "depth": depth,
        "n_eval": len(healed[ref]["eval_items"]),
        **judged,
        "best_healed": advice(judged["healed"]),  # the deepest healed run (for the summary)
        # the run to use, healed or not (docs/findings.md's "What to do")
        "advice": advise(judged["every"], every, settings, (ref, plan.reference), plan.seed),
        # no unhealed run yet: judging against every run repeats the primary test
        "every_is_healed": set(every) == set(healed),
        "gains": healing_gains(plan, judged["every"]["rows"], healed),
        # phase-aware's variants healed (the default --heal-when): does healing change the best?
        "ablation": healed_ablation,
        "unfinished": [name for name, t in healed.items() if not t["complete"]],
        "missing": [f"heal-{x}" for x in plan.heal if f"heal-{x}" not in healed],
    }


def healing_gains(plan: Plan, rows: list[dict], healed: dict[str, dict]) -> list[dict]:
    """Per healed run, its rule unhealed against healed: 90%/80% depths, area, collapse.

    ``rows``: head-to-head rows of both (:func:`phaseprune.core.headtohead.strategy_row`, on
    one common depth). ``transitions``: per step, the healed model's transition layer of the
    evaluation readout and that of the same removals unhealed (None: no transition found), so
    whether healing brings the decision transition back can be read step by step; counted in
    ``none_unhealed``, ``back`` and ``lost``.
    """
    by_run = {r["run"]: r for r in rows}
    out = []
    for name, traj in healed.items():
        label = name.removeprefix("heal-")
        base = _base_rule(label, plan.h2h)
        when = _heal_when(plan.heal[label])
        h, u = by_run[name], by_run.get(base)
        keys = ("depth_90", "depth_80", "area", "collapse_depth", "deepest")
        steps = [
            (s["step"], s.get("transition_layer"), s.get("unhealed", {}).get("transition_layer"))
            for s in traj["steps"]
        ]
        out.append({
            "run": name,
            "rule": base,
            # the rule as the summary's rows name it across settings (the non-default timing said)
            "row": base if when == HEAL_WHEN else f"{base} (`--heal-when {when}`)",
            "healed": {k: h[k] for k in keys},
            "unhealed": None if u is None else {k: u[k] for k in keys},
            "transitions": steps,
            # steps whose unhealed readout has no transition; of them, those healing gives one
            # back; and steps where healing loses the transition the unhealed model had
            "none_unhealed": sum(tu is None for _, _, tu in steps),
            "back": sum(t is not None and tu is None for _, t, tu in steps),
            "lost": sum(t is None and tu is not None for _, t, tu in steps),
        })  # fmt: skip
    return out


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
            print(f"## {plan.name}\n\n{markdown(plan, ROOT / 'runs' / 'findings')}")
            if choice := heal_when_choice(plan, ROOT / "runs" / "findings"):
                state = "decided" if choice["decided"] else f"so far ({choice['steps']} steps)"
                print(f"--heal-when default {state}: {choice['choice']}; 90% kept to "
                      f"{choice['depth_90']}; search's paired wins at {choice['wins']}, "
                      f"losses at {choice['losses']}")  # fmt: skip
