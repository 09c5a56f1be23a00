"""Probe explorer: accuracy by layer for one or several concepts; a layer's examples on its probe.

The projection shown for a layer is each example's *out-of-fold* score (``ProbeResult.predictions``):
its projection on the probe direction fitted without that example's group, plus the fold's bias.
Held-out scores show what the probe generalises to, not what it memorised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.viz._common import escape, guarded, refresh, set_status
from workbench.viz.probes import probe_accuracy_figure

if TYPE_CHECKING:
    from workbench.probing import ProbeResult
    from workbench.probing.concepts import Concept

_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")


def probe_projection_figure(
    predictions: pd.DataFrame,
    hook: str,
    label_names: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
    title: str | None = None,
    max_points: int = 2000,
) -> go.Figure:
    """Out-of-fold probe scores of one hook's examples, one box of points per label.

    Args:
        predictions: ``ProbeResult.predictions`` (columns example, hook, label, score).
        hook: the hook (layer) to show.
        label_names: names of labels 0, 1, ... (default: the numbers).
        texts: example texts by example index, shown (escaped) in the hover.
        max_points: examples drawn as points per label at most (a seeded sample beyond that).

    >>> fig = probe_projection_figure(result.predictions, "blocks.12.hook_resid_post",
    ...                               concept.label_names, concept.texts)         # doctest: +SKIP
    """
    rows = predictions[predictions["hook"] == hook]
    if rows.empty:
        raise ValueError(f"no predictions for hook {hook!r} (hooks: {sorted(predictions['hook'].unique())[:5]} ...)")
    fig = go.Figure()
    rng = np.random.default_rng(0)
    for i, (label, part) in enumerate(rows.groupby("label", sort=True)):
        if len(part) > max_points:
            part = part.iloc[np.sort(rng.choice(len(part), max_points, replace=False))]
        name = str(label_names[int(label)]) if label_names is not None and float(label).is_integer() else str(label)
        hover = [escape(texts[e]) if texts is not None else f"example {e}" for e in part["example"]]
        fig.add_trace(go.Box(x=part["score"], name=escape(name), boxpoints="all", jitter=0.5, pointpos=0,
                             orientation="h", marker={"color": _COLOURS[i % len(_COLOURS)], "size": 5},
                             line={"width": 1}, fillcolor="rgba(0,0,0,0)", text=hover,
                             hovertemplate="%{text}<br>score %{x:.3f}<extra>" + escape(name) + "</extra>"))
    fig.add_vline(x=0, line={"dash": "dot", "color": "#777"})
    fig.update_layout(title=title or f"{escape(hook)}: out-of-fold scores (projection on the probe direction)",
                      xaxis_title="score (> 0: predicted as the positive label)", template="plotly_white",
                      height=150 + 90 * rows["label"].nunique(), showlegend=False)
    return fig


class ProbeExplorer(w.VBox):
    """Accuracy-by-layer curves with CIs and controls; click a layer to see its examples' scores.

    Args:
        results: one ``ProbeResult`` or several (one per concept; their curves share the plot).
        concepts: the ``Concept`` of each result, for example texts and label names in the
            projection (optional: without it examples are shown by index).

    >>> explorer = wb.viz.ProbeExplorer(result, concept)                             # doctest: +SKIP
    >>> explorer.layer.value = "blocks.12.hook_resid_post"                        # doctest: +SKIP
    """

    def __init__(self, results: ProbeResult | Sequence[ProbeResult],
                 concepts: Concept | Sequence[Concept] | None = None):
        self.results = [results] if not isinstance(results, (list, tuple)) else list(results)
        if concepts is not None:
            concepts = [concepts] if not isinstance(concepts, (list, tuple)) else list(concepts)
            if len(concepts) != len(self.results):
                raise ValueError(f"{len(concepts)} concepts for {len(self.results)} probe results: pass one per result")
        self.concepts = concepts
        names = [r.concept for r in self.results]
        if len(set(names)) != len(names):
            raise ValueError(f"several results for one concept: {names}; the explorer shows one per concept")
        self.concept = w.Dropdown(options=names, value=names[0], description="concept",
                                  layout=w.Layout(display="flex" if len(names) > 1 else "none"))
        self.layer = w.Dropdown(options=[], description="layer")
        self.status = w.HTML()
        self.accuracy = go.FigureWidget()
        self.projection = go.FigureWidget()
        frame = pd.concat([r.frame for r in self.results], ignore_index=True)
        refresh(self.accuracy, probe_accuracy_figure(frame, title="probe accuracy by layer (click a layer)"))
        for trace in self.accuracy.data:
            trace.on_click(self._clicked)
        self.concept.observe(lambda _: guarded(self.status, self._set_concept), names="value")
        self.layer.observe(lambda _: guarded(self.status, self._draw), names="value")
        super().__init__([w.HBox([self.concept, self.layer]), self.status, self.accuracy, self.projection])
        self.add_class("wb-probe-explorer")
        guarded(self.status, self._set_concept)

    @property
    def _index(self) -> int:
        return [r.concept for r in self.results].index(self.concept.value)

    @property
    def _result(self) -> ProbeResult:
        return self.results[self._index]

    def _set_concept(self) -> None:
        result = self._result
        hooks = list(dict.fromkeys(result.predictions["hook"]))
        best_layer = result.best_layer()
        best = result.frame.loc[result.frame["layer"] == best_layer, "hook"].iloc[0]
        self.layer.options = hooks
        self.layer.value = best  # the most informative layer first
        self._draw()

    def _clicked(self, trace, points, state) -> None:
        if points is None or not points.xs:
            return
        layer = int(round(points.xs[0]))
        rows = self._result.frame[self._result.frame["layer"] == layer]
        if not rows.empty:
            self.layer.value = rows["hook"].iloc[0]

    def _draw(self) -> None:
        result, hook = self._result, self.layer.value
        if hook is None:
            return
        concept = self.concepts[self._index] if self.concepts is not None else None
        texts = list(concept.texts) if concept is not None else None
        labels = list(concept.label_names) if concept is not None else None
        refresh(self.projection, probe_projection_figure(result.predictions, hook, labels, texts,
                                                         title=f"{escape(result.concept)}, {escape(hook)}: out-of-fold scores"))
        layer = result.frame.query("hook == @hook")["layer"].iloc[0]
        # A plain shape, not add_vline: once the browser has drawn the figure, the layout it syncs
        # back holds "y domain" references that add_vline would extend into invalid ones.
        self.accuracy.layout.shapes = [{"type": "line", "x0": float(layer), "x1": float(layer), "xref": "x",
                                        "y0": 0, "y1": 1, "yref": "paper", "line": {"dash": "dash", "color": "#444"}}]
        row = result.frame.query("hook == @hook and metric in ('accuracy', 'r2')").iloc[0]
        set_status(self.status, f"{result.concept} at {hook}: {row['metric']} {row['mean']:.3f} "
                                f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]")
