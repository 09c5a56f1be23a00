"""Model explorer views: the architecture summary, hook search, one hook's sample activation."""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz._common import bin_labels, bins, escape, pool, token_labels

# Rows of the summary table, in reading order; other keys of ``HookedLlama.info()`` follow.
_SUMMARY_KEYS = ("name", "architecture", "format", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_head",
                 "d_mlp", "d_vocab", "n_ctx", "rope_theta", "n_params", "dtype", "device", "n_hooks",
                 "checksum_status", "fingerprint", "source")


def info_html(info: Mapping[str, Any]) -> str:
    """``HookedLlama.info()`` as an HTML table (every value escaped: paths and names are data).

    >>> "&lt;x&gt;" in info_html({"name": "<x>"})
    True
    """
    keys = [k for k in _SUMMARY_KEYS if k in info] + [k for k in info if k not in _SUMMARY_KEYS]
    rows = []
    for key in keys:
        value = info[key]
        if key == "n_params" and isinstance(value, int):
            value = f"{value:,} ({value / 1e6:.1f} M)"
        rows.append(f"<tr><th style='text-align:left;padding:0 1em 0 0'>{escape(key)}</th>"
                    f"<td style='font-family:monospace;padding:0;word-break:break-all'>{escape(value)}</td></tr>")
    return "<table class='wb-info' style='line-height:1.3;font-size:12px'>" + "".join(rows) + "</table>"


def search_catalogue(catalogue: pd.DataFrame, query: str) -> pd.DataFrame:
    """Hooks whose name, component or description matches ``query``.

    A query with ``*``, ``?`` or ``[`` is a glob on the hook name (``blocks.*.hook_resid_post``);
    otherwise every whitespace-separated word must appear (case-insensitive) in the name,
    component or description.

    >>> cat = pd.DataFrame({"name": ["blocks.0.hook_resid_post", "blocks.0.attn.hook_pattern"],
    ...                     "component": ["block", "attn"], "description": ["residual", "attention pattern"]})
    >>> search_catalogue(cat, "attention pattern")["name"].tolist()
    ['blocks.0.attn.hook_pattern']
    >>> search_catalogue(cat, "blocks.*.hook_resid_*")["name"].tolist()
    ['blocks.0.hook_resid_post']
    """
    query = query.strip()
    if not query:
        return catalogue
    if any(ch in query for ch in "*?["):
        return catalogue[[fnmatch.fnmatchcase(n, query) for n in catalogue["name"]]]
    # fillna first: pandas' string dtype keeps a missing value missing through astype(str).
    text = catalogue[["name", "component", "description"]].astype(object).fillna("").astype(str)
    haystack = (text["name"] + " " + text["component"] + " " + text["description"]).str.lower()
    keep = np.ones(len(catalogue), dtype=bool)
    for word in query.lower().split():
        keep &= haystack.str.contains(word, regex=False).to_numpy()
    return catalogue[keep]


def activation_figure(
    values: np.ndarray,
    name: str,
    axes: Sequence[str] | None = None,
    tokens: Sequence[str] | None = None,
    max_rows: int = 48,
    max_cols: int = 96,
    hist_bins: int = 60,
) -> go.Figure:
    """One hook's activation on a sample prompt: a heatmap and a histogram of its values.

    Args:
        values: the activation without its batch axis, e.g. ``[pos, d_model]``.
        name: hook name (for the title).
        axes: names of the axes of ``values`` (from the catalogue's shape, batch removed).
        tokens: the sample prompt's tokens, used as row labels when the first axis is ``pos``.
        max_rows, max_cols: the heatmap pools larger axes into this many bins.
        hist_bins: histogram bins.

    >>> fig = activation_figure(cache["blocks.3.hook_resid_post"][0].numpy(), "blocks.3.hook_resid_post",
    ...                         axes=["pos", "d_model"], tokens=model.to_str_tokens("Hi"))  # doctest: +SKIP
    """
    values = np.asarray(values, dtype=np.float32)
    axes = list(axes) if axes is not None else [f"axis {i}" for i in range(values.ndim)]
    matrix = values.reshape(1, -1) if values.ndim < 2 else values.reshape(values.shape[0], -1)
    row_edges, col_edges = bins(matrix.shape[0], max_rows), bins(matrix.shape[1], max_cols)
    z = pool(matrix, row_edges, col_edges)
    if tokens is not None and axes and axes[0] == "pos" and len(tokens) == matrix.shape[0]:
        row_names = bin_labels([f"{i}: {t}" for i, t in enumerate(token_labels(tokens))], row_edges)
    else:
        row_names = bin_labels([str(i) for i in range(matrix.shape[0])], row_edges)
    col_axis = " x ".join(escape(a) for a in axes[1:]) or "value"
    counts, edges = np.histogram(values[np.isfinite(values)], bins=hist_bins)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.2,
                        subplot_titles=["values (mean over pooled cells)", "distribution"])
    limit = float(np.abs(z).max()) or 1.0
    fig.add_trace(go.Heatmap(z=z, x=col_edges[:-1].tolist(), y=list(range(len(row_names))), colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit,
                             customdata=np.array(row_names, dtype=object)[:, None].repeat(z.shape[1], axis=1),
                             hovertemplate="row %{customdata}<br>columns from %{x}<br>value %{z:.4f}<extra></extra>",
                             # The colour bar sits in the gap, clear of the histogram's tick labels.
                             colorbar={"x": 0.51, "xanchor": "left", "len": 0.9}), row=1, col=1)
    fig.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, marker_color="#4c78a8", showlegend=False,
                         hovertemplate="%{x:.3f}: %{y} values<extra></extra>"), row=1, col=2)
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(row_names))), ticktext=row_names,
                     autorange="reversed", title=escape(axes[0]) if values.ndim >= 2 else "", row=1, col=1)
    fig.update_xaxes(title=col_axis, row=1, col=1)
    fig.update_xaxes(title="value", row=1, col=2)
    stats = (f"shape {list(values.shape)}, mean {values.mean():.3g}, std {values.std():.3g}, "
             f"min {values.min():.3g}, max {values.max():.3g}")
    fig.update_layout(title=f"{escape(name)}<br><sup>{stats}</sup>", template="plotly_white", height=440,
                      margin={"l": 110, "t": 90})
    return fig
