"""The study's document: numbers from finished runs, docs/findings.md.

The stages (:mod:`phaseprune_study.stages`) run the plans; this module reads what they left (in
``runs/findings/`` or, from other machines, ``experiments/records/``), extracts every number the
document uses (:mod:`phaseprune_study.claims`, :mod:`phaseprune.core.headtohead`) and renders
experiments/findings.md.j2.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from phaseprune import __version__
from phaseprune.presentation.report import build_report
from phaseprune.runs.files import load_candidates, load_summary, load_trajectory
from phaseprune_study.ablation import ablation
from phaseprune_study.advice import advise
from phaseprune_study.claims import (
    THRESHOLDS,
    claims,
    largest_changes,
    pileup,
    run_label,
    single_removals,
)
from phaseprune_study.healing import healed_head_to_head
from phaseprune_study.plans import PLANS, ROOT, Plan
from phaseprune_study.predictions import judge
from phaseprune_study.records import committed as committed_records
from phaseprune_study.records import restore, stage_runs, steps_done

TEMPLATE = ROOT / "experiments" / "findings.md.j2"
"""The document's template (beside the package, in the study's folder)."""

DOC_FIGURES = ("{analyze}/margin", "{analyze}/option_frequency", "compare")
"""The report's figures the document shows (the others stay in the report); ``{analyze}``: the
plan's readout stage (``Plan.analyze_stage``)."""


def h2h_runs(plan: Plan, run_root: Path) -> dict[str, dict]:
    """The plan's head-to-head trajectories with at least one step, by label, in plan order.

    Runs only in experiments/records/ (made on another machine) are restored first.
    """
    runs = stage_runs(plan, run_root, [f"h2h-{label}" for label in plan.h2h])
    return {name.removeprefix("h2h-"): traj for name, traj in runs.items()}


def head_to_head_numbers(plan: Plan, run_root: Path, runs: dict | None = None) -> dict | None:
    """The head-to-head of the plan's h2h runs so far (each up to its last completed step).

    ``runs``: :func:`h2h_runs`'s result where the caller already loaded it.
    """
    from phaseprune.compare import headtohead_markdown
    from phaseprune.core.headtohead import head_to_head

    runs = h2h_runs(plan, run_root) if runs is None else runs
    if plan.reference not in runs or len(runs) < 2:
        return None
    h = head_to_head(list(runs.values()), list(runs), plan.reference, depth=plan.steps,
                     n_boot=2000, seed=plan.seed)  # fmt: skip
    h["markdown"] = headtohead_markdown(h).split("\n", 2)[2]  # without its title
    h["n_eval"] = len(runs[plan.reference]["eval_items"])
    h["n_calib"] = len(runs[plan.reference]["calib_items"])
    h["reference_note"] = plan.reference_note
    h["unfinished"] = [label for label, t in runs.items() if not t["complete"]]
    h["missing"] = [label for label in plan.h2h if label not in runs]
    h["ablation"] = ablation(plan, runs)
    h["advice"] = advise(h, runs, plan.h2h, (plan.reference,), plan.seed)
    return h


TAIL_DRAWS = 1000
"""Random calibration sets per size in :func:`tail_numbers`."""


def tail_numbers(plan: Plan, analyze: Path, summary: dict, runs: dict) -> dict | None:
    """Phase-aware's first cut (``--decisive tail``) judged on the analyze run's items.

    What the tail rule does on all the readout's items, what it does on random calibration
    sets of the plan's size (and twice and four times it; :mod:`phaseprune_study.calibration_size`),
    and what the reference run's own calibration items made it do. None when the reference
    does not cut the tail or the analyze run's per-item table is absent.
    """
    import pandas as pd

    from phaseprune.core.phases import best_shorter_readout, tail_cut_index
    from phaseprune_study.calibration_size import readout_arrays, tail_cut_draws

    if plan.h2h.get(plan.reference, {}).get("decisive") != "tail":
        return None
    if not (analyze / "items.parquet").exists() or summary["transition_layer"] is None:
        return None
    correct, margin, n_options = readout_arrays(pd.read_parquet(analyze / "items.parquet"))
    n_items, n = correct.shape[0], correct.shape[1] - 1
    t = summary["transition_layer"]
    acc, mean_margin = correct.mean(axis=0), margin.mean(axis=0)
    full_cut = tail_cut_index(acc, mean_margin, acc[n], t)
    sizes = [k * plan.calib for k in (1, 2, 4) if k * plan.calib < n_items]
    draws = [tail_cut_draws(correct, margin, n_options, size, draws=TAIL_DRAWS,
                            seed=plan.seed).summary() for size in sizes]  # fmt: skip
    best = best_shorter_readout(acc, t)
    out = {
        "n_items": n_items,
        "n_layers": n,
        "transition": t,
        "readouts": [
            {"index": r, "accuracy": float(acc[r]), "margin": float(mean_margin[r])}
            for r in range(t, n + 1)
        ],
        "full_cut": full_cut,
        "full_layers_cut": n - full_cut,
        "best_shorter": None if best is None else {"index": best, "accuracy": float(acc[best])},
        "whole_accuracy": float(acc[n]),
        "draws": draws,
        "run": None,
    }
    ref = runs.get(plan.reference)
    if ref and ref["steps"] and "tail" in (ref["steps"][0].get("calib_phases") or {}):
        first = ref["steps"][0]["calib_phases"]
        cut = first["tail"]["cut_at"]
        same = next((d["layers_cut"].get(n - cut, 0.0) for d in draws if d["n_calib"] ==
                     len(ref["calib_items"])), None)  # fmt: skip
        out["run"] = {"n_calib": len(ref["calib_items"]), "transition": first["transition_layer"],
                      "cut": cut, "layers_cut": n - cut, "share_of_draws": same,
                      "calib_accuracy": first["tail"]["unpruned_accuracy"]}  # fmt: skip
    return out


def collect(plan: Plan, run_root: Path, docs_root: Path) -> dict | None:
    """Build the report, copy its figures into docs, and extract every number the doc uses."""
    for stage in (plan.analyze_stage, plan.other_stage, "single-removals"):
        restore(plan, stage, run_root / stage)
    analyze = run_root / plan.analyze_stage
    committed = docs_root / plan.name / "numbers.json"
    if not (analyze / "summary.json").exists():
        # runs made elsewhere: the document is rebuilt from the numbers committed with it
        return json.loads(committed.read_text()) if committed.exists() else None
    other = run_root / plan.other_stage
    labelled = None
    if plan.h2h:  # the head-to-head's runs are the pruning runs (labelled: several variants)
        labelled = h2h_runs(plan, run_root)
        prunes = [run_root / f"h2h-{label}" for label in labelled]
        trajs = [{**t, "label": label} for label, t in labelled.items()]
    else:
        prunes = [run_root / f"prune-{s}" for s in plan.strategies]
        # unfinished runs are shown up to their last step (and marked so); resumed next run
        prunes = [p for p in prunes if steps_done(p)]
        # an unfinished run's stored collapse is provisional, up to its last completed step
        trajs = [load_trajectory(p) for p in prunes]
    runs = [analyze, *prunes]
    report = build_report(runs, run_root / "report.html")
    figures = docs_root / plan.name
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    copied, wanted = {}, {f.format(analyze=plan.analyze_stage) for f in DOC_FIGURES}
    for png in report.pngs:
        rel = png.relative_to(report.files_dir)
        # "2-prune-last/margin_heatmap.png" -> key "prune-last/margin_heatmap"
        if len(rel.parts) > 1:
            run = rel.parts[0].split("-", 1)[1]
        else:  # a report of one run (the readout alone) keeps its figures at the top
            run = runs[0].name if len(runs) == 1 else ""
        key = f"{run}/{png.stem}" if run else png.stem
        if key not in wanted:
            continue
        target = figures / (key.replace("/", "__") + ".png")
        shutil.copyfile(png, target)
        copied[key] = target.relative_to(docs_root.parent).as_posix()
    summary = load_summary(analyze)
    other_summary = load_summary(other) if (other / "summary.json").exists() else None
    # phases from the analyze run (more items than any pruning run's evaluation readout)
    phases = summary["phases"]["layer_phases"]
    single = _single(run_root, phases)
    log = (
        json.loads((run_root / "log.json").read_text()) if (run_root / "log.json").exists() else []
    )
    h2h = head_to_head_numbers(plan, run_root, labelled) if plan.h2h else None
    tail = tail_numbers(plan, analyze, summary, labelled) if plan.h2h else None
    healed = healed_head_to_head(plan, run_root, labelled) if plan.h2h and plan.heal else None
    found = claims(summary, trajs, single, reference=plan.reference if plan.h2h else "phase-aware")
    if h2h is not None:  # (d) by the head-to-head's rule (paired, on enough items)
        v = h2h["verdict"]
        found["d"]["verdict"] = "tied" if v.get("outcome") == "tied" else v["supported"]
    numbers = {
        "plan": asdict(plan),
        "analyze_stage": plan.analyze_stage,
        "other_stage": plan.other_stage,
        "model": summary["model"],
        "phaseprune_version": __version__,
        "wall_s": sum(e["wall_s"] for e in log),
        "log": log,
        # stage runs made on a GPU (findings.py --device cuda): their log entries name it
        "gpu_log": [e for e in log if e.get("accelerator")],
        "analyze": summary,
        "other": other_summary,
        "prune": trajs,
        "single": single,
        "claims": found,
        "pileup": pileup(summary),
        "changes": largest_changes(trajs),
        "figures": copied,
        "report": os.path.relpath(report.html, ROOT),
        "h2h": h2h,
        "tail": tail,
        "healed": healed,
        "predictions": judge(plan.predictions, h2h, healed),
        "device_checks": device_checks(plan, labelled) if plan.h2h else [],
    }
    numbers = _slim(numbers)
    committed.write_text(json.dumps(numbers, indent=1))
    return numbers


def device_checks(plan: Plan, runs: dict[str, dict]) -> list[dict]:
    """Head-to-head runs made on two devices, compared over the steps both reached.

    ``experiments/records/<plan>/device-check/h2h-<label>/trajectory.json`` is the run made on
    the other device (CPU or GPU) than the record the document uses (``runs``, by label): the
    two must remove the same layers and give every evaluation item the same pick, for runs of
    both devices to stand in one head-to-head.
    """
    rows = []
    folder = committed_records(plan, "device-check")
    for d in sorted(folder.glob("h2h-*")) if folder.is_dir() else []:
        label = d.name.removeprefix("h2h-")
        main = runs.get(label)
        if main is None or not (d / "trajectory.json").exists():
            continue
        other = load_trajectory(d)
        n = min(len(main["steps"]), len(other["steps"]))
        pairs = [(main["step0"], other["step0"]),
                 *zip(main["steps"][:n], other["steps"][:n], strict=True)]  # fmt: skip
        gaps = [abs(x - y) for a, b in pairs
                for x, y in zip(a["eval_margins"], b["eval_margins"], strict=True)]  # fmt: skip
        rows.append({
            "run": label,
            "devices": [f"{t['model']['device']} {t['model']['dtype']}" for t in (main, other)],
            "same_items": main["eval_items"] == other["eval_items"]
            and main["calib_items"] == other["calib_items"],
            "steps": n,
            "same_layers": [s["removed_layer"] for s in main["steps"][:n]]
            == [s["removed_layer"] for s in other["steps"][:n]],
            "picks_equal": sum(a["eval_picks"] == b["eval_picks"] for a, b in pairs),
            "readouts": len(pairs),
            "max_margin_diff": max(gaps),
        })  # fmt: skip
    return rows


def _single(run_root: Path, phases: list[str]) -> dict | None:
    """Every layer removed alone: the single-removals run, else step 1 of the iterative run."""
    for source in ("single-removals", "prune-iterative"):
        run = run_root / source
        if not (run / "candidates.parquet").exists():
            continue
        traj = load_trajectory(run)
        if traj["steps"]:  # step 1 is all it needs, finished run or not
            rows = load_candidates(run, {1})
            return single_removals(traj, rows, phases) | {"source": source}
    return None


def _slim(numbers: dict) -> dict:
    """numbers.json keeps the trajectories' per-step headline numbers, not every layer."""
    out = dict(numbers)
    out["prune"] = [
        {k: t.get(k) for k in ("strategy", "collapse", "calib_step0", "eval_items", "calib_items",
                                "complete")}
        | {"label": run_label(t)}
        | {"step0_accuracy": t["step0"]["eval_accuracy"],
           "step0_accuracy_ci": t["step0"]["eval_accuracy_ci"],
           "step0_transition": t["step0"]["transition_layer"],
           "steps": [{k: s[k] for k in ("step", "removed_layer", "phase_of_removed",
                                        "eval_accuracy", "eval_accuracy_ci", "transition_layer")}
                     for s in t["steps"]]}
        for t in numbers["prune"]
    ]  # fmt: skip
    for key in ("analyze", "other"):
        if out.get(key):
            out[key] = {k: v for k, v in out[key].items() if k != "settings"}
    return out


def render(all_numbers: dict[str, dict | None], path: Path) -> None:
    """docs/findings.md from the template and every model's numbers."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE.parent),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["run"] = run_label
    env.filters["basename"] = lambda p: Path(p).name
    env.filters["pct"] = lambda x, d=1: "—" if x is None else f"{100 * x:.{d}f}%"
    env.filters["pts"] = lambda x: "—" if x is None else f"{100 * x:+.1f} pts"
    env.filters["pp"] = lambda x: f"{100 * x:.0f} points"
    env.filters["num"] = lambda x, d=2: "—" if x is None else f"{x:.{d}f}"
    env.filters["verdict"] = lambda v: {True: "supported", False: "not supported",
                                        None: "not testable here",
                                        "tied": "not supported (a tie)"}[v]  # fmt: skip
    env.filters["claim_d"] = lambda v: env.filters["verdict"](
        "tied" if v.get("outcome") == "tied" else v.get("supported")
    )
    env.filters["outcome"] = lambda o: {"deeper": "deeper", "tied": "tied",
                                        "shallower": "shallower"}.get(o, "not judged")  # fmt: skip
    text = env.get_template(TEMPLATE.name).render(
        models=all_numbers, plans=PLANS, thresholds=THRESHOLDS, version=__version__
    )
    path.write_text(text)
