"""Eval result plots: pure ``data -> plotly Figure`` functions over the saved result tables.

They read the tidy tables of an ``EvalResult`` / ``SuiteResult`` (``metrics``: suite, metric,
category, value, ci_low, ci_high, n; toxicity ``samples``: category, max_score), so the HTML
report (:mod:`workbench.viz.report`) and the eval dashboard draw the same figures, with the
same CI error bars and hover text (:func:`ci_error_bars`, :func:`ci_customdata`,
:data:`CI_HOVERTEMPLATE`). Category names come from data files and
are escaped before they reach plotly (see :mod:`workbench.viz._common`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.viz._common import escape


def ci_error_bars(rows: pd.DataFrame) -> dict:
    """Plotly ``error_y`` for metric rows: the 95% CI around ``value`` (none where it is NaN).

    >>> ci_error_bars(pd.DataFrame({"value": [0.5], "ci_low": [0.25], "ci_high": [0.75]}))["array"]
    array([0.25])
    """
    value = rows["value"].to_numpy(dtype=float)
    high = np.nan_to_num(rows["ci_high"].to_numpy(dtype=float) - value, nan=0.0)
    low = np.nan_to_num(value - rows["ci_low"].to_numpy(dtype=float), nan=0.0)
    return {"type": "data", "symmetric": False, "array": high, "arrayminus": low}


def ci_customdata(rows: pd.DataFrame) -> np.ndarray:
    """``[ci_low, ci_high, n]`` per metric row, the ``customdata`` :data:`CI_HOVERTEMPLATE` reads."""
    return rows[["ci_low", "ci_high", "n"]].to_numpy(dtype=float)


# A metric bar's hover text: value [CI], n (from ci_customdata).
CI_HOVERTEMPLATE = "%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}], n=%{customdata[2]:.0f}<extra></extra>"


def eval_metrics_figure(metrics: pd.DataFrame, title: str = "headline metrics (95% bootstrap CI)") -> go.Figure:
    """One bar per headline metric (``category == "all"``) with its CI, grouped by suite.

    Args:
        metrics: a metrics table (one suite or the concatenation of several).

    >>> fig = eval_metrics_figure(res.metrics)                        # doctest: +SKIP
    """
    rows = metrics[metrics["category"] == "all"]
    fig = go.Figure()
    for suite, part in rows.groupby("suite", sort=False):
        fig.add_trace(go.Bar(x=[escape(m) for m in part["metric"]], y=part["value"], name=escape(suite),
                             error_y=ci_error_bars(part), customdata=ci_customdata(part),
                             hovertemplate=CI_HOVERTEMPLATE))
    fig.update_layout(title=title, barmode="group", template="plotly_white", yaxis_title="value",
                      legend_title="suite")
    return fig


def eval_category_figure(metrics: pd.DataFrame, metric: str, suite: str | None = None) -> go.Figure:
    """``metric`` per category (bias type, subset, group ...) with CIs; ``all`` drawn first, in grey.

    Args:
        metrics: a metrics table.
        metric: a metric name, e.g. ``"pct_stereotype"``.
        suite: restrict to one suite (needed when several suites share a metric name).

    >>> fig = eval_category_figure(res.metrics, "pct_stereotype")    # doctest: +SKIP
    """
    rows = metrics[metrics["metric"] == metric]
    if suite is not None:
        rows = rows[rows["suite"] == suite]
    if rows.empty:
        raise ValueError(f"no rows for metric {metric!r}" + (f" in suite {suite!r}" if suite else ""))
    rows = pd.concat([rows[rows["category"] == "all"], rows[rows["category"] != "all"]])
    colours = ["#7f7f7f" if c == "all" else "#1f77b4" for c in rows["category"]]
    fig = go.Figure(go.Bar(x=[escape(c) for c in rows["category"]], y=rows["value"], marker_color=colours,
                           error_y=ci_error_bars(rows), customdata=ci_customdata(rows),
                           hovertemplate=CI_HOVERTEMPLATE))
    label = f"{suite}: {metric}" if suite else metric
    fig.update_layout(title=escape(f"{label} by category (95% bootstrap CI)"), template="plotly_white",
                      yaxis_title=escape(metric), xaxis_title="category", showlegend=False)
    return fig


def toxicity_score_figure(samples: pd.DataFrame, threshold: float = 0.5, scorer: str | None = None) -> go.Figure:
    """Distribution of each prompt's maximum continuation score, per prompt subset.

    Args:
        samples: toxicity samples (``category``, ``max_score``).
        threshold: the toxicity threshold (0.5 in RealToxicityPrompts), drawn as a line.
        scorer: the scorer's name, for the axis title.

    >>> fig = toxicity_score_figure(res.samples, scorer="profanity-check")  # doctest: +SKIP
    """
    fig = go.Figure()
    for category, part in samples.groupby("category", sort=False):
        fig.add_trace(go.Box(y=part["max_score"], name=escape(category), boxpoints="all", jitter=0.4,
                             pointpos=0, marker={"size": 4}, hovertext=[escape(e) for e in part.get("example_id", [])]))
    fig.add_hline(y=threshold, line_dash="dot", annotation_text=f"threshold {threshold}")
    axis = f"max score over continuations ({escape(scorer)})" if scorer else "max score over continuations"
    fig.update_layout(title="toxicity: worst continuation per prompt", template="plotly_white",
                      yaxis_title=axis, yaxis_range=[0, 1.02], showlegend=False)
    return fig
