"""``json:``, ``parquet:`` and ``hf:`` tasks (through ``datasets``) read as ``jsonl:`` does."""

from __future__ import annotations

import json

import datasets
import pandas as pd
import pytest
from conftest import write_jsonl

from phaseprune.core.errors import UsageError
from phaseprune.tasks import load_task

RECORDS = [
    {"question": f"Which colour is number {i}?", "choices": ["red", "green", "blue"],
     "answer": i % 3, "subject": "ab"[i % 2]}
    for i in range(10)
]  # fmt: skip


def _same_items(a, b) -> None:
    assert [it for it in a.items] == [it for it in b.items]
    assert a.exemplars == b.exemplars
    assert a.n_options == b.n_options and a.subjects == b.subjects


@pytest.fixture
def reference(tmp_path):
    return load_task(f"jsonl:{write_jsonl(tmp_path / 'ref.jsonl', RECORDS)}", shots=1)


def test_json_list_and_json_lines(tmp_path, reference):
    listed = tmp_path / "items.json"
    listed.write_text(json.dumps(RECORDS))
    task = load_task(f"json:{listed}", shots=1)
    _same_items(task, reference)
    assert (task.source_kind, task.split, task.source) == ("user-json", "test", str(listed))
    lines = write_jsonl(tmp_path / "lines.json", RECORDS)  # the json builder reads both
    _same_items(load_task(f"json:{lines}", shots=1), reference)


def test_parquet(tmp_path, reference):
    path = tmp_path / "items.parquet"
    pd.DataFrame(RECORDS).to_parquet(path)
    task = load_task(f"parquet:{path}", shots=1)
    _same_items(task, reference)
    assert task.source_kind == "user-parquet"


def test_letter_columns_in_parquet(tmp_path):
    rows = [{"Question": "Q?", "A": "x", "B": "y", "C": "", "Answer": "B", "id": "q1"}]
    path = tmp_path / "letters.parquet"
    pd.DataFrame(rows * 1).to_parquet(path)
    (item,) = load_task(f"parquet:{path}").items
    assert (item.item_id, item.options, item.answer) == ("q1", ("x", "y"), 1)


def test_hf_dataset_folders_and_splits(tmp_path, reference):
    rows = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"validation": rows, "train": rows}).save_to_disk(tmp_path / "dd")
    task = load_task(f"hf:{tmp_path / 'dd'}", shots=1)
    _same_items(task, reference)
    assert task.split == "validation"  # test is absent: the first of test, validation, train
    assert task.source == f"hf:{tmp_path / 'dd'}@validation"
    assert load_task(f"hf:{tmp_path / 'dd'}@train", shots=1).split == "train"
    rows.save_to_disk(tmp_path / "one")
    _same_items(load_task(f"hf:{tmp_path / 'one'}", shots=1), reference)


def test_bad_sources_say_what_to_do(tmp_path):
    rows = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"validation": rows}).save_to_disk(tmp_path / "dd")
    with pytest.raises(UsageError, match=r"has no split 'test'; it has \['validation'\]"):
        load_task(f"hf:{tmp_path / 'dd'}@test")
    datasets.DatasetDict({"extra": rows}).save_to_disk(tmp_path / "odd")
    with pytest.raises(UsageError, match=r"name one as hf:.*@SPLIT"):
        load_task(f"hf:{tmp_path / 'odd'}")
    with pytest.raises(UsageError, match="does not exist"):
        load_task(f"json:{tmp_path / 'missing.json'}")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot read it as json"):
        load_task(f"json:{bad}")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(UsageError, match="cannot read it as parquet"):
        load_task(f"parquet:{broken}")
    no_answer = tmp_path / "na.json"
    no_answer.write_text(json.dumps([{"question": "q", "choices": ["a", "b"]}]))
    with pytest.raises(UsageError, match=r"na.json, record 1: no 'answer' field"):
        load_task(f"json:{no_answer}")
    with pytest.raises(UsageError, match="names nothing"):
        load_task("hf:")
