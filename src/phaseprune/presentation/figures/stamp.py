"""The stamp beside a run's PNGs: which record, drawn by which figure code, they show.

``plots/`` holds :data:`FIGURE_STAMP`, a digest of the record the PNGs were drawn from (less
its timing) and of :data:`~phaseprune.presentation.figures.png.STYLE`, so ``phaseprune report``
copies the PNGs instead of drawing them again while both are unchanged. The stamp is made from
data, never from source files' paths: a change to a figure bumps ``png.STYLE``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from phaseprune.presentation.figures.png import STYLE
from phaseprune.runs.outdir import atomic_write_bytes

FIGURE_STAMP = "figures.sha256"
"""File beside a run's PNGs naming what they were drawn from (:func:`figure_source`)."""


def figure_source(record: dict) -> str:
    """Digest of what a run's figures are drawn from: its record (less timing) and the style."""
    drawn = {k: v for k, v in record.items() if k != "timing"}
    blob = json.dumps([drawn, STYLE], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def stamp_figures(record: dict, out_dir: Path) -> None:
    """Write :data:`FIGURE_STAMP` into ``out_dir`` (after its PNGs)."""
    atomic_write_bytes(Path(out_dir) / FIGURE_STAMP, figure_source(record).encode())
