"""Progress bars that say where in a run they are.

A run names its stages (``with stage("step 3/8"):``, nested as ``prune iterative`` inside a
demo); every bar opened inside takes the joined names as the start of its description, so a
readout bar reads ``step 3/8 · readout`` rather than a bare ``readout``. The stage is a
:class:`contextvars.ContextVar`, so nested runs and threads keep their own. Bars of the inner
loops disappear when done (``leave=False``): what stays on the terminal is the runs' own lines,
written with :func:`say` so that they do not tear a bar that is drawing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

_STAGE: ContextVar[tuple[str, ...]] = ContextVar("phaseprune_stage", default=())
SEPARATOR = " · "


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the stage the enclosed work belongs to (appended to the enclosing stage's name)."""
    token = _STAGE.set((*_STAGE.get(), name))
    try:
        yield
    finally:
        _STAGE.reset(token)


def label(what: str) -> str:
    """``what`` prefixed with the current stage, e.g. ``step 3/8 · candidates``."""
    return SEPARATOR.join((*_STAGE.get(), what))


def bar(total: int, what: str, *, enabled: bool, unit: str = "item") -> tqdm:
    """A transient progress bar over ``total`` units, described by :func:`label`.

    Launched as several processes (``RANK`` set by torchrun), only process 0 draws; each
    process's bar counts its own shard of the items.
    """
    enabled = enabled and os.environ.get("RANK", "0") == "0"
    return tqdm(total=total, desc=label(what), unit=unit, disable=not enabled, leave=False)


def say(line: str) -> None:
    """Print one line to stdout without breaking a progress bar that is being drawn."""
    tqdm.write(line)
