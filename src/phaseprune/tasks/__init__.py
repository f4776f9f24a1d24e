"""Multiple-choice task data: MMLU, nine other lm-eval tasks, and user CSV/JSONL files.

``load_task(name, ...)`` returns a :class:`TaskData` whose items are letter-choice questions
(2 to 10 options, one correct); :mod:`phaseprune.core.prompts` turns them into prompt text.
"""

from phaseprune.core.items import LETTERS, MCItem, TaskData, round_robin
from phaseprune.tasks.registry import TASK_NAMES, TaskSource, available_tasks, load_task

__all__ = [
    "LETTERS",
    "TASK_NAMES",
    "MCItem",
    "TaskData",
    "TaskSource",
    "available_tasks",
    "load_task",
    "round_robin",
]
