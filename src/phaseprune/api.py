"""The Python API: analyze and prune a model you load yourself, or one phaseprune loads.

::

    import phaseprune
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("Qwen/Qwen2.5-0.5B")
    tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen2.5-0.5B")
    result = phaseprune.analyze(model, tokenizer, "mmlu", subjects=["marketing"], limit=100)
    result.accuracy, result.transition_layer, result.items.head()

    pruned = phaseprune.prune(model, tokenizer, "mmlu", strategy="iterative", steps=4,
                              calib=32, eval=100, out="runs/iter")
    with phaseprune.without_layers(model, pruned.removed_layers()):
        ...  # the pruned view, restored on exit

Each function takes every setting of its CLI command by the same name as a keyword
(``subjects``, ``shots``, ``limit``, ``n_boot``, ``strategy``, ``objective``, ...; ``--no-plots``
is ``plots=False``), or a whole config (``config=AnalyzeConfig(...)``); the CLI itself runs
through these functions with a config. Without ``out`` nothing is written anywhere, not even
to a temporary directory: the records come back in memory, equal to what the files would
hold. A model passed as an object is used as
it is (its dtype and device), put in eval mode with gradients off, and never changed: pruned
views restore it. Its weights are not hashed, so its record's ``revision`` is None.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phaseprune.core.errors import UsageError
from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig
from phaseprune.runs.results import Analysis, Pruning

if TYPE_CHECKING:
    from phaseprune.pruning import OnStep

_SECTIONS = {"model": ModelConfig, "task": TaskConfig}


def make_config(cls: type, **settings: Any):
    """A config of ``cls`` from flat keywords: the command's own fields and its sections'.

    ``make_config(AnalyzeConfig, out="x", model="smollm2-135m", subjects=["marketing"])``
    fills ``AnalyzeConfig.model.model`` and ``AnalyzeConfig.task.subjects``. Sequences become
    tuples, as the CLI makes them. An unknown keyword is refused with the closest names.
    """
    own = {f.name for f in dataclasses.fields(cls)}
    sections = {name: sec for name, sec in _SECTIONS.items() if name in own}
    names = {name: None for name in own - set(sections)}
    for name, sec in sections.items():
        names |= {f.name: name for f in dataclasses.fields(sec)}
    unknown = [k for k in settings if k not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(names), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TypeError(
            f"{cls.__name__} has no setting {unknown[0]!r}{hint}; "
            f"settings: {', '.join(sorted(names))}"
        )
    values = {k: _plain(v) for k, v in settings.items()}
    parts = {name: sec(**{k: v for k, v in values.items() if names[k] == name})
             for name, sec in sections.items()}  # fmt: skip
    return cls(**{k: v for k, v in values.items() if names[k] is None}, **parts)


def _plain(value: Any) -> Any:
    """A setting as the CLI would give it: lists as tuples, paths as strings."""
    if isinstance(value, list):
        return tuple(value)
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _resolve(cls, model, tokenizer, task, config, out, settings) -> tuple[Any, dict]:
    """The config to run and the held objects (model, tokenizer, task) to hand over."""
    from phaseprune.tasks import TaskData

    held: dict = {}
    if isinstance(model, str):
        settings.setdefault("model", model)
    elif model is not None:
        held.update(model=model, tokenizer=tokenizer)
    elif tokenizer is not None:
        raise UsageError("tokenizer= was given without model=: pass the model it belongs to")
    if task is not None and not isinstance(task, str | os.PathLike | TaskData):
        from phaseprune.tasks.user import records_task  # a list of dicts or a DataFrame

        task = records_task(task, settings.get("subjects"), settings.get("shots", 0),
                            settings.get("limit"))  # fmt: skip
    if isinstance(task, TaskData):
        held["task"] = task
        settings.setdefault("task", task.name)
    elif task is not None:
        settings.setdefault("task", task)
    if config is not None:
        if set(settings) - {"model", "task"}:
            raise TypeError("pass either config= or keyword settings, not both")
        return config, held
    settings.setdefault("plots", out is not None)  # a run kept in memory draws no plots
    return make_config(cls, out=os.fspath(out) if out else "", **settings), held


def analyze(
    model: Any = None,
    tokenizer: Any = None,
    task: Any = None,
    *,
    out: str | Path | None = None,
    config: AnalyzeConfig | None = None,
    **settings: Any,
) -> Analysis:
    """Read every layer's decision of ``model`` on ``task`` (``phaseprune analyze``).

    Args:
        model: A loaded ``*ForCausalLM`` (with ``tokenizer``), or what ``--model`` takes (an
            alias, a ``.gguf`` file, a checkpoint directory, a hub id); None: the config's,
            else the default ``smollm2-135m``.
        tokenizer: The tokenizer of a loaded model.
        task: A task name as ``--task`` takes it (``"mmlu"``, ``"csv:PATH"``, ...) or a
            :class:`~phaseprune.tasks.TaskData` from :func:`phaseprune.tasks.load_task`.
        out: Directory to write the run to (as ``--out``); None: nothing stays on disk.
        config: A whole :class:`~phaseprune.runs.config.AnalyzeConfig` instead of ``settings``.
        **settings: ``analyze``'s settings by name (see ``phaseprune analyze --help``).

    Returns:
        The summary and the per-item table.
    """
    from phaseprune.analysis import run_analyze

    cfg, held = _resolve(AnalyzeConfig, model, tokenizer, task, config, out, dict(settings))
    return run_analyze(cfg, **held)


def prune(
    model: Any = None,
    tokenizer: Any = None,
    task: Any = None,
    *,
    out: str | Path | None = None,
    config: PruneConfig | None = None,
    on_step: OnStep | None = None,
    **settings: Any,
) -> Pruning:
    """Remove layers step by step and re-read the decision after each (``phaseprune prune``).

    Args:
        model: As for :func:`analyze`.
        tokenizer: As for :func:`analyze`.
        task: As for :func:`analyze`.
        out: Directory to write the run to; None: nothing stays on disk (and nothing resumes).
        config: A whole :class:`~phaseprune.runs.config.PruneConfig` instead of ``settings``.
        on_step: Called as ``on_step(trajectory, record, resumed)`` after the unpruned readout
            and after each step, once it is written.
        **settings: ``prune``'s settings by name (``strategy``, ``steps``, ``calib``, ``eval``,
            ``objective``, ``resume``, ...; see ``phaseprune prune --help``).

    Returns:
        The trajectory and the candidates' scores.
    """
    from phaseprune.pruning import run_prune

    cfg, held = _resolve(PruneConfig, model, tokenizer, task, config, out, dict(settings))
    return run_prune(cfg, on_step=on_step, **held)


def export_checkpoint(
    run: str | Path,
    step: int,
    out: str | Path,
    *,
    model: Any = None,
    tokenizer: Any = None,
    overwrite: bool = False,
    heal: str | None = None,
) -> dict:
    """Write the pruned model of a run's ``step`` as a checkpoint (``phaseprune export``).

    Args:
        run: The run directory.
        step: The step to export (0: the unpruned model).
        out: The checkpoint directory to write.
        model: The model a run made on a held model pruned (with ``tokenizer``), checked
            against the run's record; None loads the run's model again (runs of files).
        tokenizer: That model's tokenizer.
        overwrite: Write into a non-empty ``out``.
        heal: ``"linear"`` heals an unhealed run's removals (as ``export --heal linear``).

    Returns:
        The export's record (``phaseprune_export.json``).
    """
    from phaseprune.export import run_export

    if not isinstance(step, int) or isinstance(step, bool):
        raise UsageError(f"step={step!r}: pass a whole number (0 = the unpruned model)")
    return run_export(os.fspath(run), step, os.fspath(out), overwrite=overwrite, heal=heal,
                      model=model, tokenizer=tokenizer)  # fmt: skip
