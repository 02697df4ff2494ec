"""The report's four plotly figures, one function per info object.

plotly is imported inside the functions, so importing :mod:`exitnas.reports` stays light.
"""

from __future__ import annotations

from typing import Any

from exitnas.reports.curves import TradeoffInfo
from exitnas.reports.info import ExitDistributionInfo, ExitPoint, HypervolumeInfo, ParetoInfo

__all__ = [
    "TITLES",
    "exit_distribution_figure",
    "hypervolume_figure",
    "pareto_figure",
    "tradeoff_figure",
]

TITLES = {
    "pareto": "Pareto front: accuracy vs expected MFLOPs",
    "hypervolume": "Hypervolume by trial",
    "exits": "Exit distribution of the Pareto points",
    "tradeoff": "Threshold trade-off",
}
GREY, ACCENT = "#b0b0b0", "#d62728"
MFLOPS_AXIS, ACCURACY_AXIS = "expected MFLOPs per image", "validation accuracy"


def _layout(fig: Any, title: str, **axes: Any) -> Any:
    fig.update_layout(
        title=title, template="plotly_white", height=460, margin={"t": 60, "b": 50}, **axes
    )
    return fig


def pareto_figure(info: ParetoInfo) -> Any:
    """All trials in grey, the front highlighted and joined as a staircase, cheapest first.

    Args:
        info: the trials (:func:`~exitnas.reports.info.pareto_info`).

    Returns:
        A ``plotly.graph_objects.Figure``; hovering a point shows its trial number.
    """
    import plotly.graph_objects as go

    latency = info.latency_ms or (None,) * len(info.trial_numbers)
    rows = list(zip(info.trial_numbers, info.mflops, info.accuracy, latency, strict=True))
    hover = "trial %{customdata[0]}<br>accuracy %{y:.4f}<br>%{x:.3f} MFLOPs"
    if info.latency_ms is not None:
        hover += "<br>%{customdata[1]:.3f} ms"
    fig = go.Figure()
    for on_front, name, style in (
        (False, "dominated trials", {"color": GREY, "size": 7}),
        (True, "Pareto front", {"color": ACCENT, "size": 10}),
    ):
        chosen = [r for r, f in zip(rows, info.front, strict=True) if f == on_front]
        chosen.sort(key=lambda r: (r[1], r[2]))
        fig.add_trace(
            go.Scatter(
                x=[r[1] for r in chosen],
                y=[r[2] for r in chosen],
                customdata=[[r[0], r[3]] for r in chosen],
                mode="lines+markers" if on_front else "markers",
                line={"shape": "hv", "color": ACCENT},
                marker=style,
                name=name,
                hovertemplate=hover + "<extra></extra>",
            )
        )
    return _layout(fig, TITLES["pareto"], xaxis_title=MFLOPS_AXIS, yaxis_title=ACCURACY_AXIS)


def hypervolume_figure(info: HypervolumeInfo) -> Any:
    """Hypervolume of the trials so far against the trial number."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=info.trial_numbers,
            y=info.hypervolume,
            mode="lines",
            line={"shape": "hv", "color": ACCENT},
            name="hypervolume",
            hovertemplate="after trial %{x}<br>hypervolume %{y:.4f}<extra></extra>",
        )
    )
    title = f"{TITLES['hypervolume']} (reference {info.reference_mflops:.3f} MFLOPs)"
    return _layout(
        fig,
        title,
        xaxis_title="trial number",
        yaxis_title="hypervolume (accuracy x MFLOPs)",
        yaxis_rangemode="tozero",
    )


def _cell(point: ExitPoint, k: int) -> tuple[float, str]:
    """Share and label of a point's k-th exit; nothing where it has fewer exits."""
    has = k < len(point.exit_fractions)
    return (point.exit_fractions[k], point.exit_labels[k]) if has else (0.0, "")


def exit_distribution_figure(info: ExitDistributionInfo) -> Any:
    """Stacked bars: the share of samples leaving at each exit, one bar per Pareto point."""
    import plotly.colors
    import plotly.graph_objects as go

    names = [f"#{p.trial_number}<br>{p.mflops:.3f} MFLOPs" for p in info.points]
    depth = max((len(p.exit_fractions) for p in info.points), default=0)
    palette = plotly.colors.sample_colorscale("Viridis", [k / max(depth, 2) for k in range(depth)])
    fig = go.Figure()
    for k in range(depth):
        cells = [_cell(p, k) for p in info.points]
        fig.add_trace(
            go.Bar(
                x=names,
                y=[fraction for fraction, _ in cells],
                customdata=[[c[1], p.accuracy] for c, p in zip(cells, info.points, strict=True)],
                name=f"exit {k + 1}",
                marker_color=palette[k],
                hovertemplate="%{customdata[0]}: %{y:.1%} of samples<br>"
                "point accuracy %{customdata[1]:.4f}<extra>exit " + str(k + 1) + "</extra>",
            )
        )
    return _layout(
        fig,
        TITLES["exits"],
        barmode="stack",
        xaxis_title="Pareto point (trial, cost), cheapest first",
        yaxis_title="share of validation samples",
        yaxis_tickformat=".0%",
        legend_title="exit (first to last)",
    )


def tradeoff_figure(info: TradeoffInfo) -> Any:
    """The chosen point's accuracy / cost curve as its thresholds sweep, its own point marked."""
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=info.mflops,
            y=info.accuracy,
            customdata=info.s,
            mode="lines+markers",
            marker={"color": info.s, "colorscale": "Viridis", "size": 7, "colorbar_title": "s"},
            line={"color": GREY},
            name="threshold sweep",
            hovertemplate="s = %{customdata:.3f}<br>accuracy %{y:.4f}<br>%{x:.3f} MFLOPs"
            "<extra></extra>",
        )
    )
    i = info.operating_index
    fig.add_trace(
        go.Scatter(
            x=[info.mflops[i]],
            y=[info.accuracy[i]],
            mode="markers",
            marker={"symbol": "star", "size": 18, "color": ACCENT, "line": {"width": 1}},
            name=f"deployed: {info.rule} at the bundle's thresholds"
            if info.deployed
            else f"trial {info.trial_number}'s thresholds",
            hovertemplate=("deployed " if info.deployed else "")
            + "operating point<br>accuracy %{y:.4f}<br>%{x:.3f} MFLOPs<extra></extra>",
        )
    )
    ends = ((0, "s=0: all leave at exit 1", 50), (-1, "s=1: all reach the last exit", -50))
    for j, text, shift in ends if info.thresholds else ():  # one exit: a single point
        fig.add_annotation(
            x=info.mflops[j], y=info.accuracy[j], text=text, ax=shift, ay=-30, showarrow=True
        )
    title = f"{TITLES['tradeoff']} of trial {info.trial_number} ({info.rule})"
    axes = {} if info.thresholds else {"yaxis_range": [0, 1]}
    if not info.thresholds:
        title += ": a single exit, no threshold to sweep"
    return _layout(
        fig,
        title,
        xaxis_title=MFLOPS_AXIS,
        yaxis_title=ACCURACY_AXIS,
        xaxis_rangemode="tozero",
        legend={"orientation": "h", "x": 0, "y": -0.2},
        **axes,
    )
