"""User multiple-choice data: files and datasets of the user's own.

* ``csv:PATH`` (a header row) and ``jsonl:PATH`` (an object a line), read here line by line
  so an error names the line;
* ``json:PATH`` (a JSON list of objects, or JSON lines) and ``parquet:PATH``, read through
  ``datasets.load_dataset``'s ``json`` and ``parquet`` builders;
* ``hf:DATASET[:CONFIG][@SPLIT]``: a hub dataset id (or a local dataset folder), read through
  ``datasets.load_dataset``; without ``@SPLIT`` the first of test, validation, train present.

Fields, by name (CSV headers are matched case-insensitively, surrounding spaces ignored):

* ``question`` (required);
* the options: either ``choices``, a JSON list of strings (in a CSV cell, a JSON-encoded list
  such as ``["red", "blue"]``), or one field per option named ``A``, ``B``, ... (or
  ``option_a``, ``option_b``, ...), consecutive from ``A``, not both. With option fields a
  row's empty trailing options are left out, so an ``A``-``E`` file may hold 4-option rows
  (but all items must end up with the same number of options);
* ``answer`` (required): a letter ``A``-``J`` or a 0-based index;
* ``subject`` (optional): defaults to the file's stem;
* ``id`` (optional): the item's id, unique in the file; without it the id is
  ``subject/row``, row being the 0-based index of the record among the data records (header
  and blank lines not counted).

A file is one split, recorded as ``test``. Items are ordered by subject (as requested,
else alphabetical), then by file order, and each subject's first k records are its
exemplars and are not scored, as for built-in tasks without a dev split.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from phaseprune.core.errors import UsageError, first_line
from phaseprune.core.items import (
    LETTERS,
    MCItem,
    TaskData,
    assemble,
    check_option_count,
    make_item,
    parse_answer,
)
from phaseprune.tasks.mmlu import choose_subjects

PREFIXES = {
    "csv:": "user-csv",
    "jsonl:": "user-jsonl",
    "json:": "user-json",
    "parquet:": "user-parquet",
    "hf:": "hf-dataset",
}
USER_SPLIT = "test"
HF_SPLITS = ("test", "validation", "train")
"""The split an ``hf:`` task reads when it names none: the first of these present."""


def is_user_task(name: str) -> bool:
    """Whether ``name`` is a user task (``csv:``, ``jsonl:``, ``json:``, ``parquet:``, ``hf:``)."""
    return name.startswith(tuple(PREFIXES))


def load_user_task(
    name: str, subjects: Sequence[str] | None, shots: int, limit: int | None
) -> TaskData:
    """Load a user task (``csv:``, ``jsonl:``, ``json:``, ``parquet:``, ``hf:``).

    The module docstring gives the fields and how each source is read.

    Raises:
        UsageError: For a missing file or dataset or malformed content, naming the file and
            the line (or record).
    """
    prefix = next(p for p in PREFIXES if name.startswith(p))
    raw = name[len(prefix) :]
    if not raw:
        raise UsageError(f"task {name!r} names nothing; write {prefix}PATH")
    split = USER_SPLIT
    if prefix == "hf:":
        records, split, source, path = _hf_records(raw)
    else:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UsageError(f"{path} does not exist or is not a file; check the path in {name!r}")
        source = str(path.resolve())
        records = {
            "csv:": _csv_records,
            "jsonl:": _jsonl_records,
            "json:": lambda p: _builder_records("json", p),
            "parquet:": lambda p: _builder_records("parquet", p),
        }[prefix](path)
    unit = "line" if prefix in ("csv:", "jsonl:") else "record"
    where = f"{source if prefix == 'hf:' else path}, {unit}"
    by_subject = _by_subject(records, path, where)
    chosen = choose_subjects(name, subjects, list(by_subject), str(path))
    return assemble(
        name=name,
        split=split,
        source=source,
        source_kind=PREFIXES[prefix],
        shots=shots,
        limit=limit,
        scored={s: by_subject[s] for s in chosen},
    )


def records_task(
    records, subjects: Sequence[str] | None = None, shots: int = 0, limit: int | None = None
) -> TaskData:
    """A task from items held in memory: a list of dicts or a ``pandas.DataFrame``.

    A row an item, with the fields a ``jsonl:`` file has (module docstring); the subject
    defaults to ``records``.

    Raises:
        UsageError: For anything else, or a malformed record (named by its 1-based number).
    """
    if hasattr(records, "to_dict") and hasattr(records, "columns"):  # a DataFrame
        records = records.to_dict("records")
    if not isinstance(records, list | tuple) or not all(isinstance(r, Mapping) for r in records):
        raise UsageError(
            f"task={type(records).__name__}: pass a task name, a list of dicts, a DataFrame, or "
            "a TaskData from phaseprune.tasks.load_task"
        )
    path = Path("records")
    by_subject = _by_subject(_lower_keys(records), path, "records, record")
    chosen = choose_subjects("records", subjects, list(by_subject), "the records")
    return assemble(
        name="records",
        split=USER_SPLIT,
        source="in memory",
        source_kind="records",
        shots=shots,
        limit=limit,
        scored={s: by_subject[s] for s in chosen},
    )


def _by_subject(records, path: Path, where: str) -> dict[str, list[MCItem]]:
    """Items by subject, in record order; ids checked unique."""
    by_subject: dict[str, list[MCItem]] = {}
    seen: set[str] = set()
    for row, (line, record) in enumerate(records):
        item = _record_item(record, row, path, f"{where} {line}")
        if item.item_id in seen:
            raise UsageError(f"{where} {line}: id {item.item_id!r} repeats; ids must be unique")
        seen.add(item.item_id)
        by_subject.setdefault(item.subject, []).append(item)
    if not by_subject:
        raise UsageError(f"{path} holds no records; add some rows")
    return by_subject


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    # Yields (line the record starts on, fields by lower-cased header name).
    line = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, strict=True)
            header = [h.strip().lower() for h in next(reader, [])]
            if "question" not in header:
                raise UsageError(
                    f"{path}, line 1: no 'question' column (header: {header}); add a header row"
                    " with question, choices or A, B, ..., and answer"
                )
            line = reader.line_num + 1
            for record in reader:
                start, line = line, reader.line_num + 1
                if not record:
                    continue
                if len(record) != len(header):
                    raise UsageError(
                        f"{path}, line {start}: {len(record)} fields but the header has"
                        f" {len(header)}; quote fields that contain commas"
                    )
                yield start, dict(zip(header, record, strict=True))
    except csv.Error as err:
        raise UsageError(f"{path}, line {line}: malformed CSV ({err}); fix the quoting") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from err
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}, line {number}: bad JSON ({err.msg}); fix the line") from err
        if not isinstance(record, dict):
            raise UsageError(f"{path}, line {number}: expected a JSON object, got {record!r:.40}")
        yield number, {str(k).strip().lower(): v for k, v in record.items()}


def _lower_keys(rows) -> Iterator[tuple[int, dict[str, object]]]:
    # (1-based record number, fields by lower-cased name) of a datasets.Dataset
    for number, record in enumerate(rows, start=1):
        yield number, {str(k).strip().lower(): v for k, v in record.items()}


def _builder_records(builder: str, path: Path) -> Iterator[tuple[int, dict[str, object]]]:
    """Records of a ``json:``/``parquet:`` file through ``datasets``' own builders."""
    from datasets import load_dataset

    try:
        with _quiet_datasets():
            rows = load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many kinds (ArrowInvalid, DatasetGenerationError)
        raise UsageError(
            f"{path}: cannot read it as {builder} ({first_line(err.__cause__ or err)}); "
            + (
                "write a JSON list of objects or one object a line"
                if builder == "json"
                else "write it with pandas.DataFrame.to_parquet or pyarrow"
            )
        ) from err
    return _lower_keys(rows)


def _open_dataset(local: Path, dataset: str, config: str, split: str):
    """A DatasetDict from a save_to_disk folder (a dict, or one split) or the hub."""
    import datasets

    if local.is_dir() and (local / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(local))
    if local.is_dir() and (local / "dataset_info.json").is_file():
        return datasets.DatasetDict({split or USER_SPLIT: datasets.load_from_disk(str(local))})
    return datasets.load_dataset(dataset, config or None)


@contextmanager
def _quiet_datasets():
    """Hide datasets' own progress bars (split generation, shard saving) while reading."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _hf_records(raw: str) -> tuple[Iterator, str, str, Path]:
    """Records, split, source and a display path of ``hf:DATASET[:CONFIG][@SPLIT]``."""
    where, _, split = raw.partition("@")
    dataset, _, config = where.partition(":")
    local = Path(dataset).expanduser()
    try:
        with _quiet_datasets():
            found = _open_dataset(local, dataset, config, split)
    except Exception as err:  # hub offline, unknown id or config, unreadable folder
        raise UsageError(
            f"cannot load dataset {dataset!r}{f' (config {config})' if config else ''}: "
            f"{first_line(err)}; pass a hub id the hub or its local cache holds, or a folder "
            "written by Dataset.save_to_disk"
        ) from err
    if split and split not in found:
        raise UsageError(f"dataset {dataset!r} has no split {split!r}; it has {list(found)}")
    split = split or next((s for s in HF_SPLITS if s in found), "")
    if not split:
        raise UsageError(
            f"dataset {dataset!r} has splits {list(found)}; name one as hf:{where}@SPLIT"
        )
    source = f"hf:{dataset}" + (f":{config}" if config else "") + f"@{split}"
    return _lower_keys(found[split]), split, source, Path(dataset)


def _record_item(record: Mapping[str, object], row: int, path: Path, where: str) -> MCItem:
    for required in ("question", "answer"):
        if required not in record:
            raise UsageError(f"{where}: no {required!r} field; add it")
    options = _options(record, where)
    check_option_count(len(options), where)  # before the answer, which is read against them
    answer = parse_answer(record["answer"], len(options), where)
    subject = str(record.get("subject") or "").strip() or path.stem
    given_id = str(record.get("id") or "").strip()
    item_id = given_id or f"{subject}/{row}"
    return make_item(item_id, subject, record["question"], options, answer, where)


def _options(record: Mapping[str, object], where: str) -> list[object]:
    letters = _letter_fields(record)
    if "choices" in record and letters:
        raise UsageError(f"{where}: both 'choices' and option fields {letters}; keep one")
    if "choices" in record:
        choices = record["choices"]
        if isinstance(choices, str):
            try:
                choices = json.loads(choices)
            except json.JSONDecodeError as err:
                raise UsageError(
                    f"{where}: 'choices' is not a JSON list ({err.msg}); write it as"
                    ' ["first", "second", ...]'
                ) from err
        if not isinstance(choices, list):
            raise UsageError(f"{where}: 'choices' must be a list, got {choices!r:.40}")
        # Numbers are fair options (arithmetic questions); anything else fails in make_item.
        return [str(c) if isinstance(c, int | float) else c for c in choices]
    if not letters:
        raise UsageError(f"{where}: no 'choices' field and no option fields A, B, ...; add them")
    options: list[object] = ["" if record[key] is None else str(record[key]) for key in letters]
    while options and not str(options[-1]).strip():
        options.pop()
    return options


def _letter_fields(record: Mapping[str, object]) -> list[str]:
    # Option fields run A, B, C, ... without gaps; "option_a" is accepted for "a".
    found: list[str] = []
    for letter in LETTERS.lower():
        key = next((k for k in (letter, f"option_{letter}") if k in record), None)
        if key is None:
            break
        found.append(key)
    extra = chr(ord(LETTERS[-1].lower()) + 1)  # "k": an 11th option column
    if len(found) == len(LETTERS) and (extra in record or f"option_{extra}" in record):
        raise UsageError(
            f"option columns run past {LETTERS[-1]} (found {extra.upper()}): phaseprune scores at "
            f"most {len(LETTERS)} options; drop the extra columns"
        )
    return found
