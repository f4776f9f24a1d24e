"""``lm_eval:NAME``: a multiple-choice task of lm-evaluation-harness's registry, or a user's own.

NAME is a task, group or tag that lm-eval's ``TaskManager`` knows: one of its built-in tasks,
one defined by a YAML in the folder given as ``--lm-eval-include DIR`` (lm-eval's
``--include_path``), or the path of such a YAML file itself (``lm_eval:my_tasks/toy.yaml``).
lm-eval reads the data from wherever the task config points: the hub, or the local files named
in ``dataset_kwargs: {data_files: ...}`` (with ``dataset_path: json``, ``csv`` or ``parquet``).
Each leaf task of a group is one subject.

How lm-eval's task becomes phaseprune's lettered items. lm-eval scores a multiple-choice doc by
the loglikelihood of each choice as a continuation of ``doc_to_text(doc)``; phaseprune reads
the option letters after ``Answer:``. So an item's question is lm-eval's ``doc_to_text(doc)``
less a trailing ``Answer:`` (phaseprune puts its own after the options), its options are
``doc_to_choice(doc)`` and its answer is ``doc_to_target(doc)`` (an index, or a choice's text),
rendered in phaseprune's layout (question, ``A. option`` lines, ``Answer:``). A task whose
choices are the letters themselves (lm-eval's MMLU layout: the options are already listed in
``doc_to_text``) is read back into question and options, and only if phaseprune's rendering
then gives lm-eval's text exactly. lm-eval's ``description``, delimiters and random few-shot
sampling are not used: exemplars are the first k of ``fewshot_docs()`` (the task's
``fewshot_split``, else its training, validation or test split), and when those are the
scored split they are left out of the scored items. The scored split is the task's test split,
else its validation split (as lm-eval picks). Rows whose option count differs from the task's
most common one are dropped and recorded. Generation, loglikelihood and multiple-input
(WinoGrande-style) tasks are refused.

lm-evaluation-harness is an optional extra (``pip install 'phaseprune[lm-eval]'``), imported
only here and in :mod:`phaseprune.runs.lm_eval_scores`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from phaseprune.core.errors import UsageError, first_line, suggest
from phaseprune.core.items import LETTERS, MCItem, TaskData, assemble, make_item
from phaseprune.tasks.lm_eval_templates import failing_field, render, yaml_of
from phaseprune.tasks.mmlu import choose_subjects

PREFIX = "lm_eval:"
SOURCE_KIND = "lm-eval"
INSTALL = "pip install 'phaseprune[lm-eval]'"
_CUE = "Answer:"  # phaseprune.core.prompts.ANSWER_CUE (not imported: prompts imports this package)


def is_lm_eval_task(name: str) -> bool:
    """Whether ``name`` is an ``lm_eval:NAME`` task."""
    return name.startswith(PREFIX)


def require_lm_eval(what: str) -> None:
    """Refuse ``what`` in one line when lm-evaluation-harness is not installed.

    Raises:
        UsageError: Naming the extra to install.
    """
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UsageError(f"{what} needs lm-evaluation-harness: {INSTALL}") from None


@functools.lru_cache(maxsize=4)
def task_manager(include: str | None, defaults: bool):
    """lm-eval's task index over the ``include`` folder and/or its built-in tasks.

    Indexing the built-in tasks takes seconds, so a manager is built once per process.
    """
    from lm_eval.tasks import TaskManager

    with lm_eval_quiet():
        return TaskManager(include_path=include, include_defaults=defaults)


@contextlib.contextmanager
def lm_eval_quiet() -> Iterator[None]:
    """lm-eval's log at ERROR only: its per-task config notes and warnings are not the user's.

    (``HFLM`` warns that a model object bypasses its loading arguments, which is intended.)
    """
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def manager_for(names: Sequence[str], include: str | None):
    """lm-eval's ``TaskManager`` for ``names``: the include path alone if it knows them all.

    Raises:
        UsageError: If the include path does not exist or a name is in no index.
    """
    if include is None and names and all(_is_yaml(name) for name in names):
        include = str(Path(names[0]).expanduser().parent)  # a YAML's own folder, not all of lm-eval
    if include is not None:
        if not Path(include).expanduser().is_dir():
            raise UsageError(
                f"--lm-eval-include {include}: no such folder; give the folder of your task"
                " YAMLs (or name one YAML file as the task: lm_eval:PATH.yaml)"
            )
        own = task_manager(str(Path(include).expanduser()), False)
        if all(name in own.all_tasks or _is_yaml(name) for name in names):
            return own
        include = str(Path(include).expanduser())
    manager = task_manager(include, True)
    for name in names:
        if name not in manager.all_tasks and not _is_yaml(name):
            where = "lm-eval's registry" + (f" or {include}" if include else "")
            raise UsageError(
                f"lm-eval task {name!r} is not in {where}{suggest(name, manager.all_tasks)};"
                " name a registered task or pass your task folder with --lm-eval-include"
            )
    return manager


def task_specs(names: Sequence[str]) -> list[str]:
    """The names as lm-eval's ``TaskManager.load`` takes them (a YAML path expanded)."""
    return [str(Path(n).expanduser()) if _is_yaml(n) else n for n in names]


def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()


def build_tasks(names: Sequence[str], include: str | None) -> dict[str, Any]:
    """lm-eval's leaf task objects for ``names`` (tasks, groups, tags or YAML paths), in order.

    Raises:
        UsageError: If lm-eval is missing, a name is unknown, or the task cannot be built
            (its data cannot be read, its config is malformed).
    """
    require_lm_eval(f"lm-eval task {', '.join(names)}")
    from jinja2 import TemplateError

    manager = manager_for(names, include)
    specs = task_specs(names)
    index = getattr(manager, "task_index", {})
    try:
        with lm_eval_quiet():
            tasks = dict(manager.load(specs)["tasks"])
    except TemplateError as err:  # lm-eval renders a doc while building the task
        field = failing_field(err.__traceback__)
        yamls = [yaml_of(index, n) or (n if _is_yaml(n) else None) for n in names]
        yaml = next((y for y in yamls if y), "the task YAML")
        raise UsageError(
            f"lm-eval task {', '.join(names)}: the task's {field} failed "
            f"({type(err).__name__}: {first_line(err)}); fix {field} in {yaml}"
        ) from None
    except (KeyError, ValueError, TypeError, OSError, ImportError) as err:
        raise UsageError(
            f"lm-eval could not build {', '.join(names)}: {first_line(err)}; check the task's"
            " YAML and that its data is reachable (the hub, or the data_files it names)"
        ) from err
    for name, task in tasks.items():  # where its YAML is, for an error in a template
        if yaml := yaml_of(index, name):
            with contextlib.suppress(AttributeError):
                task.phaseprune_yaml = yaml
    return tasks


def load_lm_eval_task(
    name: str,
    subjects: Sequence[str] | None,
    shots: int,
    limit: int | None,
    include: str | None = None,
) -> TaskData:
    """Load ``lm_eval:NAME`` as lettered items; see the module docstring for the mapping.

    Args:
        name: ``"lm_eval:NAME"``; NAME a task, group, tag or YAML path.
        subjects: Leaf tasks to keep (a group's members), in this order; None keeps all.
        shots: Exemplars per subject, the first of the task's few-shot docs.
        limit: Keep N scored items spread over the subjects; None keeps all.
        include: lm-eval's include path: a folder of task YAMLs.

    Returns:
        The task; ``source_kind`` is ``"lm-eval"``.

    Raises:
        UsageError: If lm-eval is missing, the task is unknown or not multiple choice, or a
            doc does not make an item.
    """
    spec = name[len(PREFIX) :]
    if not spec:
        raise UsageError(f"task {name!r} names no lm-eval task; write lm_eval:NAME")
    tasks = build_tasks([spec], include)
    chosen = choose_subjects(name, subjects, list(tasks), f"lm-eval's {spec}")
    scored: dict[str, list[MCItem]] = {}
    splits: dict[str, str] = {}
    for subject in chosen:
        task = tasks[subject]
        _check_multiple_choice(subject, task)
        splits[subject], docs = _scored_docs(task)
        # limit keeps each subject's first rows, so no more need be read (exemplars aside)
        take = None if limit is None else limit + shots
        scored[subject] = [_item(task, subject, f"{subject}/{i}", d) for i, d in _first(docs, take)]
    scored, dropped = _common_option_count(scored)
    if dropped:  # said where it is seen, not only in the record's dropped_items
        n = len(next(iter(it for items in scored.values() for it in items)).options)
        kept = sum(len(items) for items in scored.values())
        warnings.warn(
            f"{spec}: {len(dropped)} of {len(dropped) + kept} docs have another number of "
            f"choices than the most common ({n}) and are left out (phaseprune scores one "
            "option count per task)",
            stacklevel=2,
        )
    dev, excluded = _exemplars(tasks, splits, scored, shots)
    source = (
        f"lm-eval {spec} ({'; '.join(f'{s}: {_dataset(tasks[s])}' for s in chosen)}): its"
        " doc_to_text and choices, rendered in phaseprune's lettered layout"
    )
    task_data = assemble(
        name=name,
        split=",".join(dict.fromkeys(splits.values())),
        source=source,
        source_kind=SOURCE_KIND,
        shots=shots,
        limit=limit,
        scored=scored,
        dev=dev,
        dropped=dropped,
    )
    return dataclasses.replace(task_data, excluded=tuple(excluded))


def _exemplars(
    tasks: dict[str, Any], splits: dict[str, str], scored: dict[str, list[MCItem]], shots: int
) -> tuple[dict[str, list[MCItem]], list[str]]:
    """Each subject's first ``shots`` few-shot docs, and the scored items they take away.

    Few-shot docs from the scored split are its first rows, removed from ``scored`` (in place)
    and returned as excluded, as for the built-in tasks without a dev split.
    """
    dev: dict[str, list[MCItem]] = {}
    excluded: list[str] = []
    for subject, items in scored.items():
        task, fewshot_split = tasks[subject], _fewshot_split(tasks[subject])
        if shots and fewshot_split == splits[subject]:
            dev[subject], scored[subject] = items[:shots], items[shots:]
            excluded += [ex.item_id for ex in dev[subject]]
        elif shots:
            dev[subject] = [
                _item(task, subject, f"{subject}/{fewshot_split}/{i}", d, True)
                for i, d in _first(task.fewshot_docs(), shots)
            ]
        else:
            dev[subject] = []
    return dev, excluded


def _first(docs, n: int | None) -> list[tuple[int, dict]]:
    out = []
    for i, doc in enumerate(docs):
        if n is not None and i >= n:
            break
        out.append((i, doc))
    return out


def _check_multiple_choice(subject: str, task) -> None:
    kind = getattr(task, "OUTPUT_TYPE", None)
    if kind != "multiple_choice":
        raise UsageError(
            f"lm-eval task {subject!r} is {kind}, not multiple_choice; phaseprune reads"
            " multiple-choice tasks only: pick one whose output_type is multiple_choice"
        )
    if getattr(task, "multiple_input", 0):
        raise UsageError(
            f"lm-eval task {subject!r} puts its options in the context (multiple input, as"
            " WinoGrande); phaseprune needs one question and lettered options: use the"
            " built-in winogrande task"
        )


def _scored_docs(task) -> tuple[str, Any]:
    # as lm-eval's Task.eval_docs: the test split when the task has one, else validation
    if task.has_test_docs():
        return task.config.test_split, task.test_docs()
    if task.has_validation_docs():
        return task.config.validation_split, task.validation_docs()
    raise UsageError(f"lm-eval task {task.task_name!r} has no test or validation split to score")


def _fewshot_split(task) -> str:
    # as lm-eval's ConfigurableTask.fewshot_docs
    cfg = task.config
    fewshot = getattr(task, "fewshot_cfg", None)
    if fewshot is not None and fewshot.split is not None:
        return fewshot.split
    if fewshot is not None and cfg.fewshot_config is not None and fewshot.samples is not None:
        return "fewshot_config.samples"
    return cfg.training_split or cfg.validation_split or cfg.test_split


def _dataset(task) -> str:
    cfg = task.config
    name = f" {cfg.dataset_name}" if cfg.dataset_name else ""
    files = (cfg.dataset_kwargs or {}).get("data_files")
    return f"{cfg.dataset_path}{name}" + (f" {files}" if files else "")


def _item(task, subject: str, item_id: str, doc: dict, fewshot: bool = False) -> MCItem:
    where = f"lm-eval task {subject!r}, doc {item_id}"
    fs = getattr(task, "fewshot_cfg", None) if fewshot else None
    fields = ("doc_to_text", "doc_to_choice", "doc_to_target")
    text, choices, target = (render(task, field, doc, fs, where) for field in fields)
    if not isinstance(text, str):
        raise UsageError(f"{where}: doc_to_text gave {text!r:.40}, not text; it must give text")
    if not isinstance(choices, list | tuple):
        raise UsageError(f"{where}: doc_to_choice gave {choices!r:.40}, not a list of choices")
    choices = [str(c) for c in choices]
    answer = _answer(target, choices, where)
    if choices == list(LETTERS[: len(choices)]):
        question, options = _lettered(text, len(choices), where)
    else:
        question, options = _question(text), choices
    return make_item(item_id, subject, question, options, answer, where)


def _answer(target: object, choices: list[str], where: str) -> int:
    # as lm-eval's multiple_choice process_results: an index, or a choice's text
    if isinstance(target, str) and target in choices:
        return choices.index(target)
    if isinstance(target, str) and target.strip().isdigit():
        target = int(target.strip())
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(choices):
        return target
    raise UsageError(
        f"{where}: doc_to_target gave {target!r:.40}, neither a choice nor an index among the"
        f" {len(choices)} choices (several gold answers are not supported)"
    )


def _question(text: str) -> str:
    body = text.rstrip()
    return body[: -len(_CUE)].rstrip() if body.endswith(_CUE) else body


def _lettered(text: str, n: int, where: str) -> tuple[str, list[str]]:
    """Question and options of a text that lists its options itself (lm-eval's MMLU layout)."""
    from phaseprune.core.prompts import format_item  # the prompt module imports this package

    lines = _question(text).split("\n")
    tail = lines[-n:] if len(lines) > n else []
    if all(line.startswith(f"{LETTERS[i]}. ") for i, line in enumerate(tail)) and tail:
        question, options = "\n".join(lines[:-n]), [line[3:] for line in tail]
        if format_item(MCItem("", "", question, tuple(options), 0)) == text:
            return question, options
    raise UsageError(
        f"{where}: the choices are the letters {LETTERS[0]}-{LETTERS[n - 1]} but the text does not"
        " end in lines 'A. ...' and 'Answer:' as phaseprune writes them; phaseprune letters the"
        " options itself, so give choices that are the answer texts"
    )


def _common_option_count(
    scored: dict[str, list[MCItem]],
) -> tuple[dict[str, list[MCItem]], list[str]]:
    """Keep the rows with the most common option count (as the built-in ARC loader does)."""
    counts = Counter(len(it.options) for items in scored.values() for it in items)
    if not counts:
        return scored, []
    n = counts.most_common(1)[0][0]
    kept = {s: [it for it in items if len(it.options) == n] for s, items in scored.items()}
    dropped = [it.item_id for items in scored.values() for it in items if len(it.options) != n]
    return kept, dropped
