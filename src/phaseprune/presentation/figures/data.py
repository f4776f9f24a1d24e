"""The data behind every figure, shaped once from the run records, and the figures' colours.

numpy and the core's words for phases and removed layers
(:func:`~phaseprune.core.phases.readout_phase`, :func:`~phaseprune.core.collapse.layers_text`); no
drawing library. :mod:`.png` (matplotlib) and :mod:`.interactive` /
:mod:`.interactive_prune` (plotly) render these records, so the PNGs and the HTML read the
same numbers in the same colours.

A readout index ``i`` is the residual stream after ``i`` decoder layers (0 = embeddings). In a
pruned model the readouts are placed at the original layer they follow, so curves of
different steps line up and removed layers are simply absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from phaseprune.core.collapse import layers_text
from phaseprune.core.phases import readout_phase

SILENT_COLOR = "#d9d9d9"
"""Shading of the Silent Phase."""
DECISIVE_COLOR = "#cfe8cf"
"""Shading of the Decisive Phase."""
MARGIN_COLOR = "#1f77b4"
"""The Decision Margin curve and its band."""
ACCURACY_COLOR = "#d62728"
"""The layer accuracy curve and its band."""
TRANSITION_COLOR = "#2a7a2a"
"""The transition layer's line."""
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
           "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
"""One colour per pruning run on a shared axis (d3's category10, matplotlib's default cycle)."""


def model_label(model: dict) -> str:
    """The model's name for a figure: a local file or folder by its own name, not its path."""
    name = str(model["name"])
    return Path(name).name if name.startswith(("/", "~", ".")) else name


class PhaseSpan(NamedTuple):
    """One shaded phase, in the x units of its curves."""

    name: str
    """Legend entry: ``Silent Phase`` or ``Decisive Phase``."""
    color: str
    """Fill colour."""
    x0: float
    """Left edge (half a layer before the phase's first readout)."""
    x1: float
    """Right edge (half a layer after its last readout)."""


class ReadoutCurves(NamedTuple):
    """Per-readout margin and accuracy of one model, with its phases and transition."""

    layer: np.ndarray
    """``(n_readout,)`` readout index (0 = embeddings)."""
    x: np.ndarray
    """``(n_readout,)`` x position: the readout index, or the original layer it follows."""
    margin: np.ndarray
    """``(n_readout,)`` mean Decision Margin (correct − best wrong logit)."""
    margin_ci: np.ndarray
    """``(n_readout, 2)`` its 95% bootstrap interval."""
    accuracy: np.ndarray
    """``(n_readout,)`` accuracy of each readout's pick."""
    accuracy_ci: np.ndarray
    """``(n_readout, 2)`` its 95% Wilson interval."""
    phase: tuple[str, ...]
    """``silent`` or ``decisive`` per readout."""
    spans: tuple[PhaseSpan, ...]
    """The phases to shade (an empty phase is left out)."""
    transition: int | None
    """Transition readout index, or None when the model does not decide."""
    transition_x: float | None
    """x position of the transition, or None."""
    chance: float
    """1 / n_options."""


def _spans(phases: dict, x: np.ndarray) -> tuple[PhaseSpan, ...]:
    spans = [
        ("Silent Phase", SILENT_COLOR, phases["silent"]),
        ("Decisive Phase", DECISIVE_COLOR, phases.get("decisive")),
    ]
    return tuple(
        PhaseSpan(name, color, float(x[span[0]]) - 0.5, float(x[span[1]]) + 0.5)
        for name, color, span in spans
        if span and span[1] >= span[0]
    )


def readout_curves(
    layers: list[dict],
    phases: dict,
    transition: int | None,
    chance: float,
    x: Sequence[int] | None = None,
) -> ReadoutCurves:
    """Shape a ``layers`` record (with its ``phases``) into curves.

    Args:
        layers: one record per readout index (``margin_mean``, ``margin_ci``, ``accuracy``...).
        phases: its ``phases`` record (``silent``, ``decisive`` as readout-index ranges).
        transition: the transition readout index, or None.
        chance: 1 / n_options.
        x: x position of each readout; default the readout index itself.
    """
    layer = np.array([r["layer"] for r in layers])
    xs = layer if x is None else np.asarray(x)
    return ReadoutCurves(
        layer,
        xs,
        np.array([r["margin_mean"] for r in layers]),
        np.array([r["margin_ci"] for r in layers], dtype=float).reshape(-1, 2),
        np.array([r["accuracy"] for r in layers]),
        np.array([r["accuracy_ci"] for r in layers], dtype=float).reshape(-1, 2),
        tuple(readout_phase(transition, int(i)) for i in layer),
        _spans(phases, xs),
        transition,
        None if transition is None else float(xs[transition]),
        chance,
    )


def summary_curves(summary: dict) -> ReadoutCurves:
    """The curves of an analyze run's ``summary.json``."""
    return readout_curves(
        summary["layers"], summary["phases"], summary["transition_layer"], summary["chance"]
    )


def _steps(traj: dict) -> list[dict]:
    return [traj["step0"], *traj["steps"]]


def step_curves(traj: dict) -> list[ReadoutCurves]:
    """The curves after every step of a pruning run (step 0 first), x = original layer."""
    n = traj["n_layers"]
    return [
        readout_curves(
            s["layers"],
            s["phases"],
            s["transition_layer"],
            traj["chance"],
            [0] + [k + 1 for k in s.get("remaining_layers", range(n))],
        )
        for s in _steps(traj)
    ]


class OptionGrid(NamedTuple):
    """Option Frequency of one model: the share of items each readout picks per letter."""

    letters: tuple[str, ...]
    """Option letters (columns of ``shares``)."""
    layer: np.ndarray
    """``(n_readout,)`` readout index of each row."""
    shares: np.ndarray
    """``(n_readout, n_options)`` share of items whose pick at that readout is that letter."""
    gold: np.ndarray | None
    """``(n_options,)`` share of items whose gold answer is each letter, if recorded."""
    transition: int | None
    """Transition readout index, or None."""


def option_grid(
    layers: list[dict], letters: Sequence[str], gold: dict | None, transition: int | None
) -> OptionGrid:
    """Shape the ``option_frequency`` of each readout (and the gold distribution) into a grid."""
    shares = np.array([[r["option_frequency"][c] for c in letters] for r in layers])
    gold_shares = None if gold is None else np.array([gold.get(c, 0.0) for c in letters])
    return OptionGrid(
        tuple(letters), np.array([r["layer"] for r in layers]), shares, gold_shares, transition
    )


def summary_option_grid(summary: dict) -> OptionGrid:
    """An analyze run's Option Frequency beside its gold letters."""
    letters = summary["task"].get("letters") or list(summary["gold_frequency"])
    return option_grid(
        summary["layers"], letters, summary["gold_frequency"], summary["transition_layer"]
    )


def step0_option_grid(traj: dict) -> OptionGrid:
    """The unpruned model's Option Frequency in a pruning run (no gold distribution there)."""
    s0 = traj["step0"]
    return option_grid(s0["layers"], traj["task"]["letters"], None, s0["transition_layer"])


class StepTicks(NamedTuple):
    """What labels the step axis of a pruning run."""

    step: tuple[int, ...]
    """Step number of each column (0 = unpruned)."""
    removed: tuple[str, ...]
    """Layers removed at that step, ``"7"`` or ``"3–4"``; ``""`` at step 0."""


def step_ticks(traj: dict) -> StepTicks:
    """The step axis of a pruning run."""
    removed = [layers_text(s["removed_layer"]).split(" ", 1)[1] for s in traj["steps"]]
    return StepTicks((0, *(s["step"] for s in traj["steps"])), ("", *removed))


class AccuracyRun(NamedTuple):
    """Evaluation accuracy of one pruning run against layers removed."""

    label: str
    """Legend entry."""
    color: str
    """Line colour (from :data:`PALETTE`)."""
    n_removed: np.ndarray
    """``(n_steps + 1,)`` x: layers removed after each step (0 = unpruned)."""
    accuracy: np.ndarray
    """``(n_steps + 1,)`` evaluation accuracy."""
    ci: np.ndarray
    """``(n_steps + 1, 2)`` its 95% Wilson interval."""
    step: tuple[int, ...]
    """Step number of each point."""
    removed: tuple[str, ...]
    """What each step removed (``"layer 7"``; ``"none (unpruned)"`` at step 0), for hover."""
    phase: tuple[str, ...]
    """Phase of the removed layer in the model it left (``""`` at step 0), for hover."""
    collapse: int | None
    """Index of the collapse step (from ``traj["collapse"]``), or None."""
    chance: float
    """1 / n_options."""


def accuracy_run(traj: dict, label: str, color: str) -> AccuracyRun:
    """One run's accuracy points; the collapse is read from its ``collapse`` record only."""
    steps = _steps(traj)
    return AccuracyRun(
        label,
        color,
        np.array([0] + [len(s["removed_so_far"]) for s in traj["steps"]]),
        np.array([s["eval_accuracy"] for s in steps]),
        np.array([s["eval_accuracy_ci"] for s in steps], dtype=float).reshape(-1, 2),
        tuple(s.get("step", 0) for s in steps),
        ("none (unpruned)", *(layers_text(s["removed_layer"]) for s in traj["steps"])),
        ("", *(s["phase_of_removed"] for s in traj["steps"])),
        (traj.get("collapse") or {}).get("step"),
        traj["chance"],
    )


def accuracy_runs(trajs: Sequence[dict], labels: Sequence[str] | None = None) -> list[AccuracyRun]:
    """Every run's points in its palette colour; labels default to the strategies.

    A healed run (``--heal linear``) also gets the accuracy of the same removals without any
    map, in the next colour, so the figure shows what healing restored.
    """
    labels = labels or [t["strategy"] for t in trajs]
    runs: list[AccuracyRun] = []
    for t, label in zip(trajs, labels, strict=True):
        runs.append(accuracy_run(t, label, PALETTE[len(runs) % len(PALETTE)]))
        if t["steps"] and all("unhealed" in s for s in t["steps"]):
            runs.append(_unhealed_run(t, label, PALETTE[len(runs) % len(PALETTE)]))
    return runs


def _unhealed_run(traj: dict, label: str, color: str) -> AccuracyRun:
    """A healed run's removals read without any map (each step's ``unhealed`` record)."""
    healed = accuracy_run(traj, label, color)
    plain = [traj["step0"], *(s["unhealed"] for s in traj["steps"])]
    return healed._replace(
        label=f"{label}, same removals unhealed",
        accuracy=np.array([s["eval_accuracy"] for s in plain]),
        ci=np.array([s["eval_accuracy_ci"] for s in plain], dtype=float).reshape(-1, 2),
        collapse=None,
    )


class MarginGrid(NamedTuple):
    """Mean Decision Margin at each original layer's output after each step."""

    margin: np.ndarray
    """``(n_layers + 1, n_steps + 1)``; row 0 the embeddings, row ``j + 1`` the output of
    original layer ``j``; NaN where that layer is removed."""
    vmax: float
    """Largest absolute margin (1.0 if none): the colour scale is ``[-vmax, vmax]``."""
    transition_col: tuple[int, ...]
    """Step column of each transition mark."""
    transition_row: tuple[int, ...]
    """Row of the transition at that step (the original layer its readout follows)."""
    ticks: StepTicks
    """Column labels."""


def _transition_marks(traj: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    cols, rows = [], []
    for col, s in enumerate(_steps(traj)):
        t = s["transition_layer"]
        if t is not None:
            rem = s.get("remaining_layers", list(range(traj["n_layers"])))
            cols.append(col)
            rows.append(0 if t == 0 else rem[t - 1] + 1)
    return tuple(cols), tuple(rows)


def margin_grid(traj: dict) -> MarginGrid:
    """The layers x steps margin grid of a pruning run, removed layers NaN."""
    n = traj["n_layers"]
    steps = _steps(traj)
    grid = np.full((n + 1, len(steps)), np.nan)
    for col, s in enumerate(steps):
        grid[0, col] = s["layers"][0]["margin_mean"]
        for i, layer in enumerate(s.get("remaining_layers", range(n))):
            grid[layer + 1, col] = s["layers"][i + 1]["margin_mean"]
    finite = np.isfinite(grid)
    vmax = float(np.abs(grid[finite]).max()) if finite.any() else 0.0
    return MarginGrid(grid, vmax or 1.0, *_transition_marks(traj), step_ticks(traj))


class OptionSteps(NamedTuple):
    """The pruned model's final-layer Option Frequency at every step."""

    letters: tuple[str, ...]
    """Option letters (columns of ``shares``)."""
    shares: np.ndarray
    """``(n_steps + 1, n_options)`` share of evaluation items the output picks per letter."""
    ticks: StepTicks
    """Row labels."""


def option_steps(traj: dict) -> OptionSteps:
    """Final-layer Option Frequency of every step of a pruning run."""
    letters = tuple(traj["task"]["letters"])
    shares = np.array(
        [[s["layers"][-1]["option_frequency"][c] for c in letters] for s in _steps(traj)]
    )
    return OptionSteps(letters, shares, step_ticks(traj))
