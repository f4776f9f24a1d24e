"""``phaseprune compare``: several pruning runs of one model on the same items, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from phaseprune.core.collapse import layers_before_collapse
from phaseprune.core.errors import UsageError
from phaseprune.runs.files import load_runs
from phaseprune.runs.outdir import atomic_write_bytes
from phaseprune.runs.records import Trajectory


def compare_table(trajs: Sequence[Trajectory], labels: Sequence[str]) -> pd.DataFrame:
    """One row per run: accuracy before, layers removable before collapse, collapse details."""
    rows = []
    for traj, label in zip(trajs, labels, strict=True):
        c = traj["collapse"]  # provisional while the run is incomplete
        n_steps = len(traj["steps"])
        removed_before = layers_before_collapse(traj)["removed"]
        rows.append(
            {
                "run": label,
                "strategy": traj["strategy"],
                "accuracy_unpruned": traj["step0"]["eval_accuracy"],
                "steps_run": n_steps,
                "accuracy_last": traj["steps"][-1]["eval_accuracy"]
                if n_steps
                else traj["step0"]["eval_accuracy"],
                "layers_removed_before_collapse": removed_before,
                "collapse_step": c.get("step"),
                "collapse_layer": str(c.get("removed_layer")) if c.get("step") else None,
                "collapse_phase": c.get("phase_of_removed"),
                "removed_order": ",".join(str(s["removed_layer"]) for s in traj["steps"]),
                **_healing(traj, any(_healed(t) for t in trajs)),
            }
        )
    return pd.DataFrame(rows)


def _healed(traj: Trajectory) -> bool:
    return traj["settings"].get("heal", "none") != "none"


def _healing(traj: Trajectory, shown: bool) -> dict:
    """What healing restored, where any compared run is healed.

    The last step's accuracy with and without the maps (the same removals), and how many
    steps kept a map.
    """
    if not shown:
        return {}
    steps = traj["steps"]
    if not (_healed(traj) and steps):
        return {"heal": traj["settings"].get("heal", "none"), "accuracy_last_unhealed": None,
                "maps_kept": None}  # fmt: skip
    return {
        "heal": traj["settings"]["heal"],
        "accuracy_last_unhealed": steps[-1]["unhealed"]["eval_accuracy"],
        "maps_kept": sum(bool(s["heal"].get("map_sha256")) for s in steps),
    }


def run_compare(
    run_dirs: Sequence[str],
    out: str,
    *,
    reference: str | None = None,
    depth: int = 12,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Write ``OUT/compare.png``, ``OUT/compare.csv`` and ``OUT/compare.md``; return the table.

    With two runs or more on the same evaluation items, also ``OUT/headtohead.json`` and
    ``OUT/headtohead.md`` (:mod:`phaseprune.core.headtohead`): ``reference`` (default the first
    run) against every other; the table's ``attrs["headtohead"]`` holds it.
    """
    if len(run_dirs) < 1:
        raise UsageError("compare needs at least one run directory")
    trajs = [run.record for run in load_runs(list(run_dirs), "prune")]
    labels = [f"{t['strategy']} ({Path(d).name})" for t, d in zip(trajs, run_dirs, strict=True)]
    table = compare_table(trajs, labels)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from phaseprune.presentation.figures.png import write_compare_plot

    write_compare_plot(trajs, labels, out_dir / "compare.png")
    atomic_write_bytes(out_dir / "compare.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(
        out_dir / "compare.md",
        table.to_markdown(index=False).encode()
        if _has_tabulate()
        else table.to_string(index=False).encode(),
    )
    table.attrs["headtohead"] = write_headtohead(
        trajs,
        run_dirs,
        labels,
        out_dir,
        reference=reference,
        depth=depth,
        n_boot=n_boot,
        seed=seed,
    )
    return table


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


def _reference_label(trajs, run_dirs, labels, reference: str | None) -> str:
    """The label of ``reference``: a run directory's name or path, or a strategy (unique)."""
    if reference is None:
        return labels[0]
    for d, label in zip(run_dirs, labels, strict=True):
        if reference in (d, Path(d).name, label):
            return label
    matches = [label for t, label in zip(trajs, labels, strict=True) if t["strategy"] == reference]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(
            f"--reference {reference}: {len(matches)} runs use that strategy; name the run's "
            "directory instead"
        )
    raise UsageError(
        f"--reference {reference}: none of the runs ({', '.join(labels)}); give a run's "
        "directory or a strategy"
    )


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


OUTCOME_WORDS = {"deeper": "deeper than", "tied": "as deep as", "shallower": "shallower than"}


def verdict_sentence(h: dict) -> str:
    """The head-to-head's verdict in one sentence: deeper, tied or shallower, and claim (d)."""
    v = h["verdict"]
    claim = "supported" if v["supported"] else "not supported"
    claim += " (a tie)" if v["outcome"] == "tied" else ""
    why = {
        "deeper": "a paired win before the collapse of every baseline that deep"
        if v["supported"]
        else "but without a paired win before the collapse of every baseline that deep",
        "tied": "a tie: areas may order tied runs, they do not break the tie",
        "shallower": f"short by {v['shortfall']}",
    }[v["outcome"]]
    return (
        f"Verdict: {h['reference']} keeps 90% to depth {v['depth_90']}, "
        f"**{OUTCOME_WORDS[v['outcome']]}** the deepest baseline ({v['best_other']}, depth "
        f"{v['best_other_depth_90']}; baselines: {', '.join(h['baselines'])}): {why}. "
        f"Claim (d): **{claim}**."
    )


def headtohead_markdown(h: dict) -> str:
    """headtohead.md: every run's depths and area, then the reference against each run."""
    depth = h["depth"]
    lines = [
        f"# Head-to-head against {h['reference']}",
        "",
        f"| run | keeps 90% to depth | keeps 80% to depth | area to depth {depth} | "
        f"accuracy at {depth} | collapse (layers removed) | deepest |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in h["rows"]:
        area = "—" if r["area"] is None else f"{r['area']:.3f}"
        lines.append(
            f"| {r['run']} | {r['depth_90']} | {r['depth_80']} | {area} | "
            f"{_pct(r['accuracy_at'].get(depth))} | {r['collapse_depth'] or '—'} | "
            f"{r['deepest']} |"
        )
    lines += [
        "",
        f"Paired differences ({h['reference']} minus the other run, 95% paired "
        "bootstrap interval over items; * where it excludes zero), and McNemar's exact test "
        "at the first depth where either run keeps less than 90%:",
        "",
    ]
    if not h["paired"]:
        lines += ["Some runs were made before each item's answer was kept: no paired numbers."]
    for p in h["pairs"]:
        cells = [
            f"{d['depth']}: {100 * d['difference']:+.1f} [{100 * d['ci'][0]:+.1f}, "
            f"{100 * d['ci'][1]:+.1f}]{'*' if d['excludes_zero'] else ''}"
            for d in p["differences"]
        ]
        m = p["mcnemar"]
        test = (
            "—"
            if m is None
            else (
                f"depth {m['depth']}: {m['a_only']} items only {p['run']} gets right, "
                f"{m['b_only']} only {p['against']}; p = {m['p']:.3g}"
            )
        )
        joined = "; ".join(cells) or "no common depth"
        lines += [f"- **{p['against']}**: {joined}. McNemar: {test}."]
    v = h["verdict"]
    if v.get("outcome") is not None:
        lines += ["", verdict_sentence(h)]
        for r in v["at_best_depth"]:
            wins, losses = (", ".join(map(str, r[k])) or "none"
                            for k in ("paired_wins_at", "paired_losses_at"))  # fmt: skip
            lines += [
                f"- against {r['run']} (90% to depth {v['best_other_depth_90']}), before its "
                f"collapse: paired wins at depths {wins}; paired losses at depths {losses}."
            ]
        if v.get("pending"):
            lines += [
                f"Provisional: still at 90% at every depth reached, so only a lower bound on "
                f"their depth: {', '.join(v['pending'])}."
            ]
    return "\n".join(lines) + "\n"


def write_headtohead(
    trajs, run_dirs, labels, out_dir: Path, *, reference, depth, n_boot, seed
) -> dict | None:
    """headtohead.json and headtohead.md (None for a single run).

    ``load_runs`` already refused runs on other evaluation items.
    """
    import json

    from phaseprune.core.headtohead import head_to_head

    if len(trajs) < 2:
        return None
    ref = _reference_label(trajs, run_dirs, labels, reference)
    h = head_to_head(trajs, labels, ref, depth=depth, n_boot=n_boot, seed=seed)
    atomic_write_bytes(out_dir / "headtohead.json", json.dumps(h, indent=1, default=str).encode())
    atomic_write_bytes(out_dir / "headtohead.md", headtohead_markdown(h).encode())
    return h
