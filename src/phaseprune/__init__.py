"""phaseprune: where a language model decides a multiple-choice answer, layer by layer.

The Python API (docs/api.md): :func:`analyze`, :func:`prune`, :func:`without_layers`,
:func:`load_run`, :func:`load_task`, :func:`export_checkpoint`, and the result records
:class:`Analysis` and :class:`Pruning`. They are imported on first use, so
``import phaseprune`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "analyze": "phaseprune.api",
    "prune": "phaseprune.api",
    "export_checkpoint": "phaseprune.api",
    "Analysis": "phaseprune.runs.results",
    "Pruning": "phaseprune.runs.results",
    "make_config": "phaseprune.api",
    "without_layers": "phaseprune.model.surgery",
    "load_run": "phaseprune.runs.files",
    "RunRecord": "phaseprune.runs.files",
    "load_task": "phaseprune.tasks",
    "TaskData": "phaseprune.tasks",
    "AnalyzeConfig": "phaseprune.runs.config",
    "PruneConfig": "phaseprune.runs.config",
    "ModelConfig": "phaseprune.runs.config",
    "TaskConfig": "phaseprune.runs.config",
    "UsageError": "phaseprune.core.errors",
}
__all__ = [
    "Analysis",
    "AnalyzeConfig",
    "ModelConfig",
    "PruneConfig",
    "Pruning",
    "RunRecord",
    "TaskConfig",
    "TaskData",
    "UsageError",
    "analyze",
    "export_checkpoint",
    "load_run",
    "load_task",
    "make_config",
    "prune",
    "without_layers",
]

if TYPE_CHECKING:
    from phaseprune.api import analyze, export_checkpoint, make_config, prune
    from phaseprune.core.errors import UsageError
    from phaseprune.model.surgery import without_layers
    from phaseprune.runs.config import AnalyzeConfig, ModelConfig, PruneConfig, TaskConfig
    from phaseprune.runs.files import RunRecord, load_run
    from phaseprune.runs.results import Analysis, Pruning
    from phaseprune.tasks import TaskData, load_task


def __getattr__(name: str):
    """Import an API name from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'phaseprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
