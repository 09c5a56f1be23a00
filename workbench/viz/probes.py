"""Probe sweep plots."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

_STYLE = {
    "accuracy": ("probe accuracy", "#1f77b4"),
    "control_accuracy": ("control task (Hewitt & Liang)", "#ff7f0e"),
    "random_direction_accuracy": ("random direction", "#7f7f7f"),
    "r2": ("probe R²", "#1f77b4"),
}


def probe_accuracy_figure(frame: pd.DataFrame, title: str = "probe accuracy by layer") -> go.Figure:
    """Accuracy by layer with 95% CI bands, the control task and a random direction beside it.

    Args:
        frame: ``ProbeResult.frame`` (columns layer, metric, mean, ci_low, ci_high; several
            concepts are drawn side by side when a ``concept`` column has several values).

    >>> fig = probe_accuracy_figure(result.frame)                      # doctest: +SKIP
    """
    fig = go.Figure()
    concepts = frame["concept"].unique() if "concept" in frame else [None]
    for concept in concepts:
        part = frame if concept is None else frame[frame["concept"] == concept]
        for metric, (label, colour) in _STYLE.items():
            rows = part[part["metric"] == metric].sort_values("layer")
            if rows.empty:
                continue
            name = label if len(concepts) == 1 else f"{concept}: {label}"
            x = rows["layer"].astype(float).tolist()
            fig.add_trace(go.Scatter(x=x + x[::-1], y=rows["ci_high"].tolist() + rows["ci_low"].tolist()[::-1],
                                     fill="toself", fillcolor=colour, opacity=0.15, line={"width": 0},
                                     hoverinfo="skip", showlegend=False, legendgroup=name))
            fig.add_trace(go.Scatter(x=x, y=rows["mean"], mode="lines+markers", name=name, legendgroup=name,
                                     line={"color": colour, "dash": "solid" if metric in ("accuracy", "r2") else "dot"},
                                     customdata=rows[["ci_low", "ci_high"]].to_numpy(),
                                     hovertemplate="layer %{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"))
    fig.update_layout(title=title, xaxis_title="layer", yaxis_title="accuracy (out-of-fold)",
                      template="plotly_white", hovermode="x unified")
    return fig
