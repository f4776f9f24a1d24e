"""The study's committed records: what a stage has done, kept into and restored from the repo.

Each stage's small records (trajectory.json, candidates.parquet, summary.json, an analyze run's
per-item readout items.parquet; never weights) are copied into ``experiments/records/`` and
committed, so that a fresh machine resumes instead of starting over. The stages
(:mod:`phaseprune_study.stages`) keep and restore them; the document
(:mod:`phaseprune_study.document`) restores them to read runs made on other machines.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from phaseprune.runs.files import load_trajectory
from phaseprune_study.plans import ROOT, Plan

RECORDS = ROOT / "experiments" / "records"
"""Where each stage's small records are committed, as ``<plan>/<stage>/``."""
RECORD_FILES = ("trajectory.json", "candidates.parquet", "summary.json", "items.parquet")


def committed(plan: Plan, stage: str) -> Path:
    """The folder of ``plan``'s ``stage`` under :data:`RECORDS` (it may not exist)."""
    return RECORDS / plan.name / stage


def has_records(path: Path) -> bool:
    """Whether ``path`` holds any of a stage's record files (a run directory or its records)."""
    return any((path / f).exists() for f in RECORD_FILES)


def done(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` finished (an analyze summary, or a complete trajectory)."""
    if (run_dir / "summary.json").exists():
        return True
    return (run_dir / "trajectory.json").exists() and load_trajectory(run_dir)["complete"]


def steps_done(run_dir: Path) -> int:
    """Pruning steps recorded in ``run_dir`` (0 without a trajectory)."""
    exists = (run_dir / "trajectory.json").exists()
    return len(load_trajectory(run_dir)["steps"]) if exists else 0


def keep(plan: Plan, name: str, out: Path) -> None:
    """Copy a stage's small records into experiments/records/ (committed with the code)."""
    target = committed(plan, name)
    if (out.parent / "log.json").exists():  # every invocation's wall time, for the document
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out.parent / "log.json", target.parent / "log.json")
    for f in RECORD_FILES:
        if (out / f).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / f, target / f)


def keep_all(plan: Plan, run_root: Path) -> list[str]:
    """:func:`keep` every stage found under ``run_root``; returns the stages kept.

    Records are written atomically, so a stage running meanwhile is copied as of its last
    completed step.
    """
    kept = []
    for out in sorted(p for p in run_root.glob("*") if p.is_dir()):
        if has_records(out):
            keep(plan, out.name, out)
            kept.append(out.name)
    return kept


def restore(plan: Plan, name: str, out: Path) -> None:
    """On a machine without the stage's run directory, start from the committed records.

    ``prune --resume`` then continues from the last step recorded (its fingerprint still
    checks the model, items and settings).
    """
    source = committed(plan, name)
    log = source.parent / "log.json"
    if log.exists() and not (out.parent / "log.json").exists():  # earlier machines' wall time
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, out.parent / "log.json")
    if (out / "trajectory.json").exists() or (out / "summary.json").exists():
        return
    if not has_records(source):  # analyze keeps a summary only
        return
    out.mkdir(parents=True, exist_ok=True)
    for f in RECORD_FILES:
        if (source / f).exists():
            shutil.copyfile(source / f, out / f)


def stage_runs(plan: Plan, run_root: Path, names: list[str]) -> dict[str, dict]:
    """The trajectories of ``names`` (stages of ``plan``) with at least one step, in that order.

    Stages only in experiments/records/ (made on another machine) are restored first.
    """
    runs = {}
    for name in names:
        out = run_root / name
        restore(plan, name, out)
        if (out / "trajectory.json").exists():
            traj = load_trajectory(out)
            if traj["steps"]:
                runs[name] = traj
    return runs
