"""lm-eval task templates that fail: which field, in which YAML file, said in one line.

lm-eval renders a task's ``doc_to_text``, ``doc_to_choice`` and ``doc_to_target`` (Jinja
templates or Python) while building the task and again for every doc; a template that fails
raises from deep inside it. These name the field and the YAML file lm-eval read it from.
"""

from __future__ import annotations

from pathlib import Path

from phaseprune.core.errors import UsageError, first_line


def yaml_of(index, name: str) -> str | None:
    """The YAML file lm-eval's index read ``name`` from (its entries: ``Entry`` or dict)."""
    entry = index.get(name) if isinstance(index, dict) else None
    path = entry.get("yaml_path") if isinstance(entry, dict) else getattr(entry, "yaml_path", None)
    return (
        str(path)
        if isinstance(path, str | Path) and str(path).endswith((".yaml", ".yml"))
        else None
    )


def failing_field(tb) -> str:
    """Which of a task's ``doc_to_*`` fields was being rendered when ``tb`` was raised."""
    fields = ("doc_to_text", "doc_to_choice", "doc_to_target", "doc_to_decontamination_query")
    found = "(doc_to_text, doc_to_choice or doc_to_target)"
    while tb is not None:
        if tb.tb_frame.f_code.co_name in fields:
            found = tb.tb_frame.f_code.co_name
        tb = tb.tb_next
    return found


def render(task, field: str, doc: dict, fs, where: str):
    """``task.<field>(doc)``; one that fails (a Jinja error, a key the doc lacks) is named."""
    try:
        return getattr(task, field)(doc, getattr(fs, field, None))
    except Exception as err:  # jinja2's errors, and whatever a template's expression raises
        raise UsageError(
            f"{where}: the task's {field} failed ({type(err).__name__}: {first_line(err)}); "
            f"fix {field} in {getattr(task, 'phaseprune_yaml', None) or 'the task YAML'}"
        ) from None
