r"""Prompt text for letter-choice items, identical to lm-evaluation-harness's MMLU prompts.

lm-eval's MMLU template (``lm_eval/tasks/mmlu/default/_default_template_yaml``) is::

    description:     "The following are multiple choice questions (with answers) about
                      {subject, underscores as spaces}.\\n\\n"
    doc_to_text:     "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\n
                      C. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
    target_delimiter: " "      fewshot_delimiter: "\\n\\n"      doc_to_choice: [A, B, C, D]

and a k-shot prompt is the description, then each exemplar's text + ``" "`` + its gold letter
followed by ``"\\n\\n"``, then the item's text. So only the question is stripped; option texts
are used exactly as stored (some MMLU options carry leading or trailing spaces), and the
prompt ends in ``"Answer:"`` with no trailing space: the model's next token is the letter
with its leading space (``" A"``). Items with n options use the letters A.. up to the n-th.

The other built-in tasks and user files use the same layout with no description line: lm-eval
has none for them, and a subject sentence such as "about arc_easy" would be invented text.
"""

from __future__ import annotations

from collections.abc import Sequence

from phaseprune.core.items import LETTERS, MCItem, TaskData

TARGET_DELIMITER = " "
"""Between an exemplar's ``Answer:`` and its gold letter."""
FEWSHOT_DELIMITER = "\n\n"
"""After each exemplar, before the next exemplar or the item."""
ANSWER_CUE = "Answer:"
"""Last text of every prompt; the option letters are scored as its continuation."""


def description_for(task_name: str, subject: str) -> str:
    r"""The description line that opens a prompt: MMLU's subject sentence, else empty.

    Args:
        task_name: The task's name (``TaskData.name``).
        subject: The item's subject, e.g. ``"high_school_geography"``.

    Returns:
        ``"The following are multiple choice questions (with answers) about high school
        geography.\\n\\n"`` for MMLU, ``""`` for every other task.
    """
    if task_name != "mmlu":
        return ""
    topic = subject.replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {topic}.\n\n"


def format_item(item: MCItem) -> str:
    """An item's own text: stripped question, lettered options as stored, ``Answer:``."""
    lines = [item.question.strip()]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(item.options)]
    lines.append(ANSWER_CUE)
    return "\n".join(lines)


def format_exemplar(item: MCItem) -> str:
    """An exemplar: its text, then ``" "`` + gold letter + the few-shot delimiter."""
    return format_item(item) + TARGET_DELIMITER + LETTERS[item.answer] + FEWSHOT_DELIMITER


def build_prefix(exemplars: Sequence[MCItem], description: str) -> str:
    """The part of a prompt shared by every item of a subject: description and exemplars."""
    return description + "".join(format_exemplar(ex) for ex in exemplars)


def build_prompt(item: MCItem, exemplars: Sequence[MCItem], description: str) -> str:
    """The full prompt for ``item`` after ``exemplars`` (in order) and ``description``.

    Args:
        item: The item to ask.
        exemplars: Solved exemplars shown first, in order (may be empty).
        description: Opening text, e.g. from :func:`description_for` (may be empty).

    Returns:
        The prompt, ending in ``"Answer:"``.
    """
    return build_prefix(exemplars, description) + format_item(item)


def split_prefix(task: TaskData) -> list[tuple[str, str]]:
    """For each scored item, its subject's shared prefix and its own suffix.

    ``prefix + suffix`` is exactly ``build_prompts(task)[i]``; the prefix is the same string
    for every item of a subject, so its encoding can be computed once and reused.

    Args:
        task: A loaded task.

    Returns:
        ``(prefix, suffix)`` per scored item, in item order.
    """
    prefixes = {
        subject: build_prefix(task.exemplars.get(subject, ()), description_for(task.name, subject))
        for subject in {item.subject for item in task.items}
    }
    return [(prefixes[item.subject], format_item(item)) for item in task.items]


def build_prompts(task: TaskData) -> list[str]:
    """The full prompt of each scored item, with its subject's exemplars, in item order."""
    return [prefix + suffix for prefix, suffix in split_prefix(task)]
