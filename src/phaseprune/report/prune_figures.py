"""Interactive (plotly) figures of pruning runs, built from ``trajectory.json`` records alone.

* accuracy against layers removed, one line per run with its interval, chance and collapse;
* the layers x steps Decision Margin heatmap (the grid of
  :func:`phaseprune.prune_plots.margin_grid`), removed layers blank, transition starred;
* the margin curve of every step, one step at a time through a slider;
* the final layer's option frequency at every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative

from phaseprune.prune_plots import margin_grid
from phaseprune.report.figures import base_layout, margin_traces, phase_shapes
from phaseprune.report.tables import collapse_record
from phaseprune.report.text import layers_text

PALETTE = qualitative.D3


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def step_labels(traj: dict) -> list[str]:
    """Tick label of each step column: ``0`` then ``step<br>−L<removed layer>``."""
    return ["0<br>unpruned"] + [
        f"{s['step']}<br>−L{layers_text(s['removed_layer']).split(' ', 1)[1]}"
        for s in traj["steps"]
    ]


def _run_traces(traj: dict, label: str, color: str) -> list[go.Scatter]:
    steps = [traj["step0"], *traj["steps"]]
    x = [0] + [len(s["removed_so_far"]) for s in traj["steps"]]
    acc = [s["eval_accuracy"] for s in steps]
    lo = [s["eval_accuracy_ci"][0] for s in steps]
    hi = [s["eval_accuracy_ci"][1] for s in steps]
    custom = [[0, "none (unpruned)", "", lo[0], hi[0]]] + [
        [s["step"], layers_text(s["removed_layer"]), f" ({s['phase_of_removed']})", lo[i + 1],
         hi[i + 1]]
        for i, s in enumerate(traj["steps"])
    ]  # fmt: skip
    traces = [
        go.Scatter(x=[*x, *x[::-1]], y=[*hi, *lo[::-1]], mode="lines", fill="toself",
                   line={"width": 0},
                   fillcolor=_rgba(color, 0.15), hoverinfo="skip", legendgroup=label,
                   showlegend=False, name=f"{label} 95% interval"),
        go.Scatter(x=x, y=acc, mode="lines+markers", name=label, legendgroup=label,
                   line={"color": color, "width": 2}, marker={"size": 7}, customdata=custom,
                   hovertemplate=(f"<b>{label}</b><br>step %{{customdata[0]}}: removed "
                                  "%{customdata[1]}%{customdata[2]}<br>layers removed %{x}<br>"
                                  "accuracy %{y:.1%} (95% CI %{customdata[3]:.1%}–"
                                  "%{customdata[4]:.1%})<extra></extra>")),
    ]  # fmt: skip
    c = collapse_record(traj)
    if c.get("step") is not None:
        traces.append(
            go.Scatter(x=[x[c["step"]]], y=[acc[c["step"]]], mode="markers", legendgroup=label,
                       name=f"collapse ({label})", showlegend=False,
                       marker={"size": 20, "color": "rgba(0,0,0,0)",
                               "line": {"color": color, "width": 3}},
                       hovertemplate=(f"<b>collapse</b> of {label}: step {c['step']}, removed "
                                      f"{layers_text(c['removed_layer'])}<extra></extra>"))
        )  # fmt: skip
    return traces


def accuracy_vs_removed(trajs: Sequence[dict], labels: Sequence[str]) -> go.Figure:
    """Evaluation accuracy against layers removed: runs, intervals, chance, collapse circled."""
    fig = go.Figure()
    for i, (traj, label) in enumerate(zip(trajs, labels, strict=True)):
        fig.add_traces(_run_traces(traj, label, PALETTE[i % len(PALETTE)]))
    n_max = max([0] + [len(t["steps"][-1]["removed_so_far"]) for t in trajs if t["steps"]])
    chance = trajs[0]["chance"]
    fig.add_trace(
        go.Scatter(x=[-0.3, n_max + 0.3], y=[chance, chance], mode="lines", hoverinfo="skip",
                   line={"color": "black", "dash": "dot", "width": 1.5},
                   name=f"chance ({chance:.0%})")
    )  # fmt: skip
    base_layout(fig, 420)
    fig.update_xaxes(title="layers removed", dtick=1 if n_max <= 20 else None,
                     range=[-0.3, n_max + 0.3])  # fmt: skip
    fig.update_yaxes(title="evaluation accuracy (95% interval)", range=[0, 1.02],
                     tickformat=".0%")  # fmt: skip
    fig.add_annotation(text="circle: collapse step", xref="paper", yref="paper", x=1, y=0.01,
                       showarrow=False, xanchor="right", yanchor="bottom",
                       font={"size": 11, "color": "#555"})  # fmt: skip
    return fig


def _transition_rows(traj: dict) -> tuple[list[int], list[int]]:
    cols, rows = [], []
    n = traj["n_layers"]
    for col, s in enumerate([traj["step0"], *traj["steps"]]):
        t = s["transition_layer"]
        if t is not None:
            rem = s.get("remaining_layers", list(range(n)))
            cols.append(col)
            rows.append(0 if t == 0 else rem[t - 1] + 1)
    return cols, rows


def margin_heatmap(traj: dict) -> go.Figure:
    """Original layer x step heatmap of the mean Decision Margin; removed layers blank."""
    grid = margin_grid(traj)  # (n_layers + 1, n_steps + 1), NaN where removed
    n_rows, n_cols = grid.shape
    vmax = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    where = ["embeddings"] + [f"output of layer {j}" for j in range(n_rows - 1)]
    z = [[None if np.isnan(v) else float(v) for v in row] for row in grid]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(n_cols)), y=list(range(n_rows)), zmid=0, zmin=-vmax, zmax=vmax,
            colorscale="RdBu", hoverongaps=False, customdata=[[w] * n_cols for w in where],
            colorbar={"title": {"text": "margin", "side": "right"}, "thickness": 14},
            hovertemplate="step %{x} · %{customdata}<br>mean margin %{z:.2f}<extra></extra>",
            name="margin",
        )
    )  # fmt: skip
    cols, rows = _transition_rows(traj)
    fig.add_trace(
        go.Scatter(x=cols, y=rows, mode="markers", name="transition layer",
                   marker={"symbol": "star", "size": 14, "color": "gold",
                           "line": {"color": "black", "width": 1}},
                   hovertemplate="step %{x}: transition at row %{y}<extra></extra>")
    )  # fmt: skip
    base_layout(fig, min(760, max(340, 17 * n_rows + 150)), plot_bgcolor="#b0b0b0")
    fig.update_xaxes(title="step (removed layer below the number)", tickvals=list(range(n_cols)),
                     ticktext=step_labels(traj), showgrid=False)  # fmt: skip
    fig.update_yaxes(title="row j + 1 = output of original layer j", showgrid=False,
                     dtick=1 if n_rows <= 16 else 2)  # fmt: skip
    return fig


def stepped_margin_figure(traj: dict) -> go.Figure:
    """The margin curve with its band and phases after each step; a slider picks the step.

    x is the original layer index the readout sits after (0 = embeddings), so curves of
    different steps line up and removed layers are simply absent.
    """
    n = traj["n_layers"]
    steps = [traj["step0"], *traj["steps"]]
    fig = go.Figure()
    shapes, labels = [], step_labels(traj)
    for i, s in enumerate(steps):
        xs = [0] + [k + 1 for k in s.get("remaining_layers", range(n))]
        traces = margin_traces(s["layers"], s["phases"], xs)
        for t in traces:
            t.visible = i == 0
        fig.add_traces(traces)
        zero = {"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": 0, "y1": 0,
                "line": {"color": "black", "width": 1}}  # fmt: skip
        shapes.append([zero, *phase_shapes(s["phases"], s["transition_layer"], xs)])
    fig.update_layout(shapes=shapes[0])
    base_layout(fig, 400)
    if len(steps) > 1:
        slider_steps = [
            {"label": labels[i].replace("<br>", " "), "method": "update",
             "args": [{"visible": [j // 2 == i for j in range(2 * len(steps))]},
                      {"shapes": shapes[i]}]}
            for i in range(len(steps))
        ]  # fmt: skip
        fig.update_layout(
            height=480,
            margin={"b": 130},
            sliders=[{"steps": slider_steps, "active": 0, "x": 0, "len": 1, "y": -0.2,
                      "yanchor": "top", "pad": {"t": 8, "b": 0},
                      "currentvalue": {"prefix": "showing step ", "font": {"size": 13}}}],
        )  # fmt: skip
    fig.update_xaxes(title="after original layer (0 = embeddings)", range=[-0.6, n + 0.6])
    fig.update_yaxes(title="correct − best wrong (logits)")
    return fig


def option_frequency_steps(traj: dict) -> go.Figure:
    """Share of the final layer's picks per letter at every step."""
    letters = traj["task"]["letters"]
    steps = [traj["step0"], *traj["steps"]]
    z = [[s["layers"][-1]["option_frequency"][c] for s in steps] for c in letters]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(len(steps))), y=list(letters), zmin=0, zmax=1,
            colorscale="Viridis", text=[[f"{v:.0%}" for v in row] for row in z],
            texttemplate="%{text}" if len(steps) <= 16 else None,
            colorbar={"title": {"text": "share", "side": "right"}, "tickformat": ".0%",
                      "thickness": 14},
            hovertemplate="step %{x}: final layer picks %{y} for %{z:.1%}<extra></extra>",
        )
    )  # fmt: skip
    base_layout(fig, 110 + 42 * len(letters) + 70, showlegend=False)
    fig.update_layout(margin={"t": 30})
    fig.update_xaxes(title="step", tickvals=list(range(len(steps))), ticktext=step_labels(traj))
    fig.update_yaxes(title="final-layer pick", autorange="reversed")
    return fig
