"""``phaseprune compare``: several pruning runs of one model on the same items, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from phaseprune.errors import UsageError
from phaseprune.evidence import layers_before_collapse
from phaseprune.records import Trajectory
from phaseprune.runio import atomic_write_bytes
from phaseprune.runs import load_runs


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
            }
        )
    return pd.DataFrame(rows)


def run_compare(run_dirs: Sequence[str], out: str) -> pd.DataFrame:
    """Write ``OUT/compare.png``, ``OUT/compare.csv`` and ``OUT/compare.md``; return the table."""
    if len(run_dirs) < 1:
        raise UsageError("compare needs at least one run directory")
    trajs = [run.record for run in load_runs(list(run_dirs), "prune")]
    labels = [f"{t['strategy']} ({Path(d).name})" for t, d in zip(trajs, run_dirs, strict=True)]
    table = compare_table(trajs, labels)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from phaseprune.figures.png import write_compare_plot

    write_compare_plot(trajs, labels, out_dir / "compare.png")
    atomic_write_bytes(out_dir / "compare.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(
        out_dir / "compare.md",
        table.to_markdown(index=False).encode()
        if _has_tabulate()
        else table.to_string(index=False).encode(),
    )
    return table


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
