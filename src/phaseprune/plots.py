"""Figures of an ``analyze`` run, drawn from its ``summary.json`` record alone.

Presentation layer: imports nothing from the model code and is never imported by the core.

* ``margin.png``: mean Decision Margin by readout layer with its bootstrap band, the
  transition layer marked and the Silent / Decisive phases shaded.
* ``option_frequency.png``: heatmap of layers x letters (share of picks), with the gold
  letters' distribution as the last column for comparison.
* ``accuracy.png``: layer accuracy with its Wilson interval against the chance line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SILENT_COLOR = "#d9d9d9"
DECISIVE_COLOR = "#cfe8cf"


def model_label(model: dict) -> str:
    """The model's name for a figure: a local file or folder by its own name, not its path."""
    name = str(model["name"])
    return Path(name).name if name.startswith(("/", "~", ".")) else name


def _title(summary: dict) -> str:
    task = summary["task"]
    subjects = ", ".join(task["subjects"][:3]) + ("…" if len(task["subjects"]) > 3 else "")
    return (
        f"{model_label(summary['model'])} · {task['name']}"
        f"{' (' + subjects + ')' if subjects else ''} · {task['shots']}-shot · n={task['n_items']}"
    )


def _shade_phases(ax, summary: dict) -> None:
    phases = summary["phases"]
    lo, hi = phases["silent"]
    if hi >= lo:
        ax.axvspan(lo - 0.5, hi + 0.5, color=SILENT_COLOR, alpha=0.6, lw=0, label="Silent Phase")
    if phases["decisive"]:
        lo, hi = phases["decisive"]
        ax.axvspan(
            lo - 0.5, hi + 0.5, color=DECISIVE_COLOR, alpha=0.6, lw=0, label="Decisive Phase"
        )
    t = summary["transition_layer"]
    if t is not None:
        ax.axvline(t, color="#2a7a2a", ls="--", lw=1.2, label=f"transition (layer {t})")


def margin_figure(summary: dict):
    """Mean Decision Margin with its band, phases shaded."""
    layers = summary["layers"]
    x = np.array([r["layer"] for r in layers])
    mean = np.array([r["margin_mean"] for r in layers])
    lo = np.array([r["margin_ci"][0] for r in layers])
    hi = np.array([r["margin_ci"][1] for r in layers])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _shade_phases(ax, summary)
    ax.fill_between(x, lo, hi, color="#1f77b4", alpha=0.25, lw=0, label="95% bootstrap CI")
    ax.plot(x, mean, color="#1f77b4", marker="o", ms=3, label="mean Decision Margin")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("readout layer (0 = embeddings)")
    ax.set_ylabel("correct − best wrong (logits)")
    ax.set_title(_title(summary), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def option_frequency_figure(summary: dict):
    """Heatmap of pick shares (layers x letters) above a strip of the gold distribution."""
    layers = summary["layers"]
    letters = list(summary["gold_frequency"])
    grid = np.array([[r["option_frequency"][c] for c in letters] for r in layers])  # (L1, k)
    gold = np.array([summary["gold_frequency"][c] for c in letters])
    fig, (ax, axg) = plt.subplots(
        2,
        1,
        figsize=(max(4.5, 0.7 * len(letters) + 2.5), max(4.0, 0.17 * len(layers) + 2.0)),
        gridspec_kw={"height_ratios": [len(layers), 1.6]},
        sharex=True,
    )
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
    ax.set_ylabel("readout layer")
    t = summary["transition_layer"]
    if t is not None:
        ax.axhline(t - 0.5, color="white", ls="--", lw=1.2)
        ax.text(
            len(letters) - 0.5,
            t - 0.5,
            " transition",
            color="white",
            va="bottom",
            ha="right",
            fontsize=7,
        )
    ax.set_title(f"Option Frequency by layer\n{_title(summary)}", fontsize=8)
    axg.imshow(gold[None, :], aspect="auto", cmap="viridis", vmin=0, vmax=1)
    for i, share in enumerate(gold):
        axg.text(i, 0, f"{share:.0%}", ha="center", va="center", color="white", fontsize=7)
    axg.set_yticks([0], ["gold"])
    axg.set_xticks(range(len(letters)), letters)
    axg.set_xlabel("option letter")
    fig.colorbar(im, ax=[ax, axg], label="share of items", fraction=0.06)
    return fig


def accuracy_figure(summary: dict):
    """Layer accuracy with its interval against chance."""
    layers = summary["layers"]
    x = np.array([r["layer"] for r in layers])
    acc = np.array([r["accuracy"] for r in layers])
    lo = np.array([r["accuracy_ci"][0] for r in layers])
    hi = np.array([r["accuracy_ci"][1] for r in layers])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    _shade_phases(ax, summary)
    ax.fill_between(x, lo, hi, color="#d62728", alpha=0.2, lw=0, label="95% Wilson interval")
    ax.plot(x, acc, color="#d62728", marker="o", ms=3, label="layer accuracy")
    ax.axhline(
        summary["chance"], color="black", ls=":", lw=1, label=f"chance ({summary['chance']:.0%})"
    )
    ax.set_ylim(0, 1)
    ax.set_xlabel("readout layer (0 = embeddings)")
    ax.set_ylabel("accuracy of the layer's pick")
    ax.set_title(_title(summary), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


FIGURES = {
    "margin.png": margin_figure,
    "option_frequency.png": option_frequency_figure,
    "accuracy.png": accuracy_figure,
}


def write_plots(summary: dict, out_dir: str | Path) -> list[Path]:
    """Write every figure of an analyze summary as PNG into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in FIGURES.items():
        fig = make(summary)
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=130)
        plt.close(fig)
        tmp.replace(out / name)
        written.append(out / name)
    return written
