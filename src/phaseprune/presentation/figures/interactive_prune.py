"""Interactive (plotly) figures of pruning runs, drawn from the records of :mod:`.data`.

* accuracy against layers removed, one line per run with its interval, chance and collapse;
* the layers x steps Decision Margin heatmap, removed layers blank, transition starred;
* the margin curve of every step, one step at a time through a slider;
* the final layer's option frequency at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go

from phaseprune.presentation.figures.data import (
    AccuracyRun,
    MarginGrid,
    OptionSteps,
    ReadoutCurves,
    StepTicks,
)
from phaseprune.presentation.figures.interactive import (
    SHARE_BAR,
    base_layout,
    margin_traces,
    phase_shapes,
    rgba,
)

RUN_HOVER = (
    "step %{customdata[0]}: removed %{customdata[1]}%{customdata[2]}<br>layers removed "
    "%{x}<br>accuracy %{y:.1%} (95% CI %{customdata[3]:.1%}–%{customdata[4]:.1%})"
    "<extra></extra>"
)


def step_labels(ticks: StepTicks) -> list[str]:
    """Tick label of each step column: ``0<br>unpruned`` then ``step<br>−L<removed layer>``."""
    return [
        f"{s}<br>−L{r}" if s else "0<br>unpruned"
        for s, r in zip(ticks.step, ticks.removed, strict=True)
    ]


def _run_traces(run: AccuracyRun) -> list[go.Scatter]:
    x = run.n_removed.tolist()
    lo, hi = run.ci[:, 0].tolist(), run.ci[:, 1].tolist()
    custom = [
        [step, removed, f" ({phase})" if phase else "", lo[i], hi[i]]
        for i, (step, removed, phase) in enumerate(
            zip(run.step, run.removed, run.phase, strict=True)
        )
    ]
    traces = [
        go.Scatter(
            x=[*x, *x[::-1]],
            y=[*hi, *lo[::-1]],
            mode="lines",
            fill="toself",
            line={"width": 0},
            fillcolor=rgba(run.color, 0.15),
            hoverinfo="skip",
            legendgroup=run.label,
            showlegend=False,
            name=f"{run.label} 95% interval",
        ),
        go.Scatter(
            x=x,
            y=run.accuracy.tolist(),
            mode="lines+markers",
            name=run.label,
            legendgroup=run.label,
            line={"color": run.color, "width": 2},
            marker={"size": 7},
            customdata=custom,
            hovertemplate=f"<b>{run.label}</b><br>{RUN_HOVER}",
        ),
    ]
    c = run.collapse
    if c is not None:
        traces.append(
            go.Scatter(
                x=[x[c]],
                y=[float(run.accuracy[c])],
                mode="markers",
                showlegend=False,
                legendgroup=run.label,
                name=f"collapse ({run.label})",
                marker={
                    "size": 20,
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": run.color, "width": 3},
                },
                hovertemplate=(
                    f"<b>collapse</b> of {run.label}: step {run.step[c]}, "
                    f"removed {run.removed[c]}<extra></extra>"
                ),
            )
        )
    return traces


def accuracy_vs_removed(runs: Sequence[AccuracyRun]) -> go.Figure:
    """Evaluation accuracy against layers removed: runs, intervals, chance, collapse circled."""
    fig = go.Figure()
    for run in runs:
        fig.add_traces(_run_traces(run))
    n_max = max(int(run.n_removed[-1]) for run in runs)
    chance = runs[0].chance
    fig.add_trace(
        go.Scatter(
            x=[-0.3, n_max + 0.3],
            y=[chance, chance],
            mode="lines",
            hoverinfo="skip",
            line={"color": "black", "dash": "dot", "width": 1.5},
            name=f"chance ({chance:.0%})",
        )
    )
    base_layout(fig, 420)
    fig.update_xaxes(
        title="layers removed", dtick=1 if n_max <= 20 else None, range=[-0.3, n_max + 0.3]
    )
    fig.update_yaxes(title="evaluation accuracy (95% interval)", range=[0, 1.02], tickformat=".0%")
    fig.add_annotation(
        text="circle: collapse step",
        xref="paper",
        yref="paper",
        x=1,
        y=0.01,
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font={"size": 11, "color": "#555"},
    )
    return fig


def margin_heatmap(grid: MarginGrid) -> go.Figure:
    """Original layer x step heatmap of the mean Decision Margin; removed layers blank."""
    n_rows, n_cols = grid.margin.shape
    where = ["embeddings"] + [f"output of layer {j}" for j in range(n_rows - 1)]
    z = [[None if np.isnan(v) else float(v) for v in row] for row in grid.margin]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_cols)),
            y=list(range(n_rows)),
            zmid=0,
            zmin=-grid.vmax,
            zmax=grid.vmax,
            colorscale="RdBu",
            hoverongaps=False,
            customdata=[[w] * n_cols for w in where],
            colorbar={"title": {"text": "margin", "side": "right"}, "thickness": 14},
            hovertemplate="step %{x} · %{customdata}<br>mean margin %{z:.2f}<extra></extra>",
            name="margin",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=list(grid.transition_col),
            y=list(grid.transition_row),
            mode="markers",
            name="transition layer",
            marker={
                "symbol": "star",
                "size": 14,
                "color": "gold",
                "line": {"color": "black", "width": 1},
            },
            hovertemplate="step %{x}: transition at row %{y}<extra></extra>",
        )
    )
    base_layout(fig, min(760, max(340, 17 * n_rows + 150)), plot_bgcolor="#b0b0b0")
    fig.update_xaxes(
        title="step (removed layer below the number)",
        tickvals=list(range(n_cols)),
        ticktext=step_labels(grid.ticks),
        showgrid=False,
    )
    fig.update_yaxes(
        title="row j + 1 = output of original layer j",
        showgrid=False,
        dtick=1 if n_rows <= 16 else 2,
    )
    return fig


def _slider(labels: list[str], shapes: list[list[dict]]) -> dict:
    """One slider position per step: its two traces visible, its shapes drawn."""
    n = len(labels)
    steps = [
        {
            "label": labels[i].replace("<br>", " "),
            "method": "update",
            "args": [{"visible": [j // 2 == i for j in range(2 * n)]}, {"shapes": shapes[i]}],
        }
        for i in range(n)
    ]
    return {
        "steps": steps,
        "active": 0,
        "x": 0,
        "len": 1,
        "y": -0.2,
        "yanchor": "top",
        "pad": {"t": 8, "b": 0},
        "currentvalue": {"prefix": "showing step ", "font": {"size": 13}},
    }


def stepped_margin_figure(curves: Sequence[ReadoutCurves], ticks: StepTicks) -> go.Figure:
    """The margin curve with its band and phases after each step; a slider picks the step.

    Args:
        curves: the curves of every step, step 0 first (:func:`~.data.step_curves`); x is
            the original layer the readout follows (0 = embeddings), so curves line up.
        ticks: the step axis (:func:`~.data.step_ticks`).
    """
    fig = go.Figure()
    zero = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "y0": 0,
        "y1": 0,
        "line": {"color": "black", "width": 1},
    }
    shapes = []
    for i, c in enumerate(curves):
        traces = margin_traces(c)
        for t in traces:
            t.visible = i == 0
        fig.add_traces(traces)
        shapes.append([zero, *phase_shapes(c)])
    fig.update_layout(shapes=shapes[0])
    base_layout(fig, 400)
    if len(curves) > 1:
        fig.update_layout(
            height=480, margin={"b": 130}, sliders=[_slider(step_labels(ticks), shapes)]
        )
    n = float(curves[0].x[-1])  # the unpruned model reads after every layer
    fig.update_xaxes(title="after original layer (0 = embeddings)", range=[-0.6, n + 0.6])
    fig.update_yaxes(title="correct − best wrong (logits)")
    return fig


def option_frequency_steps(steps: OptionSteps) -> go.Figure:
    """Share of the final layer's picks per letter at every step."""
    z = steps.shares.T.tolist()  # (n_options, n_steps + 1)
    n_steps = len(steps.ticks.step)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n_steps)),
            y=list(steps.letters),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            text=[[f"{v:.0%}" for v in row] for row in z],
            texttemplate="%{text}" if n_steps <= 16 else None,
            colorbar=SHARE_BAR,
            hovertemplate="step %{x}: final layer picks %{y} for %{z:.1%}<extra></extra>",
        )
    )
    base_layout(fig, 110 + 42 * len(steps.letters) + 70, showlegend=False)
    fig.update_layout(margin={"t": 30})
    fig.update_xaxes(title="step", tickvals=list(range(n_steps)), ticktext=step_labels(steps.ticks))
    fig.update_yaxes(title="final-layer pick", autorange="reversed")
    return fig
