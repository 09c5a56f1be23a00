"""Views of a paired comparison of two runs (:func:`workbench.evals.compare.compare_runs`).

The report and the eval dashboard show the same two things, drawn here: a table of the paired
rows (difference B - A with its paired bootstrap interval, the test, its p-value and the
Benjamini-Hochberg adjusted one) and a forest plot of the differences by category, where a
difference whose adjusted p-value is below 0.05 is drawn filled. Every string from data is
escaped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.viz._common import escape

SIGNIFICANT = 0.05  # adjusted p-value under which a difference is drawn filled


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.{digits}g}" if isinstance(value, float) and abs(value) < 1e-3 and value else f"{value:.{digits}f}"


def paired_table_html(frame: pd.DataFrame, labels: tuple[str, str] = ("A", "B"), metric: str | None = None) -> str:
    """The rows of ``compare_runs`` (one metric, or all) as an escaped HTML table.

    >>> rows = pd.DataFrame({"suite": ["s"], "metric": ["acc"], "category": ["<b>"], "n": [10], "value_a": [0.5],
    ...                      "value_b": [0.7], "diff": [0.2], "diff_ci_low": [0.0], "diff_ci_high": [0.4],
    ...                      "test": ["mcnemar_exact"], "p_value": [0.25], "p_adjusted": [0.25], "note": [""]})
    >>> "&lt;b&gt;" in paired_table_html(rows) and "0.200 [0.000, 0.400]" in paired_table_html(rows)
    True
    """
    rows = frame if metric is None else frame[frame["metric"] == metric]
    a, b = (escape(x) for x in labels)
    head = ["suite", "metric", "category", "n", a, b, f"{b} - {a} [95% CI]", "test", "p", "p (BH)"]
    body = []
    for r in rows.itertuples(index=False):
        adjusted = getattr(r, "p_adjusted", np.nan)
        strong = isinstance(adjusted, float) and np.isfinite(adjusted) and adjusted < SIGNIFICANT
        diff = f"{_num(r.diff)} [{_num(r.diff_ci_low)}, {_num(r.diff_ci_high)}]"
        cells = [escape(r.suite), escape(r.metric), escape(r.category), str(int(r.n)), _num(r.value_a),
                 _num(r.value_b), f"<b>{diff}</b>" if strong else diff, escape(r.test), _num(r.p_value, 4),
                 _num(adjusted, 4)]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not body:
        return "<p>No paired rows.</p>"
    return ("<table class='wb-paired'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(body) + "</table>")


def paired_diff_figure(frame: pd.DataFrame, metric: str, suite: str | None = None,
                       labels: tuple[str, str] = ("A", "B")) -> go.Figure:
    """Forest plot: per category, ``B - A`` with its paired 95% interval; filled where the
    Benjamini-Hochberg adjusted p-value is below 0.05.

    >>> rows = pd.DataFrame({"suite": ["s", "s"], "metric": ["acc", "acc"], "category": ["all", "x"], "n": [10, 5],
    ...                      "diff": [0.2, -0.1], "diff_ci_low": [0.1, -0.3], "diff_ci_high": [0.3, 0.1],
    ...                      "p_value": [0.01, 0.5], "p_adjusted": [0.02, 0.5]})
    >>> [list(t.y) for t in paired_diff_figure(rows, "acc").data]
    [['all'], ['x']]
    """
    rows = frame[(frame["metric"] == metric) & ((frame["suite"] == suite) if suite is not None else True)]
    rows = rows[np.isfinite(rows["diff"].to_numpy(float))]
    fig = go.Figure()
    strong = rows["p_adjusted"].to_numpy(float) < SIGNIFICANT
    for mask, name, symbol in ((strong, f"adjusted p < {SIGNIFICANT}", "circle"),
                               (~strong, f"adjusted p >= {SIGNIFICANT}", "circle-open")):
        part = rows[mask]
        if part.empty:
            continue
        diff = part["diff"].to_numpy(float)
        fig.add_trace(go.Scatter(
            x=diff, y=[escape(c) for c in part["category"]], mode="markers", name=name,
            marker={"symbol": symbol, "size": 10, "color": "#1f77b4"},
            error_x={"type": "data", "symmetric": False,
                     "array": np.nan_to_num(part["diff_ci_high"].to_numpy(float) - diff),
                     "arrayminus": np.nan_to_num(diff - part["diff_ci_low"].to_numpy(float))},
            customdata=part[["p_value", "p_adjusted", "n"]].to_numpy(float),
            hovertemplate="%{x:.3f}, p=%{customdata[0]:.3g} (BH %{customdata[1]:.3g}), n=%{customdata[2]:.0f}"
                          "<extra></extra>"))
    a, b = (escape(x) for x in labels)
    fig.add_vline(x=0, line={"color": "#888", "dash": "dot"})
    fig.update_layout(title=escape(f"{suite + ': ' if suite else ''}{metric}, {labels[1]} - {labels[0]} (paired)"),
                      xaxis_title=f"{b} - {a}", height=max(260, 30 * len(rows) + 120),
                      yaxis={"autorange": "reversed"}, margin={"l": 200})
    return fig
