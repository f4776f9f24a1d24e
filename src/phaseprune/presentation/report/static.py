"""Static PNGs beside the HTML, drawn by the matplotlib figures.

The figures are :mod:`phaseprune.presentation.figures.png`'s. The report's interactive figures
need its inlined JavaScript; the PNGs are for slides, papers and viewers without it. They are
the same figures ``analyze`` and ``prune`` write into ``plots/``. They are copied from
``plots/`` when its stamp (:func:`~phaseprune.presentation.figures.stamp.figure_source`) says
they were drawn from this very record, and drawn here otherwise (a ``--no-plots`` run, a record
changed since, another version).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from phaseprune.presentation.figures.png import (
    FIGURES,
    PRUNE_FIGURES,
    write_compare_plot,
    write_plots,
    write_prune_plots,
)
from phaseprune.presentation.figures.stamp import FIGURE_STAMP, figure_source
from phaseprune.presentation.report.load import Run


def _drawn(run: Run) -> list[Path] | None:
    """The run's own ``plots/`` PNGs, if they were drawn from its current record."""
    plots = run.path / "plots"
    names = FIGURES if run.kind == "analyze" else PRUNE_FIGURES
    pngs = [plots / name for name in names]
    stamp = plots / FIGURE_STAMP
    if not stamp.exists() or not all(p.exists() for p in pngs):
        return None
    return pngs if stamp.read_text().strip() == figure_source(run.record) else None


def run_pngs(run: Run, out_dir: Path) -> list[Path]:
    """Write one run's PNGs into ``out_dir`` (copied from ``plots/`` when still current)."""
    drawn = _drawn(run)
    if drawn is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        return [Path(shutil.copyfile(p, out_dir / p.name)) for p in drawn]
    if run.kind == "analyze":
        return write_plots(run.record, out_dir)
    return write_prune_plots(run.record, out_dir)


def compare_png(runs: list[Run], labels: list[str], path: Path) -> Path:
    """All pruning runs' accuracy against layers removed on one PNG."""
    return write_compare_plot([r.record for r in runs], labels, path)
