"""Assemble the report: sections of cards, figures and tables, rendered by one Jinja2 template.

``build_report`` is the whole public surface: run directories in, one self-contained HTML file
out (plotly's JavaScript inlined once, no network needed to open it), with static PNGs in a
``<name>_files/`` folder beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import plotly
import plotly.graph_objects as go
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from phaseprune import __version__
from phaseprune.core.errors import UsageError
from phaseprune.presentation.figures import data
from phaseprune.presentation.figures import interactive as readout_figs
from phaseprune.presentation.figures import interactive_prune as prune_figs
from phaseprune.presentation.report import static, tables
from phaseprune.presentation.report.load import Run, load_runs
from phaseprune.runs.outdir import atomic_write_bytes

PLOTLY_CONFIG = {
    "displaylogo": False,
    "responsive": True,
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


@dataclass(frozen=True)
class FigureBlock:
    """One interactive figure and where its static PNG is."""

    id: str
    """The figure's div id (unique in the page)."""
    title: str
    """Heading above the figure."""
    caption: str
    """One or two sentences under it: how to read it."""
    html: Markup
    """The figure's div and its ``Plotly.newPlot`` call (no library)."""
    png: str | None
    """Path of the matching static PNG relative to the HTML file, if there is one."""


@dataclass
class Section:
    """One part of the page: a run, or the comparison of pruning runs."""

    id: str
    """Anchor id."""
    kind: str
    """``analyze``, ``prune`` or ``compare``."""
    title: str
    """Heading."""
    subtitle: str = ""
    """Model, task, items in one line."""
    warnings: tuple[str, ...] = ()
    """Banners shown at the top of the section."""
    cards: list[tables.Card] = field(default_factory=list)
    """Headline numbers."""
    statement: str = ""
    """The phases statement of the (unpruned) model."""
    collapse: str = ""
    """The collapse sentence (pruning runs)."""
    collapsed: bool = False
    """Whether that sentence names a collapse step (drawn as an alarm, else as all clear)."""
    figures: list[FigureBlock] = field(default_factory=list)
    """Figures in page order."""
    settings: list = field(default_factory=list)
    """Grouped :class:`~phaseprune.presentation.report.tables.Setting` rows."""
    layer_rows: list[tables.LayerRow] = field(default_factory=list)
    """Per-layer numbers."""
    step_rows: list[tables.StepRow] = field(default_factory=list)
    """Per-step numbers (pruning runs)."""
    lm_eval_columns: list[str] = field(default_factory=list)
    """Headers of the step table's lm-evaluation-harness columns (runs with --lm-eval-tasks)."""
    compare_rows: list[tables.CompareRow] = field(default_factory=list)
    """Per-run numbers (comparison)."""


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote."""

    html: Path
    """The self-contained HTML file."""
    files_dir: Path
    """Folder of static PNGs beside it."""
    pngs: tuple[Path, ...]
    """Every PNG written."""
    n_figures: int
    """Interactive figures in the page."""


def _block(
    fig: go.Figure, div_id: str, title: str, caption: str, png: Path | None, html_dir: Path
) -> FigureBlock:
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOTLY_CONFIG)
    rel = png.relative_to(html_dir).as_posix() if png is not None else None
    return FigureBlock(div_id, title, caption, Markup(div), rel)


def _subtitle(record: dict) -> str:
    task = record["task"]
    subjects = ", ".join(task.get("subjects", [])[:3])
    more = "…" if len(task.get("subjects", [])) > 3 else ""
    return (
        f"{record['model']['name']} · {task['name']}"
        f"{f' ({subjects}{more})' if subjects else ''} · {task.get('shots', 0)}-shot · "
        f"{record['n_layers']} layers"
    )


def analyze_section(run: Run, sid: str, png_dir: Path, html_dir: Path) -> Section:
    """Headline, settings, margin, option frequency beside gold, layer accuracy."""
    s = run.record
    curves = data.summary_curves(s)
    blocks = [
        _block(
            readout_figs.margin_figure(curves),
            f"{sid}-margin",
            "Decision Margin by layer",
            "Mean of correct − best wrong option logit at each readout layer, with its 95% "
            "bootstrap band; Silent Phase grey, Decisive Phase green, transition dashed.",
            png_dir / "margin.png",
            html_dir,
        ),
        _block(
            readout_figs.option_frequency_figure(data.summary_option_grid(s)),
            f"{sid}-option-frequency",
            "Option Frequency by layer",
            "Share of items whose pick at each layer is each letter; the column on the right "
            "is the gold letters' distribution. A Silent Phase piles its picks on one letter.",
            png_dir / "option_frequency.png",
            html_dir,
        ),
        _block(
            readout_figs.layer_accuracy_figure(curves),
            f"{sid}-accuracy",
            "Accuracy by layer",
            "Accuracy of each layer's pick with its 95% Wilson interval, against chance.",
            png_dir / "accuracy.png",
            html_dir,
        ),
    ]
    return Section(
        sid,
        "analyze",
        f"Analyze run {run.name}",
        _subtitle(s),
        run.warnings,
        cards=tables.analyze_cards(s),
        statement=s["phases"]["statement"],
        figures=blocks,
        settings=tables.settings(run),
        layer_rows=tables.layer_rows(s["layers"], s["phases"]),
    )


def prune_section(run: Run, sid: str, png_dir: Path, html_dir: Path) -> Section:
    """Headline, collapse, accuracy vs removed, margin heatmap, steps, per-step curves."""
    traj = run.record
    s0 = traj["step0"]
    label = tables.run_label(run)
    blocks = [
        _block(
            prune_figs.accuracy_vs_removed(data.accuracy_runs([traj], [label])),
            f"{sid}-accuracy",
            "Accuracy vs layers removed",
            "Evaluation accuracy after each removal with its 95% Wilson interval; dotted: "
            "chance; circled: the collapse step. Hover a point for the layer removed.",
            png_dir / "accuracy_vs_removed.png",
            html_dir,
        ),
        _block(
            prune_figs.margin_heatmap(data.margin_grid(traj)),
            f"{sid}-margin-heatmap",
            "Decision Margin, layers × steps",
            "Mean margin read after each original layer (rows) at each step (columns); "
            "removed layers are grey, ★ marks the transition layer; −L2 under a step: layer 2 "
            "was removed at that step.",
            png_dir / "margin_heatmap.png",
            html_dir,
        ),
        _block(
            prune_figs.stepped_margin_figure(data.step_curves(traj), data.step_ticks(traj)),
            f"{sid}-margin-steps",
            "Decision Margin by layer, step by step",
            "The unpruned model's margin curve and phases; the slider shows any later step "
            "(x: the original layer the readout follows).",
            None,
            html_dir,
        ),
        _block(
            readout_figs.option_frequency_figure(data.step0_option_grid(traj)),
            f"{sid}-option-frequency",
            "Option Frequency by layer (unpruned)",
            "Share of evaluation items picked per letter at each layer of the unpruned "
            "model (trajectory.json records no gold-letter distribution; an analyze run "
            "of the same items shows it).",
            None,
            html_dir,
        ),
        _block(
            prune_figs.option_frequency_steps(data.option_steps(traj)),
            f"{sid}-option-steps",
            "Final-layer picks per step",
            "Share of evaluation items the pruned model's output picks per letter.",
            png_dir / "option_frequency_steps.png",
            html_dir,
        ),
    ]
    return Section(
        sid,
        "prune",
        f"Pruning run {run.name} · {traj['strategy']}",
        _subtitle(traj),
        run.warnings,
        cards=tables.prune_cards(traj),
        statement=s0["phases"]["statement"],
        collapse=tables.prune_collapse_text(traj),
        collapsed=traj["collapse"]["step"] is not None,
        figures=blocks,
        settings=tables.settings(run),
        layer_rows=tables.layer_rows(s0["layers"], s0["phases"]),
        step_rows=tables.step_rows(traj),
        lm_eval_columns=tables.lm_eval_columns(traj),
    )


def compare_section(runs: list[Run], png: Path, html_dir: Path) -> Section:
    """All pruning runs on one accuracy plot and one table."""
    labels = [tables.run_label(r) for r in runs]
    fig = prune_figs.accuracy_vs_removed(data.accuracy_runs([r.record for r in runs], labels))
    block = _block(
        fig,
        "compare-accuracy",
        "Accuracy vs layers removed, all strategies",
        "One line per run with its 95% interval (click a legend entry to hide it); "
        "circled: each run's collapse step.",
        png,
        html_dir,
    )
    first = runs[0].record
    incomplete = [
        f"{r.name} is incomplete: its collapse is provisional." for r in runs if not r.complete
    ]
    return Section(
        "compare",
        "compare",
        f"Comparison of {len(runs)} pruning runs",
        f"{_subtitle(first)} · {len(first['eval_items'])} evaluation items",
        tuple(incomplete),
        figures=[block],
        compare_rows=tables.compare_rows(runs),
    )


def output_paths(runs: list[Run], out: str | Path | None) -> tuple[Path, Path]:
    """The HTML file and the PNG folder beside it.

    One run: ``RUN/report.html``; several: ``FIRST_RUN/compare_report.html``; ``out`` as a
    directory: ``OUT/report.html``. PNGs go to ``<html name without .html>_files/``.
    """
    if out is None:
        html = runs[0].path / ("report.html" if len(runs) == 1 else "compare_report.html")
    else:
        html = Path(out)
        if html.is_dir():
            html = html / "report.html"
        elif html.suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"--out {out} should be an .html file or an existing directory")
    return html, html.with_name(f"{html.stem}_files")


def _sections(runs: list[Run], html: Path, files_dir: Path) -> tuple[list[Section], list[Path]]:
    sections, pngs = [], []
    prune_runs = [r for r in runs if r.kind == "prune"]
    if len(prune_runs) > 1:
        labels = [tables.run_label(r) for r in prune_runs]
        png = static.compare_png(prune_runs, labels, files_dir / "compare.png")
        pngs.append(png)
        sections.append(compare_section(prune_runs, png, html.parent))
    for i, run in enumerate(runs, start=1):
        png_dir = files_dir if len(runs) == 1 else files_dir / f"{i}-{run.name}"
        pngs += static.run_pngs(run, png_dir)
        make = analyze_section if run.kind == "analyze" else prune_section
        sections.append(make(run, f"run-{i}", png_dir, html.parent))
    return sections, pngs


def _page_title(runs: list[Run]) -> str:
    if len(runs) > 1:
        return f"phaseprune report · {len(runs)} runs · {runs[0].record['model']['name']}"
    rec = runs[0].record
    what = "analyze" if runs[0].kind == "analyze" else f"prune ({rec['strategy']})"
    return f"phaseprune report · {rec['model']['name']} · {rec['task']['name']} · {what}"


def render(title: str, sections: list[Section], files_dir: Path, html_dir: Path) -> str:
    """The page as a string (Jinja2, autoescaped)."""
    env = Environment(
        loader=PackageLoader("phaseprune.presentation.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(
        title=title,
        sections=sections,
        plotly_js=Markup(get_plotlyjs()),
        files_dir=files_dir.relative_to(html_dir).as_posix(),
        phaseprune_version=__version__,
        plotly_version=plotly.__version__,
        built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def build_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Report:
    """Write one self-contained HTML report of the runs, and static PNGs beside it.

    Args:
        run_dirs: ``analyze`` and/or ``prune`` run directories. Several pruning runs get a
            comparison section first (same model and evaluation items required).
        out: the HTML file (or a directory for ``report.html``); default ``RUN/report.html``
            for one run, ``FIRST_RUN/compare_report.html`` for several.

    Raises:
        UsageError: a directory that is not a run, an incomplete analyze run, another
            schema version, or pruning runs of different models or items.
    """
    runs = load_runs(list(run_dirs))
    html, files_dir = output_paths(runs, out)
    sections, pngs = _sections(runs, html, files_dir)
    page = render(_page_title(runs), sections, files_dir, html.parent)
    atomic_write_bytes(html, page.encode("utf-8"))
    n_figures = sum(len(s.figures) for s in sections)
    return Report(html, files_dir, tuple(pngs), n_figures)
