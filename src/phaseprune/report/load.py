"""Read run directories for a report: tell what kind of run each is and refuse what isn't one.

A report is built from run directories alone. ``summary.json`` marks a complete ``analyze``
run, ``trajectory.json`` a ``prune`` run (complete or not: every finished step is in it). Every
problem becomes a :class:`~phaseprune.errors.UsageError` that names the directory, what is
wrong and what to do about it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from phaseprune.errors import UsageError
from phaseprune.records import SCHEMA_VERSION, TRAJECTORY_SCHEMA

RunKind = Literal["analyze", "prune"]

ANALYZE_KEYS = (
    "schema_version", "kind", "model", "task", "accuracy", "accuracy_ci", "chance", "n_layers",
    "gold_frequency", "layers", "transition_layer", "transition_ci", "p_no_transition", "phases",
)  # fmt: skip
PRUNE_KEYS = (
    "schema_version", "kind", "model", "task", "strategy", "objective", "settings",
    "eval_items", "chance", "n_layers", "step0", "steps", "complete",
)  # fmt: skip
COMPARE_FILES = ("compare.csv", "compare.md", "compare.png")


@dataclass(frozen=True)
class Run:
    """One run directory, read and checked."""

    path: Path
    """The run directory."""
    kind: RunKind
    """``"analyze"`` (``summary.json``) or ``"prune"`` (``trajectory.json``)."""
    record: dict
    """The parsed ``summary.json`` or ``trajectory.json``."""
    complete: bool
    """False for a pruning run whose ``trajectory.json`` says ``complete: false``."""
    warnings: tuple[str, ...]
    """Problems that do not stop the report, shown as banners at the top of its section."""

    @property
    def name(self) -> str:
        """The directory's own name, as runs are labelled on the page."""
        return self.path.resolve().name


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UsageError(
            f"{path} is not valid JSON ({err.msg} at line {err.lineno}): the file is damaged; "
            "rerun the command that wrote it"
        ) from None
    if not isinstance(record, dict):
        raise UsageError(f"{path} holds no JSON object; rerun the command that wrote it")
    return record


def _check_record(path: Path, record: dict, kind: RunKind, version: int, keys: tuple) -> None:
    found = record.get("schema_version")
    if found != version:
        raise UsageError(
            f"{path} has schema_version {found}, this phaseprune reads {version}: build the "
            f"report with the phaseprune that wrote the run, or rerun `phaseprune {kind}`"
        )
    if record.get("kind") != kind:
        raise UsageError(
            f"{path} says kind {record.get('kind')!r}, expected {kind!r}: the file was edited or "
            f"misplaced; rerun `phaseprune {kind}`"
        )
    missing = [k for k in keys if k not in record]
    if missing:
        raise UsageError(
            f"{path} lacks {', '.join(missing)}: not a {kind} record this phaseprune wrote; "
            f"rerun `phaseprune {kind}`"
        )


def _not_a_run(path: Path) -> UsageError:
    if any((path / name).exists() for name in COMPARE_FILES):
        return UsageError(
            f"{path} is the output of `phaseprune compare`, not a run: pass the prune run "
            "directories it compared, e.g. `phaseprune report runs/iter runs/phase`"
        )
    if (path / "partial").is_dir() or (path / "items.parquet").exists():
        return UsageError(
            f"{path} holds an incomplete analyze run (no summary.json): rerun the same "
            "`phaseprune analyze` command, which resumes from its finished batches, then report"
        )
    return UsageError(
        f"{path} is not a phaseprune run: it has neither summary.json (analyze) nor "
        "trajectory.json (prune); pass a directory given as --out to one of those commands"
    )


def _analyze(path: Path) -> Run:
    record = _read_json(path / "summary.json")
    _check_record(path / "summary.json", record, "analyze", SCHEMA_VERSION, ANALYZE_KEYS)
    notes = []
    if not (path / "items.parquet").exists():
        notes.append(
            "items.parquet is missing from this run: the report uses summary.json alone, "
            "which holds every number shown here."
        )
    return Run(path, "analyze", record, True, tuple(notes))


def _prune(path: Path) -> Run:
    record = _read_json(path / "trajectory.json")
    _check_record(path / "trajectory.json", record, "prune", TRAJECTORY_SCHEMA, PRUNE_KEYS)
    notes = []
    complete = bool(record["complete"])
    if not complete:
        wanted = record["settings"].get("steps", "?")
        notes.append(
            f"This pruning run is incomplete: {len(record['steps'])} of {wanted} steps were "
            "written (it was stopped or is still running). Only the completed steps are shown "
            "and the collapse is provisional. Continue it with the same `phaseprune prune` "
            "command plus --resume, then rebuild the report."
        )
    if not (path / "candidates.parquet").exists():
        notes.append("candidates.parquet is missing from this run (not needed for this report).")
    return Run(path, "prune", record, complete, tuple(notes))


def load_run(path: str | Path) -> Run:
    """Read one run directory (or its ``summary.json`` / ``trajectory.json``) and check it."""
    path = Path(path)
    if path.is_file() and path.name in ("summary.json", "trajectory.json"):
        path = path.parent
    if not path.exists():
        raise UsageError(f"{path} does not exist: pass a run directory (an --out of analyze/prune)")
    if not path.is_dir():
        raise UsageError(f"{path} is a file, not a run directory: pass the directory it is in")
    has_summary = (path / "summary.json").is_file()
    has_trajectory = (path / "trajectory.json").is_file()
    if has_summary and has_trajectory:
        raise UsageError(
            f"{path} holds both summary.json and trajectory.json: keep one run per directory"
        )
    if has_summary:
        return _analyze(path)
    if has_trajectory:
        return _prune(path)
    raise _not_a_run(path)


def check_comparable(runs: list[Run]) -> None:
    """Refuse prune runs that cannot share one axis: another model or other evaluation items."""
    prune = [r for r in runs if r.kind == "prune"]
    if len(prune) < 2:
        return
    ref = prune[0]
    for run in prune[1:]:
        a, b = run.record["model"], ref.record["model"]
        if (a.get("name"), a.get("revision")) != (b.get("name"), b.get("revision")):
            raise UsageError(
                f"{run.path} is a run of {a.get('name')}, {ref.path} of {b.get('name')}: "
                "compare pruning runs of one model (report them one at a time otherwise)"
            )
        if run.record["eval_items"] != ref.record["eval_items"]:
            raise UsageError(
                f"{run.path} was evaluated on other items than {ref.path}: compare runs made "
                "with the same --task, --calib and --eval (report them one at a time otherwise)"
            )


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Read several run directories; prune runs among them must be comparable."""
    if not paths:
        raise UsageError("report needs at least one run directory")
    runs = [load_run(p) for p in paths]
    seen: dict[Path, Path] = {}
    for run, given in zip(runs, paths, strict=True):
        key = run.path.resolve()
        if key in seen:
            raise UsageError(f"{given} is given twice (as {seen[key]}): pass each run once")
        seen[key] = Path(given)
    check_comparable(runs)
    return runs
