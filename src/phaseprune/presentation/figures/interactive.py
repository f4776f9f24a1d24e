"""Interactive (plotly) figures of one readout: margin, option frequency, layer accuracy.

Drawn from the records of :mod:`.data` (the curves of an analyze run, or of a pruning run's
unpruned model), in the colours of the PNGs of :mod:`.png`, so the HTML and the PNGs beside
it read the same way. The shared layout and band helpers serve :mod:`.interactive_prune` too.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from phaseprune.presentation.figures.data import (
    ACCURACY_COLOR,
    MARGIN_COLOR,
    TRANSITION_COLOR,
    OptionGrid,
    ReadoutCurves,
)

FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}
READOUT_AXIS = "readout layer (0 = embeddings)"
SHARE_BAR = {"title": {"text": "share", "side": "right"}, "tickformat": ".0%", "thickness": 14}
"""Colour bar of a share heatmap."""


def rgba(hex_color: str, alpha: float) -> str:
    """``"#1f77b4", 0.25`` -> ``"rgba(31,119,180,0.25)"``."""
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def base_layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    """White template, a horizontal legend above the plot, margins that fit a laptop."""
    fig.update_layout(
        template="plotly_white",
        height=height,
        font=FONT,
        margin={"l": 64, "r": 24, "t": 72, "b": 56},
        legend={"orientation": "h", "x": 0, "y": 1.02, "xanchor": "left", "yanchor": "bottom"},
        hoverlabel={"font_size": 12},
        **kw,
    )
    return fig


def phase_shapes(curves: ReadoutCurves) -> list[dict]:
    """Shaded Silent / Decisive phases and the transition line, in the x units of ``curves``."""
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": span.x0,
            "x1": span.x1,
            "y0": 0,
            "y1": 1,
            "fillcolor": span.color,
            "opacity": 0.6,
            "line": {"width": 0},
            "layer": "below",
            "name": span.name,
            "showlegend": True,
        }
        for span in curves.spans
    ]
    if curves.transition is not None:
        x = curves.transition_x
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": x,
                "x1": x,
                "y0": 0,
                "y1": 1,
                "showlegend": True,
                "name": f"transition (readout layer {curves.transition})",
                "line": {"color": TRANSITION_COLOR, "dash": "dash", "width": 2},
            }
        )
    return shapes


def band_traces(
    xs: Sequence[float],
    mean: Sequence[float],
    ci: Sequence[Sequence[float]],
    *,
    color: str,
    name: str,
    band_name: str,
    hover: str,
    customdata: list,
    fill: str,
) -> list[go.Scatter]:
    """A line with markers and its interval as a filled band (one legend entry each)."""
    xs = [float(x) for x in xs]
    lo = [float(c[0]) for c in ci]
    hi = [float(c[1]) for c in ci]
    band = go.Scatter(
        x=[*xs, *xs[::-1]],
        y=[*hi, *lo[::-1]],
        mode="lines",
        fill="toself",
        fillcolor=fill,
        line={"width": 0},
        hoverinfo="skip",
        name=band_name,
    )
    line = go.Scatter(
        x=xs,
        y=[float(v) for v in mean],
        mode="lines+markers",
        marker={"size": 6},
        name=name,
        line={"color": color, "width": 2},
        customdata=customdata,
        hovertemplate=hover,
    )
    return [band, line]


MARGIN_HOVER = (
    "readout layer %{customdata[0]}<br>margin %{y:.2f} "
    "(95% CI %{customdata[1]:.2f} to %{customdata[2]:.2f})<br>"
    "accuracy %{customdata[3]:.1%} · %{customdata[4]} phase<extra></extra>"
)


def margin_traces(curves: ReadoutCurves) -> list[go.Scatter]:
    """Mean Decision Margin and its bootstrap band at the curves' x positions."""
    custom = [
        [int(i), float(lo), float(hi), float(acc), phase]
        for i, (lo, hi), acc, phase in zip(
            curves.layer, curves.margin_ci, curves.accuracy, curves.phase, strict=True
        )
    ]
    return band_traces(
        curves.x,
        curves.margin,
        curves.margin_ci,
        color=MARGIN_COLOR,
        name="mean Decision Margin",
        band_name="95% bootstrap CI",
        hover=MARGIN_HOVER,
        customdata=custom,
        fill=rgba(MARGIN_COLOR, 0.25),
    )


def margin_figure(curves: ReadoutCurves) -> go.Figure:
    """Decision Margin by readout layer with its band, transition marked, phases shaded."""
    fig = go.Figure(margin_traces(curves))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    base_layout(fig, 400, shapes=[*fig.layout.shapes, *phase_shapes(curves)])
    fig.update_xaxes(title=READOUT_AXIS, range=[-0.6, float(curves.x[-1]) + 0.6])
    fig.update_yaxes(title="correct − best wrong (logits)", zeroline=False)
    return fig


def layer_accuracy_figure(curves: ReadoutCurves) -> go.Figure:
    """Accuracy of each layer's pick with its Wilson interval, against chance."""
    custom = [
        [float(lo), float(hi), phase]
        for (lo, hi), phase in zip(curves.accuracy_ci, curves.phase, strict=True)
    ]
    hover = (
        "readout layer %{x}<br>accuracy %{y:.1%} (95% CI %{customdata[0]:.1%}–"
        "%{customdata[1]:.1%})<br>%{customdata[2]} phase<extra></extra>"
    )
    traces = band_traces(
        curves.x,
        curves.accuracy,
        curves.accuracy_ci,
        color=ACCURACY_COLOR,
        name="layer accuracy",
        band_name="95% Wilson interval",
        hover=hover,
        customdata=custom,
        fill=rgba(ACCURACY_COLOR, 0.18),
    )
    first, last, chance = float(curves.x[0]), float(curves.x[-1]), curves.chance
    chance_line = go.Scatter(
        x=[first - 0.5, last + 0.5],
        y=[chance, chance],
        mode="lines",
        hoverinfo="skip",
        line={"color": "black", "dash": "dot", "width": 1.5},
        name=f"chance ({chance:.0%})",
    )
    fig = go.Figure([*traces, chance_line])
    base_layout(fig, 380, shapes=phase_shapes(curves))
    fig.update_xaxes(title=READOUT_AXIS, range=[-0.6, last + 0.6])
    fig.update_yaxes(title="accuracy of the layer's pick", range=[0, 1], tickformat=".0%")
    return fig


def _gold_strip(grid: OptionGrid) -> go.Heatmap:
    shares = [float(s) for s in grid.gold]
    return go.Heatmap(
        x=["gold"],
        y=list(grid.letters),
        z=[[s] for s in shares],
        zmin=0,
        zmax=1,
        colorscale="Viridis",
        showscale=False,
        text=[[f"{s:.0%}"] for s in shares],
        texttemplate="%{text}",
        hovertemplate="gold %{y}: %{z:.1%} of items<extra></extra>",
        name="gold letters",
    )


def option_frequency_figure(grid: OptionGrid) -> go.Figure:
    """Heatmap of pick shares (letters x readout layers) beside the gold letters' shares."""
    gold = grid.gold is not None
    fig = make_subplots(
        rows=1,
        cols=2 if gold else 1,
        shared_yaxes=True,
        horizontal_spacing=0.015,
        column_widths=[0.92, 0.08] if gold else [1.0],
    )
    fig.add_trace(
        go.Heatmap(
            x=grid.layer.tolist(),
            y=list(grid.letters),
            z=grid.shares.T.tolist(),
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            colorbar={**SHARE_BAR, "len": 1.0},
            hovertemplate="readout layer %{x}<br>picks %{y}: %{z:.1%} of items<extra></extra>",
            name="option frequency",
        ),
        row=1,
        col=1,
    )
    if gold:
        fig.add_trace(_gold_strip(grid), row=1, col=2)
    t = grid.transition
    if t is not None:
        fig.add_vline(x=t - 0.5, line={"color": "white", "dash": "dash", "width": 2}, row=1, col=1)
        fig.add_annotation(
            x=t - 0.5,
            xref="x",
            y=1,
            yref="paper",
            showarrow=False,
            text=f"transition {t}",
            xanchor="left",
            yanchor="bottom",
        )
    base_layout(fig, 90 + 42 * len(grid.letters) + 70, showlegend=False)
    fig.update_layout(margin={"t": 30})
    fig.update_xaxes(title=READOUT_AXIS, row=1, col=1)
    fig.update_yaxes(title="pick", autorange="reversed", row=1, col=1)
    return fig
