"""Figures of pruning runs, drawn from ``trajectory.json`` records alone (presentation layer).

* ``accuracy_vs_removed.png``: evaluation accuracy with its interval against layers removed,
  chance line, collapse step marked; several runs on one axis for ``compare``.
* ``margin_heatmap.png``: original layer x step, mean Decision Margin read at each remaining
  layer's output (removed layers blank), the transition layer traced.
* ``option_frequency_steps.png``: share of the final layer's picks per letter at every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from phaseprune.plots import model_label  # noqa: E402


def _points(traj: dict):
    steps = [traj["step0"], *traj["steps"]]
    removed = [0] + [len(s["removed_so_far"]) for s in traj["steps"]]
    acc = np.array([s["eval_accuracy"] for s in steps])
    lo = np.array([s["eval_accuracy_ci"][0] for s in steps])
    hi = np.array([s["eval_accuracy_ci"][1] for s in steps])
    return np.array(removed), acc, lo, hi


def accuracy_figure(trajs: Sequence[dict], labels: Sequence[str] | None = None):
    """Evaluation accuracy vs layers removed, one line per run, collapse marked."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels = labels or [t["strategy"] for t in trajs]
    for traj, label in zip(trajs, labels, strict=True):
        x, acc, lo, hi = _points(traj)
        (line,) = ax.plot(x, acc, marker="o", ms=3, label=label)
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        c = traj.get("collapse") or {}
        if c.get("step") is not None:
            ax.scatter(
                [x[c["step"]]],
                [acc[c["step"]]],
                s=90,
                facecolors="none",
                edgecolors=line.get_color(),
                linewidths=2,
                zorder=5,
            )
    ax.axhline(trajs[0]["chance"], color="black", ls=":", lw=1, label="chance")
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layers removed")
    ax.set_ylabel("evaluation accuracy (95% interval)")
    model = model_label(trajs[0]["model"])
    ax.set_title(
        f"{model} · {trajs[0]['task']['name']} · n_eval={len(trajs[0]['eval_items'])} "
        "(circles: collapse)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def margin_grid(traj: dict) -> np.ndarray:
    """``(n_layers + 1, n_steps + 1)`` mean margin at each original layer's output (NaN if gone).

    Row 0 is the embeddings; row ``j + 1`` the output of original decoder layer ``j``.
    """
    n = traj["n_layers"]
    steps = [traj["step0"], *traj["steps"]]
    grid = np.full((n + 1, len(steps)), np.nan)
    for col, s in enumerate(steps):
        remaining = s.get("remaining_layers", list(range(n)))
        grid[0, col] = s["layers"][0]["margin_mean"]
        for i, layer in enumerate(remaining):
            grid[layer + 1, col] = s["layers"][i + 1]["margin_mean"]
    return grid


def margin_heatmap(traj: dict):
    """Layers x steps heatmap of the mean Decision Margin."""
    grid = margin_grid(traj)
    fig, ax = plt.subplots(
        figsize=(max(5, 0.5 * grid.shape[1] + 3), max(4, 0.16 * grid.shape[0] + 1.5))
    )
    vmax = np.nanmax(np.abs(grid)) or 1.0
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="RdBu", vmin=-vmax, vmax=vmax)
    ax.set_xticks(
        range(grid.shape[1]),
        ["0"] + [str(s["removed_layer"]) for s in traj["steps"]],
        rotation=90,
        fontsize=7,
    )
    ax.set_xlabel("step (label: layer removed at that step)")
    ax.set_ylabel("readout at the output of original layer (0 = embeddings)")
    steps = [traj["step0"], *traj["steps"]]
    for col, s in enumerate(steps):
        t = s["transition_layer"]
        if t is not None:
            rem = s.get("remaining_layers", list(range(traj["n_layers"])))
            row = 0 if t == 0 else rem[t - 1] + 1
            ax.plot(col, row, marker="*", color="gold", ms=9, mec="black", mew=0.5)
    fig.colorbar(im, ax=ax, label="mean Decision Margin (logits); ★ transition")
    ax.set_title(f"{model_label(traj['model'])} · {traj['strategy']}", fontsize=9)
    fig.tight_layout()
    return fig


def option_frequency_steps(traj: dict):
    """Final-layer option frequency at every step, beside the gold distribution."""
    steps = [traj["step0"], *traj["steps"]]
    letters = traj["task"]["letters"]
    grid = np.array([[s["layers"][-1]["option_frequency"][c] for c in letters] for s in steps])
    fig, ax = plt.subplots(
        figsize=(max(4, 0.6 * len(letters) + 2.5), max(3.5, 0.25 * len(steps) + 1.5))
    )
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(letters)), letters)
    ax.set_yticks(range(len(steps)), [f"{i}" for i in range(len(steps))])
    ax.set_ylabel("step (layers removed)")
    ax.set_xlabel("final-layer pick")
    fig.colorbar(im, ax=ax, label="share of evaluation items")
    ax.set_title(f"Option Frequency per step · {traj['strategy']}", fontsize=9)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    tmp.replace(path)
    return path


PRUNE_FIGURES = {
    "accuracy_vs_removed.png": lambda traj: accuracy_figure([traj]),
    "margin_heatmap.png": margin_heatmap,
    "option_frequency_steps.png": option_frequency_steps,
}


def write_prune_plots(traj: dict, out_dir: str | Path) -> list[Path]:
    """Write the three figures of one pruning run."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [_save(PRUNE_FIGURES[name](traj), out / name) for name in PRUNE_FIGURES]
    return written


def write_compare_plot(trajs: Sequence[dict], labels: Sequence[str], path: str | Path) -> Path:
    """All runs' accuracy vs layers removed on one figure."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _save(accuracy_figure(trajs, labels), Path(path))
