"""Run directories for a report: checked records and the banners above an incomplete run.

The records come from the one loader, :func:`phaseprune.runs.files.load_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from phaseprune.runs import files as runs
from phaseprune.runs.files import RunRecord
from phaseprune.runs.records import RunKind


@dataclass(frozen=True)
class Run:
    """One run directory, read and checked, with what the page must warn about."""

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


def _warnings(kind: RunKind, path: Path, record: dict) -> list[str]:
    notes = []
    if kind == "analyze" and not (path / "items.parquet").exists():
        notes.append(
            "items.parquet is missing from this run: the report uses summary.json alone, "
            "which holds every number shown here."
        )
    if kind == "prune" and not record["complete"]:
        wanted = record["settings"].get("steps", "?")
        notes.append(
            f"This pruning run is incomplete: {len(record['steps'])} of {wanted} steps were "
            "written (it was stopped or is still running). Only the completed steps are shown "
            "and the collapse is provisional. Continue it with the same `phaseprune prune` "
            "command plus --resume, then rebuild the report."
        )
    if kind == "prune" and not (path / "candidates.parquet").exists():
        notes.append("candidates.parquet is missing from this run (not needed for this report).")
    return notes


def _with_warnings(rec: RunRecord) -> Run:
    notes = _warnings(rec.kind, rec.path, rec.record)
    return Run(rec.path, rec.kind, rec.record, rec.complete, tuple(notes))


def load_run(path: str | Path) -> Run:
    """Read one run directory (or its ``summary.json`` / ``trajectory.json``) and check it."""
    return _with_warnings(runs.load_run(path))


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Read several run directories, each once; prune runs among them must be comparable."""
    return [_with_warnings(rec) for rec in runs.load_runs(list(paths))]
