"""Static figures (matplotlib, Agg) of analyze and pruning runs, written as PNG.

Drawn from the records of :mod:`.data` alone. An analyze run's ``plots/`` (:data:`FIGURES`):

* ``margin.png``: mean Decision Margin by readout layer with its bootstrap band, the
  transition layer marked and the Silent / Decisive phases shaded.
* ``option_frequency.png``: heatmap of layers x letters (share of picks), with the gold
  letters' distribution as a strip below for comparison.
* ``accuracy.png``: layer accuracy with its Wilson interval against the chance line.

A pruning run's (:data:`PRUNE_FIGURES`):

* ``accuracy_vs_removed.png``: evaluation accuracy with its interval against layers removed,
  chance line, collapse step circled; several runs on one axis for ``compare``.
* ``margin_heatmap.png``: original layer x step, mean Decision Margin read at each remaining
  layer's output (removed layers blank), the transition layer starred.
* ``option_frequency_steps.png``: share of the final layer's picks per letter at every step.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from phaseprune.presentation.figures import data  # noqa: E402
from phaseprune.presentation.figures.data import (  # noqa: E402
    ACCURACY_COLOR,
    MARGIN_COLOR,
    TRANSITION_COLOR,
    AccuracyRun,
    MarginGrid,
    OptionGrid,
    OptionSteps,
    ReadoutCurves,
    model_label,
)
from phaseprune.runs.outdir import plain_mode  # noqa: E402

READOUT_AXIS = "readout layer (0 = embeddings)"

STYLE = 1
"""The figures' version: bump it when a drawing changes, so stamped ``plots/`` are redrawn."""


def analyze_title(summary: dict) -> str:
    """``model · task (subjects) · k-shot · n=N`` of an analyze run."""
    task = summary["task"]
    subjects = ", ".join(task["subjects"][:3]) + ("…" if len(task["subjects"]) > 3 else "")
    return (
        f"{model_label(summary['model'])} · {task['name']}"
        f"{' (' + subjects + ')' if subjects else ''} · {task['shots']}-shot · n={task['n_items']}"
    )


def _curve_axes(
    curves: ReadoutCurves,
    y: np.ndarray,
    ci: np.ndarray,
    color: str,
    alpha: float,
    labels: tuple[str, str],
):
    """Phases shaded, transition dashed, then ``y`` with its band; returns ``(fig, ax)``."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for span in curves.spans:
        ax.axvspan(span.x0, span.x1, color=span.color, alpha=0.6, lw=0, label=span.name)
    if curves.transition is not None:
        ax.axvline(
            curves.transition_x,
            color=TRANSITION_COLOR,
            ls="--",
            lw=1.2,
            label=f"transition (layer {curves.transition})",
        )
    ax.fill_between(curves.x, ci[:, 0], ci[:, 1], color=color, alpha=alpha, lw=0, label=labels[0])
    ax.plot(curves.x, y, color=color, marker="o", ms=3, label=labels[1])
    ax.set_xlabel(READOUT_AXIS)
    return fig, ax


def _finish(fig: Figure, ax, title: str) -> Figure:
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def margin_figure(curves: ReadoutCurves, title: str) -> Figure:
    """Mean Decision Margin with its band, phases shaded."""
    fig, ax = _curve_axes(
        curves,
        curves.margin,
        curves.margin_ci,
        MARGIN_COLOR,
        0.25,
        ("95% bootstrap CI", "mean Decision Margin"),
    )
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("correct − best wrong (logits)")
    return _finish(fig, ax, title)


def accuracy_figure(curves: ReadoutCurves, title: str) -> Figure:
    """Layer accuracy with its interval against chance."""
    fig, ax = _curve_axes(
        curves,
        curves.accuracy,
        curves.accuracy_ci,
        ACCURACY_COLOR,
        0.2,
        ("95% Wilson interval", "layer accuracy"),
    )
    ax.axhline(curves.chance, color="black", ls=":", lw=1, label=f"chance ({curves.chance:.0%})")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the layer's pick")
    return _finish(fig, ax, title)


def option_frequency_figure(grid: OptionGrid, title: str) -> Figure:
    """Heatmap of pick shares (layers x letters) above a strip of the gold distribution."""
    k, n_rows = len(grid.letters), len(grid.layer)
    gold = grid.gold if grid.gold is not None else np.full(k, np.nan)
    fig, (ax, axg) = plt.subplots(
        2,
        1,
        figsize=(max(4.5, 0.7 * k + 2.5), max(4.0, 0.17 * n_rows + 2.0)),
        gridspec_kw={"height_ratios": [n_rows, 1.6]},
        sharex=True,
    )
    im = ax.imshow(grid.shares, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    ax.set_ylabel("readout layer")
    if grid.transition is not None:
        ax.axhline(grid.transition - 0.5, color="white", ls="--", lw=1.2)
        ax.text(
            k - 0.5,
            grid.transition - 0.5,
            " transition",
            color="white",
            va="bottom",
            ha="right",
            fontsize=7,
        )
    ax.set_title(f"Option Frequency by layer\n{title}", fontsize=8)
    axg.imshow(gold[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for i, share in enumerate(gold):
        if np.isfinite(share):
            axg.text(i, 0, f"{share:.0%}", ha="center", va="center", color="white", fontsize=7)
    axg.set_yticks([0], ["gold"])
    axg.set_xticks(range(k), grid.letters)
    axg.set_xlabel("option letter")
    fig.colorbar(im, ax=[ax, axg], label="share of items", fraction=0.06)
    return fig


def accuracy_vs_removed(runs: Sequence[AccuracyRun], title: str) -> Figure:
    """Evaluation accuracy vs layers removed, one line per run, collapse circled."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in runs:
        ax.plot(run.n_removed, run.accuracy, color=run.color, marker="o", ms=3, label=run.label)
        ax.fill_between(
            run.n_removed, run.ci[:, 0], run.ci[:, 1], color=run.color, alpha=0.15, lw=0
        )
        if run.collapse is not None:
            ax.scatter(
                [run.n_removed[run.collapse]],
                [run.accuracy[run.collapse]],
                s=90,
                facecolors="none",
                edgecolors=run.color,
                linewidths=2,
                zorder=5,
            )
    ax.axhline(runs[0].chance, color="black", ls=":", lw=1, label="chance")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layers removed")
    ax.set_ylabel("evaluation accuracy (95% interval)")
    ax.set_title(f"{title} (circles: collapse)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _step_tick_labels(ticks: data.StepTicks) -> list[str]:
    return [r or str(s) for s, r in zip(ticks.step, ticks.removed, strict=True)]


def margin_heatmap(grid: MarginGrid, title: str) -> Figure:
    """Layers x steps heatmap of the mean Decision Margin, transition starred."""
    n_rows, n_cols = grid.margin.shape
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n_cols + 3), max(4, 0.16 * n_rows + 1.5)))
    im = ax.imshow(
        grid.margin, aspect="auto", origin="lower", cmap="RdBu", vmin=-grid.vmax, vmax=grid.vmax
    )
    ax.set_xticks(range(n_cols), _step_tick_labels(grid.ticks), rotation=90, fontsize=7)
    ax.set_xlabel("step (label: layer removed at that step)")
    ax.set_ylabel("readout at the output of original layer (0 = embeddings)")
    ax.plot(
        grid.transition_col,
        grid.transition_row,
        ls="none",
        marker="*",
        color="gold",
        ms=9,
        mec="black",
        mew=0.5,
    )
    fig.colorbar(im, ax=ax, label="mean Decision Margin (logits); ★ transition")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def option_frequency_steps(steps: OptionSteps, title: str) -> Figure:
    """Final-layer option frequency at every step."""
    k, n_steps = len(steps.letters), len(steps.ticks.step)
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * k + 2.5), max(3.5, 0.25 * n_steps + 1.5)))
    im = ax.imshow(steps.shares, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(k), steps.letters)
    ax.set_yticks(range(n_steps), [str(s) for s in steps.ticks.step])
    ax.set_ylabel("step (layers removed)")
    ax.set_xlabel("final-layer pick")
    fig.colorbar(im, ax=ax, label="share of evaluation items")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def _prune_title(traj: dict) -> str:
    n_eval = len(traj["eval_items"])
    return f"{model_label(traj['model'])} · {traj['task']['name']} · n_eval={n_eval}"


FIGURES: dict[str, Callable[[dict], Figure]] = {
    "margin.png": lambda s: margin_figure(data.summary_curves(s), analyze_title(s)),
    "option_frequency.png": lambda s: option_frequency_figure(
        data.summary_option_grid(s), analyze_title(s)
    ),
    "accuracy.png": lambda s: accuracy_figure(data.summary_curves(s), analyze_title(s)),
}
"""The PNGs of an analyze run: file name -> figure of its ``summary.json``."""

PRUNE_FIGURES: dict[str, Callable[[dict], Figure]] = {
    "accuracy_vs_removed.png": lambda t: accuracy_vs_removed(
        data.accuracy_runs([t]), _prune_title(t)
    ),
    "margin_heatmap.png": lambda t: margin_heatmap(
        data.margin_grid(t), f"{model_label(t['model'])} · {t['strategy']}"
    ),
    "option_frequency_steps.png": lambda t: option_frequency_steps(
        data.option_steps(t), f"Option Frequency per step · {t['strategy']}"
    ),
}
"""The PNGs of a pruning run: file name -> figure of its ``trajectory.json``."""


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary name, then a rename) and close it."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.close(fd)  # a name of its own: two writers never share one
    tmp = Path(name)
    try:
        fig.savefig(tmp, dpi=130)
        tmp.chmod(plain_mode())  # as a plain write would make it (mkstemp makes 0600)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def _write_all(
    record: dict, figures: dict[str, Callable[[dict], Figure]], out_dir: str | Path
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [_save(make(record), out / name) for name, make in figures.items()]


def write_plots(summary: dict, out_dir: str | Path) -> list[Path]:
    """Write every figure of an analyze summary as PNG into ``out_dir``."""
    return _write_all(summary, FIGURES, out_dir)


def write_prune_plots(traj: dict, out_dir: str | Path) -> list[Path]:
    """Write the three figures of one pruning run as PNG into ``out_dir``."""
    return _write_all(traj, PRUNE_FIGURES, out_dir)


def write_compare_plot(trajs: Sequence[dict], labels: Sequence[str], path: str | Path) -> Path:
    """All runs' accuracy vs layers removed on one PNG."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(
        accuracy_vs_removed(data.accuracy_runs(trajs, labels), _prune_title(trajs[0])), Path(path)
    )
