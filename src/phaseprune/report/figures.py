"""Interactive (plotly) figures of one readout: margin, option frequency, layer accuracy.

Built from the ``layers`` / ``phases`` records of ``summary.json`` (or of a trajectory's
``step0``) alone. The colours are those of the static figures in :mod:`phaseprune.plots`, so
the HTML and the PNGs beside it read the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from phaseprune.plots import DECISIVE_COLOR, SILENT_COLOR
from phaseprune.report.tables import phase_of

MARGIN_COLOR = "#1f77b4"
ACCURACY_COLOR = "#d62728"
TRANSITION_COLOR = "#2a7a2a"
FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 13}


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


def phase_shapes(phases: dict, transition: int | None, xs: Sequence[int]) -> list[dict]:
    """Shaded Silent / Decisive phases and the transition line, in the x units of ``xs``.

    Args:
        phases: a ``phases`` record (``silent``, ``decisive`` as readout-index ranges).
        transition: the transition readout index, or None.
        xs: x coordinate of each readout index (the readout index itself, or the original
            layer it reads in a pruned model).
    """
    shapes = []
    spans = [("Silent Phase", SILENT_COLOR, phases["silent"]),
             ("Decisive Phase", DECISIVE_COLOR, phases.get("decisive"))]  # fmt: skip
    for name, color, span in spans:
        if span and span[1] >= span[0]:
            shapes.append({
                "type": "rect", "xref": "x", "yref": "paper", "x0": xs[span[0]] - 0.5,
                "x1": xs[span[1]] + 0.5, "y0": 0, "y1": 1, "fillcolor": color, "opacity": 0.6,
                "line": {"width": 0}, "layer": "below", "name": name, "showlegend": True,
            })  # fmt: skip
    if transition is not None:
        shapes.append({
            "type": "line", "xref": "x", "yref": "paper", "x0": xs[transition],
            "x1": xs[transition], "y0": 0, "y1": 1, "showlegend": True,
            "name": f"transition (readout layer {transition})",
            "line": {"color": TRANSITION_COLOR, "dash": "dash", "width": 2},
        })  # fmt: skip
    return shapes


def band_traces(
    xs: Sequence[int], mean: Sequence[float], ci: Sequence[Sequence[float]], *, color: str,
    name: str, band_name: str, hover: str, customdata: list, fill: str,
) -> list[go.Scatter]:  # fmt: skip
    """A line with markers and its interval as a filled band (one legend entry each)."""
    lo = [c[0] for c in ci]
    hi = [c[1] for c in ci]
    band = go.Scatter(
        x=[*xs, *xs[::-1]], y=[*hi, *lo[::-1]], mode="lines", fill="toself", fillcolor=fill,
        line={"width": 0}, hoverinfo="skip", name=band_name,
    )  # fmt: skip
    line = go.Scatter(
        x=list(xs), y=list(mean), mode="lines+markers", marker={"size": 6}, name=name,
        line={"color": color, "width": 2}, customdata=customdata, hovertemplate=hover,
    )  # fmt: skip
    return [band, line]


MARGIN_HOVER = (
    "readout layer %{customdata[0]}<br>margin %{y:.2f} "
    "(95% CI %{customdata[1]:.2f} to %{customdata[2]:.2f})<br>"
    "accuracy %{customdata[3]:.1%} · %{customdata[4]} phase<extra></extra>"
)


def margin_traces(layers: list[dict], phases: dict, xs: Sequence[int]) -> list[go.Scatter]:
    """Mean Decision Margin and its bootstrap band at the x positions ``xs``."""
    custom = [
        [r["layer"], r["margin_ci"][0], r["margin_ci"][1], r["accuracy"],
         phase_of(r["layer"], phases)]
        for r in layers
    ]  # fmt: skip
    return band_traces(
        xs, [r["margin_mean"] for r in layers], [r["margin_ci"] for r in layers],
        color=MARGIN_COLOR, name="mean Decision Margin", band_name="95% bootstrap CI",
        hover=MARGIN_HOVER, customdata=custom, fill="rgba(31,119,180,0.25)",
    )  # fmt: skip


def margin_figure(layers: list[dict], phases: dict, transition: int | None) -> go.Figure:
    """Decision Margin by readout layer with its band, transition marked, phases shaded."""
    xs = [r["layer"] for r in layers]
    fig = go.Figure(margin_traces(layers, phases, xs))
    fig.add_hline(y=0, line={"color": "black", "width": 1})
    base_layout(fig, 400, shapes=[*fig.layout.shapes, *phase_shapes(phases, transition, xs)])
    fig.update_xaxes(title="readout layer (0 = embeddings)", range=[-0.6, xs[-1] + 0.6])
    fig.update_yaxes(title="correct − best wrong (logits)", zeroline=False)
    return fig


def layer_accuracy_figure(
    layers: list[dict], phases: dict, transition: int | None, chance: float
) -> go.Figure:
    """Accuracy of each layer's pick with its Wilson interval, against chance."""
    xs = [r["layer"] for r in layers]
    custom = [[r["accuracy_ci"][0], r["accuracy_ci"][1], phase_of(r["layer"], phases)]
              for r in layers]  # fmt: skip
    hover = ("readout layer %{x}<br>accuracy %{y:.1%} (95% CI %{customdata[0]:.1%}–"
             "%{customdata[1]:.1%})<br>%{customdata[2]} phase<extra></extra>")  # fmt: skip
    traces = band_traces(
        xs, [r["accuracy"] for r in layers], [r["accuracy_ci"] for r in layers],
        color=ACCURACY_COLOR, name="layer accuracy", band_name="95% Wilson interval",
        hover=hover, customdata=custom, fill="rgba(214,39,40,0.18)",
    )  # fmt: skip
    chance_line = go.Scatter(
        x=[xs[0] - 0.5, xs[-1] + 0.5], y=[chance, chance], mode="lines", hoverinfo="skip",
        line={"color": "black", "dash": "dot", "width": 1.5}, name=f"chance ({chance:.0%})",
    )  # fmt: skip
    fig = go.Figure([*traces, chance_line])
    base_layout(fig, 380, shapes=phase_shapes(phases, transition, xs))
    fig.update_xaxes(title="readout layer (0 = embeddings)", range=[-0.6, xs[-1] + 0.6])
    fig.update_yaxes(title="accuracy of the layer's pick", range=[0, 1], tickformat=".0%")
    return fig


def option_frequency_figure(
    layers: list[dict], letters: Sequence[str], gold: dict | None, transition: int | None
) -> go.Figure:
    """Heatmap of pick shares (letters x readout layers) beside the gold letters' shares."""
    xs = [r["layer"] for r in layers]
    z = [[r["option_frequency"][c] for r in layers] for c in letters]  # (k, n_layers + 1)
    cols = 2 if gold else 1
    fig = make_subplots(
        rows=1, cols=cols, shared_yaxes=True, horizontal_spacing=0.015,
        column_widths=[0.92, 0.08] if gold else [1.0],
    )  # fmt: skip
    fig.add_trace(
        go.Heatmap(
            x=xs, y=list(letters), z=z, zmin=0, zmax=1, colorscale="Viridis",
            colorbar={"title": {"text": "share", "side": "right"}, "tickformat": ".0%",
                      "thickness": 14, "len": 1.0},
            hovertemplate="readout layer %{x}<br>picks %{y}: %{z:.1%} of items<extra></extra>",
            name="option frequency",
        ),
        row=1, col=1,
    )  # fmt: skip
    if gold:
        shares = [gold.get(c, 0.0) for c in letters]
        fig.add_trace(
            go.Heatmap(
                x=["gold"], y=list(letters), z=[[s] for s in shares], zmin=0, zmax=1,
                colorscale="Viridis", showscale=False, text=[[f"{s:.0%}"] for s in shares],
                texttemplate="%{text}", hovertemplate="gold %{y}: %{z:.1%} of items<extra></extra>",
                name="gold letters",
            ),
            row=1, col=2,
        )  # fmt: skip
    if transition is not None:
        fig.add_vline(x=transition - 0.5, line={"color": "white", "dash": "dash", "width": 2},
                      row=1, col=1)  # fmt: skip
        fig.add_annotation(
            x=transition - 0.5,
            xref="x",
            y=1,
            yref="paper",
            showarrow=False,
            text=f"transition {transition}",
            xanchor="left",
            yanchor="bottom",
        )
    base_layout(fig, 90 + 42 * len(letters) + 70, showlegend=False)
    fig.update_layout(margin={"t": 30})
    fig.update_xaxes(title="readout layer (0 = embeddings)", row=1, col=1)
    fig.update_yaxes(title="pick", autorange="reversed", row=1, col=1)
    return fig
