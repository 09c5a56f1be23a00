"""Patching and steering plots: pure ``data -> plotly Figure`` functions."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go


def _label(text: str) -> str:
    # Tokens come from the model and the prompt: show them as text, never as markup.
    return html.escape(text.replace("\n", "\\n"))


def patch_figure(result, title: str | None = None) -> go.Figure:
    """Heatmap of a :class:`~workbench.patching.PatchResult` with token (or head) labels.

    Layers run down the y axis; positions (labelled ``pos: token``) or heads across. A
    ``[layer, pos, head]`` table is shown summed over heads. Colour is the normalised effect
    (1 = fully restored), centred on 0; hover shows the raw metric too.

    >>> fig = patch_figure(wb.patch_sweep(model, clean, corrupt, metric))   # doctest: +SKIP
    """
    values = result.values.detach().float().cpu().numpy()
    raw = result.raw.detach().float().cpu().numpy()
    if values.ndim == 3:  # layer x pos x head: the per-position total over heads
        values, raw = values.sum(-1), raw.sum(-1)
        axes = ("pos",)
    else:
        axes = result.axes
    if axes == ("pos",):
        x = [f"{p}: {_label(result.clean_tokens[p])}" for p in result.positions]
        x_title = "position: clean token"
        changed = [result.clean_tokens[p] != result.corrupt_tokens[p] for p in result.positions]
        x = [f"<b>{label}</b>" if diff else label for label, diff in zip(x, changed, strict=True)]
    else:
        x = [f"H{h}" for h in result.heads]
        x_title = "head"
    y = [f"L{layer}" for layer in result.layers]
    finite = np.abs(values[np.isfinite(values)])
    bound = float(finite.max()) if finite.size else 1.0
    fig = go.Figure(go.Heatmap(
        z=values, x=x, y=y, customdata=raw, colorscale="RdBu", zmid=0, zmin=-bound, zmax=bound,
        colorbar={"title": "restored" if result.mode == "denoise" else "effect"},
        hovertemplate="%{y}, %{x}<br>normalised %{z:.3f}<br>metric %{customdata:.4f}<extra></extra>",
    ))
    default = (f"{result.method} patching ({result.mode}) of {result.site}: {_label(result.metric_name)} "
               f"clean {result.clean_value:.3f}, corrupted {result.corrupt_value:.3f}")
    fig.update_layout(title=title or default, xaxis_title=x_title, yaxis_title="layer",
                      yaxis_autorange="reversed", template="plotly_white")
    return fig


def dose_response_figure(frame: pd.DataFrame, title: str = "dose-response") -> go.Figure:
    """Metric against steering strength, one line per direction (the concept and its placebo).

    Args:
        frame: ``DoseResponse.frame``: columns ``alpha``, ``value``, ``direction``.
    """
    fig = go.Figure()
    for name, part in frame.groupby("direction", sort=False):
        part = part.sort_values("alpha")
        fig.add_trace(go.Scatter(x=part["alpha"], y=part["value"], mode="lines+markers", name=_label(str(name)),
                                 line={"dash": "dot" if name == "placebo" else "solid"}))
    fig.update_layout(title=title, xaxis_title="steering strength (alpha)", yaxis_title="metric",
                      template="plotly_white")
    return fig
