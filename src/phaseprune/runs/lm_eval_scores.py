"""``prune --lm-eval-tasks``: lm-evaluation-harness scores of the pruned view, beside phaseprune's.

At the chosen steps (``--lm-eval-steps``, every step and the unpruned model by default) the
model without the removed layers (:func:`phaseprune.model.surgery.without_layers`, no weights
copied, no export) is wrapped in lm-eval's ``HFLM`` and scored with ``simple_evaluate`` on the named
tasks, as ``lm_eval --model hf`` scores the exported checkpoint loaded in the same dtype and
device (lm-eval's own prompts, few-shot settings, ``--lm-eval-limit`` first docs and batch
size). Each task's
metrics (``acc``, ``acc_norm`` and their stderr for multiple-choice tasks; whatever the task
reports otherwise) go into the step record under ``lm_eval``.

lm-eval seeds Python's, NumPy's and torch's global generators; they are put back afterwards, so
asking for scores changes nothing else in the run. A module of the runs layer: it reads the
prune config and drives :mod:`phaseprune.model.surgery` and lm-eval.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from phaseprune.core.errors import UsageError
from phaseprune.model.surgery import without_layers
from phaseprune.runs.config import PruneConfig
from phaseprune.tasks.lm_eval_source import (
    build_tasks,
    lm_eval_quiet,
    manager_for,
    require_lm_eval,
    task_specs,
)

TaskScores = dict[str, float | int | None]
"""One task's metrics: ``acc``, ``acc_stderr``, ``acc_norm``, ... (filter ``none`` dropped from
the key, any other filter kept as ``metric,filter``), and ``n``, the docs scored (None for a
group's aggregate)."""


def score_view(
    model,
    tokenizer,
    tasks: Sequence[str],
    removed: Sequence[int],
    *,
    limit: int | None = None,
    batch_size: int = 1,
    include: str | None = None,
    progress: bool = True,
) -> dict[str, TaskScores]:
    """Score ``model`` without ``removed`` with lm-evaluation-harness.

    Args:
        model: A causal LM of a supported family (left as it was on return).
        tokenizer: Its tokenizer (lm-eval may set its pad token; pass a copy to keep yours).
        tasks: lm-eval task, group or tag names, or YAML paths.
        removed: Layer indices to drop for the scoring; empty for the model itself.
        limit: Score each task's first N docs (lm-eval's ``--limit``); None scores all.
        batch_size: lm-eval's batch size.
        include: lm-eval's include path (a folder of task YAMLs) for the user's own tasks.
        progress: Show lm-eval's progress bars (on stderr).

    Returns:
        Per task (and per group with an aggregate), its metrics and ``n``.

    Raises:
        UsageError: If lm-eval is missing or a task is unknown or cannot be built.
    """
    require_lm_eval("--lm-eval-tasks")
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM

    manager = manager_for(tasks, include)  # one index per process; refuses unknown names
    bars = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with without_layers(model, removed), _global_rng_kept(), lm_eval_quiet(), bars:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        results = evaluator.simple_evaluate(
            model=lm,
            tasks=task_specs(tasks),
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
    n_samples = results.get("n-samples", {})
    return {
        name: _task_scores(metrics, n_samples.get(name, {}).get("effective"))
        for name, metrics in results["results"].items()
    }


def _task_scores(metrics: dict[str, Any], n: int | None) -> TaskScores:
    out: TaskScores = {}
    for key, value in metrics.items():
        metric, _, filt = key.partition(",")
        if metric == "alias" or not filt:
            continue
        name = metric if filt == "none" else key
        # lm-eval writes "N/A" for a stderr it cannot compute (one doc)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        out[name] = float(value) if ok else None
    out["n"] = int(n) if n is not None else None
    return out


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Put back the generators ``simple_evaluate`` seeds (random, NumPy, torch)."""
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class StepScorer:
    """lm-eval scores of a pruning run's views at its chosen steps (``--lm-eval-*`` settings).

    Built before the model loads, so a missing lm-eval, an unknown task, or ``--lm-eval-steps``
    past ``--steps`` or without ``--lm-eval-tasks`` fails at once (:class:`UsageError`); the
    tokenizer is loaded (or the held one copied) on first use.
    """

    def __init__(self, cfg: PruneConfig, tokenizer=None):
        self.tasks = tuple(cfg.lm_eval_tasks)
        self.steps = frozenset(cfg.lm_eval_steps)
        self.limit = cfg.lm_eval_limit
        self.batch_size = cfg.lm_eval_batch_size
        self.include = cfg.task.lm_eval_include
        self.progress = not cfg.quiet
        self._model_cfg = cfg.model
        held = tokenizer is not None and bool(self.tasks)
        self._tokenizer = copy.deepcopy(tokenizer) if held else None
        if not self.tasks and (self.steps or self.limit is not None):
            raise UsageError("--lm-eval-steps and --lm-eval-limit need --lm-eval-tasks: name them")
        late = sorted(k for k in self.steps if k > cfg.steps)
        if late:
            raise UsageError(f"--lm-eval-steps {late}: the run has --steps {cfg.steps}; lower them")
        if self.tasks:
            require_lm_eval("--lm-eval-tasks")
            build_tasks(list(self.tasks), self.include)

    def wanted(self, step: int) -> bool:
        """Whether ``step`` is scored (any step when no steps were chosen)."""
        return bool(self.tasks) and (not self.steps or step in self.steps)

    def __call__(self, model, removed: Sequence[int], step: int) -> dict[str, Any]:
        """``{"lm_eval": scores}`` to merge into the step's readout record.

        ``{"lm_eval": None}`` at a step not chosen, ``{}`` when no task was asked for (the
        record then has no ``lm_eval`` key, as runs made before it existed).
        """
        if not self.tasks:
            return {}
        if not self.wanted(step):
            return {"lm_eval": None}
        scores = score_view(
            model,
            self.tokenizer(),
            self.tasks,
            removed,
            limit=self.limit,
            batch_size=self.batch_size,
            include=self.include,
            progress=self.progress,
        )
        return {"lm_eval": scores}

    def tokenizer(self):
        """The model's tokenizer, a copy of its own for lm-eval (which may add a pad token)."""
        if self._tokenizer is None:
            from phaseprune.model.load import load_tokenizer, resolve_model

            spec = resolve_model(self._model_cfg.model)
            self._tokenizer, _ = load_tokenizer(
                spec, trust_remote_code=self._model_cfg.trust_remote_code
            )
        return self._tokenizer
