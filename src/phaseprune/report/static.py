"""Static PNGs beside the HTML, drawn by the existing matplotlib figures.

The report's interactive figures need its inlined JavaScript; the PNGs are for slides, papers
and viewers without it. They come from :mod:`phaseprune.plots` and
:mod:`phaseprune.prune_plots` (the same figures ``analyze`` and ``prune`` write into
``plots/``), redrawn here so a run made with ``--no-plots`` gets them too.
"""

from __future__ import annotations

from pathlib import Path

from phaseprune.plots import write_plots
from phaseprune.prune_plots import write_compare_plot, write_prune_plots
from phaseprune.report.load import Run


def run_pngs(run: Run, out_dir: Path) -> list[Path]:
    """Write one run's PNGs into ``out_dir``."""
    if run.kind == "analyze":
        return write_plots(run.record, out_dir)
    return write_prune_plots(run.record, out_dir)


def compare_png(runs: list[Run], labels: list[str], path: Path) -> Path:
    """All pruning runs' accuracy against layers removed on one PNG."""
    return write_compare_plot([r.record for r in runs], labels, path)
