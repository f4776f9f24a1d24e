"""``phaseprune compare``: several pruning runs of one model on the same items, side by side."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from phaseprune.errors import UsageError
from phaseprune.evidence import layers_before_collapse
from phaseprune.records import TRAJECTORY_SCHEMA
from phaseprune.runio import atomic_write_bytes


def load_trajectory(run_dir: str | Path) -> dict:
    """Read a pruning run's ``trajectory.json`` with clear errors for anything else."""
    path = Path(run_dir) / "trajectory.json"
    if not path.is_file():
        hint = (
            " (an analyze run: compare takes prune runs)"
            if (Path(run_dir) / "summary.json").exists()
            else ""
        )
        raise UsageError(f"{run_dir} is not a pruning run: no trajectory.json{hint}")
    traj = json.loads(path.read_text())
    if traj.get("schema_version") != TRAJECTORY_SCHEMA:
        raise UsageError(
            f"{path} has schema_version {traj.get('schema_version')}, expected {TRAJECTORY_SCHEMA}"
        )
    return traj


def _same(trajs: Sequence[dict], dirs: Sequence[str]) -> None:
    ref = trajs[0]
    for traj, d in zip(trajs[1:], dirs[1:], strict=True):
        if (
            traj["model"]["revision"] != ref["model"]["revision"]
            or traj["model"]["name"] != ref["model"]["name"]
        ):
            raise UsageError(
                f"{d} is a run of {traj['model']['name']}, {dirs[0]} of "
                f"{ref['model']['name']}; compare runs of one model"
            )
        if traj["eval_items"] != ref["eval_items"]:
            raise UsageError(
                f"{d} was evaluated on other items than {dirs[0]}; "
                "compare runs with the same --calib/--eval"
            )


def compare_table(trajs: Sequence[dict], labels: Sequence[str]) -> pd.DataFrame:
    """One row per run: accuracy before, layers removable before collapse, collapse details."""
    rows = []
    for traj, label in zip(trajs, labels, strict=True):
        c = traj.get("collapse") or {}
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
    trajs = [load_trajectory(d) for d in run_dirs]
    _same(trajs, run_dirs)
    labels = [f"{t['strategy']} ({Path(d).name})" for t, d in zip(trajs, run_dirs, strict=True)]
    table = compare_table(trajs, labels)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from phaseprune.prune_plots import write_compare_plot

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
