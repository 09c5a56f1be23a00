"""Views of a model comparison (``workbench.models.compare``): pure ``data -> plotly Figure``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.viz._common import escape

if TYPE_CHECKING:
    from workbench.models.compare import ModelComparison


def _layer_labels(layers: pd.Series) -> list[str]:
    return ["embed" if int(layer) < 0 else str(int(layer)) for layer in layers]


def layer_difference_figure(layers: pd.DataFrame, title: str = "residual stream: b against a") -> go.Figure:
    """Relative difference norm and cosine of the two models' residual streams, by layer.

    Args:
        layers: ``ModelComparison.layers``: columns ``layer`` (-1 = embeddings),
            ``rel_diff_norm``, ``cosine``.

    >>> frame = pd.DataFrame({"layer": [-1, 0, 1], "rel_diff_norm": [0.0, 0.1, 0.3], "cosine": [1.0, 0.99, 0.9]})
    >>> [t.name for t in layer_difference_figure(frame).data]
    ['||r_b - r_a|| / ||r_a||', 'cos(r_a, r_b)']
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("relative difference norm", "cosine"))
    _add_layer_traces(fig, layers, col=1)
    fig.update_layout(title=title, template="plotly_white", showlegend=False)
    return fig


def kl_histogram_figure(kl: np.ndarray | pd.Series, title: str = "per-token KL(a || b)", bins: int = 50) -> go.Figure:
    """Histogram of per-token KL divergences (nats), counts on a log axis (most tokens sit near 0).

    >>> len(kl_histogram_figure(np.array([0.0, 0.1, 2.0])).data)
    1
    """
    fig = go.Figure(go.Histogram(x=np.asarray(kl, dtype=float), nbinsx=bins, name="KL"))
    fig.update_layout(title=title, xaxis_title="KL (nats)", yaxis_title="tokens", yaxis_type="log",
                      template="plotly_white")
    return fig


def model_comparison_figure(comparison: ModelComparison, title: str | None = None) -> go.Figure:
    """One figure of a :class:`~workbench.models.compare.ModelComparison`: by layer, the
    relative difference norm and the cosine of the residual streams; the histogram of per-token KL.

    >>> fig = comparison.plot()                                    # doctest: +SKIP
    """
    s = comparison.summary
    if title is None:
        title = (f"{s.get('model_b')} against {s.get('model_a')}: mean KL {s.get('mean_kl', float('nan')):.3g} "
                 f"nats, top-1 agreement {s.get('top1_agreement', float('nan')):.1%}")
    fig = make_subplots(rows=1, cols=3, subplot_titles=("relative difference norm", "cosine", "per-token KL(a || b)"))
    _add_layer_traces(fig, comparison.layers, col=1)
    fig.add_trace(go.Histogram(x=comparison.tokens["kl"].to_numpy(dtype=float), nbinsx=50, name="KL"),
                  row=1, col=3)
    fig.update_xaxes(title_text="KL (nats)", row=1, col=3)
    fig.update_yaxes(title_text="tokens", type="log", row=1, col=3)
    fig.update_layout(title=escape(title), template="plotly_white", showlegend=False)
    return fig


def _add_layer_traces(fig: go.Figure, layers: pd.DataFrame, col: int) -> None:
    x = layers["layer"].to_numpy()
    axis = {"tickmode": "array", "tickvals": list(x), "ticktext": _layer_labels(layers["layer"]), "title_text": "layer"}
    fig.add_trace(go.Scatter(x=x, y=layers["rel_diff_norm"], mode="lines+markers", name="||r_b - r_a|| / ||r_a||"),
                  row=1, col=col)
    fig.add_trace(go.Scatter(x=x, y=layers["cosine"], mode="lines+markers", name="cos(r_a, r_b)"),
                  row=1, col=col + 1)
    for c in (col, col + 1):
        fig.update_xaxes(row=1, col=c, **axis)
