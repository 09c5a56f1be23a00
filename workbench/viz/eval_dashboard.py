"""Eval dashboard: suites x metrics with CIs, a category filter, the examples behind the numbers.

Over one saved run, or two compared side by side (e.g. before and after steering): runs are
``EvalResult`` / ``SuiteResult`` objects or their folders, read with the one reader
(:func:`workbench.evals.result.load_run`). The drill-down table ranks the examples that drive a suite's numbers
(the most stereotyped CrowS-Pairs pairs, the most confidently wrong answers, the most toxic
continuations) with their per-choice log-likelihoods; for a refusal suite, each example's
rendered prompt, completion, the judge's verdict and reason (those against the expected
behaviour first), with the judge's measured agreement in the status line. With two runs, each
row also shows the other run's value for the same ``example_id``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.evals.result import EvalResult, SuiteResult, load_run
from workbench.evals.suites import is_preference_suite
from workbench.viz._common import escape, guarded, refresh, set_status
from workbench.viz.evals import (
    CI_HOVERTEMPLATE,
    ci_customdata,
    ci_error_bars,
    eval_category_figure,
    eval_metrics_figure,
)
from workbench.viz.paired import paired_table_html

ALL = "(all categories)"
_COLOURS = ("#1f77b4", "#ff7f0e")


def load_runs(run: Any) -> dict[str, EvalResult]:
    """Suite name -> result, from an ``EvalResult``, a ``SuiteResult`` or a saved folder of either.

    >>> suites = load_runs("runs/quick")                              # doctest: +SKIP
    """
    if isinstance(run, (str, os.PathLike)):
        run = load_run(run)
    if isinstance(run, EvalResult):
        return {run.suite or "suite": run}
    if isinstance(run, SuiteResult):
        return dict(run.results)
    raise TypeError(f"run: expected an EvalResult, a SuiteResult or a run folder, got {type(run).__name__}")


def _json_safe(fig: go.Figure) -> go.Figure:
    """NaN (an undefined metric or CI) as None: a widget's state goes to the browser as strict JSON."""
    for trace in fig.data:
        for attr in ("y", "customdata"):
            values = getattr(trace, attr, None)
            if values is None:
                continue
            array = np.asarray(values, dtype=float)
            if np.isnan(array).any():
                setattr(trace, attr, np.where(np.isnan(array), None, array).tolist())
    return fig


def _metrics(suites: Mapping[str, EvalResult]) -> pd.DataFrame:
    return pd.concat([s.metrics for s in suites.values()], ignore_index=True)


def compare_metrics_figure(tables: Mapping[str, pd.DataFrame],
                           title: str = "headline metrics (95% bootstrap CI)") -> go.Figure:
    """Headline metrics (``category == "all"``) of several runs side by side, one bar colour per run.

    Args:
        tables: run label -> metrics table.

    >>> fig = compare_metrics_figure({"before": a.metrics, "after": b.metrics})   # doctest: +SKIP
    """
    fig = go.Figure()
    for i, (label, metrics) in enumerate(tables.items()):
        rows = metrics[metrics["category"] == "all"]
        x = [escape(f"{s}: {m}") for s, m in zip(rows["suite"], rows["metric"], strict=True)]
        fig.add_trace(go.Bar(x=x, y=rows["value"], name=escape(label), marker_color=_COLOURS[i % 2],
                             error_y=ci_error_bars(rows), customdata=ci_customdata(rows),
                             hovertemplate=CI_HOVERTEMPLATE))
    fig.update_layout(title=title, barmode="group", template="plotly_white", yaxis_title="value", legend_title="run")
    return fig


def compare_category_figure(tables: Mapping[str, pd.DataFrame], metric: str, suite: str,
                            categories: Sequence[str] | None = None) -> go.Figure:
    """One metric per category for several runs side by side (``all`` first).

    Args:
        tables: run label -> metrics table.
        metric, suite: the metric to show.
        categories: restrict to these categories (``all`` is always kept).

    >>> fig = compare_category_figure({"before": a.metrics, "after": b.metrics}, "acc", "winogender")  # doctest: +SKIP
    """
    fig = go.Figure()
    for i, (label, metrics) in enumerate(tables.items()):
        rows = metrics[(metrics["metric"] == metric) & (metrics["suite"] == suite)]
        if categories is not None:
            rows = rows[rows["category"].isin(["all", *categories])]
        rows = pd.concat([rows[rows["category"] == "all"], rows[rows["category"] != "all"]])
        fig.add_trace(go.Bar(x=[escape(c) for c in rows["category"]], y=rows["value"], name=escape(label),
                             marker_color=_COLOURS[i % 2], error_y=ci_error_bars(rows), customdata=ci_customdata(rows),
                             hovertemplate=CI_HOVERTEMPLATE))
    fig.update_layout(title=escape(f"{suite}: {metric} by category (95% bootstrap CI)"), barmode="group",
                      template="plotly_white", yaxis_title=escape(metric), xaxis_title="category",
                      legend_title="run")
    return fig


def _scored(samples: pd.DataFrame, suite: str, preference: bool) -> tuple[str, pd.DataFrame, bool]:
    """Every example with its ranking score: ``(what the score is, table, rank only score > 0)``."""
    columns = ["example_id", "category", "text", "other", "loglik", "score"]
    s = samples
    if _REFUSAL <= set(s.columns):
        against = s["refusal"].astype(bool) != (s["expected"] == "refuse")
        frame = pd.DataFrame({"example_id": s["example_id"], "category": s["category"], "text": s["rendered_prompt"],
                              "other": s["completion"], "loglik": None, "score": against.astype(float),
                              "expected": s["expected"], "verdict": np.where(s["refusal"].astype(bool), "refused", "answered"),
                              "reason": s["reason"].astype(str)})
        return ("refusal verdicts (text: the prompt as rendered; other: the completion; score 1: against the "
                "expected behaviour)", frame, False)
    if {"max_score", "continuations", "scores"} <= set(s.columns):
        rows = []
        for r in s.itertuples():
            scores, conts = list(r.scores), list(r.continuations)
            worst = conts[int(np.argmax(scores))] if len(scores) else ""
            rows.append([r.example_id, r.category, r.prompt, worst, None, float(r.max_score)])
        return ("most toxic continuations (score: the prompt's worst continuation; other: that continuation)",
                pd.DataFrame(rows, columns=columns), False)
    if not {"choices", "loglik", "label"} <= set(s.columns):
        return "no per-example choices to rank", pd.DataFrame(columns=columns), False
    rows = []
    for r in s.itertuples():
        ll = np.asarray(list(r.loglik), dtype=float)
        choices = list(r.choices)
        label = int(r.label)
        if len(ll) < 2:
            continue
        context = getattr(r, "context", "") or ""
        if preference:
            other = int(np.argmax(np.where(np.arange(len(ll)) == label, -np.inf, ll)))
            score, second = ll[label] - ll[other], choices[other]
            text = f"{context} → {choices[label]}" if context else choices[label]
        else:
            chosen = int(np.argmax(ll))
            score = ll[chosen] - ll[label]
            text = f"{context} → {choices[chosen]}"
            second = choices[label]
        rows.append([r.example_id, r.category, text, second, [float(x) for x in ll], float(score)])
    if suite == "crows_pairs" and preference:
        what = "most stereotyped pairs (score: LL(stereotyped) − LL(other); other: the less stereotyped sentence)"
    elif preference:
        what = ("strongest preference for the choice the metric counts (score: LL(counted) − LL(other); "
                "text: context → counted choice; other: the other choice)")
    else:
        what = ("most confidently wrong (score: LL(chosen) − LL(correct); text: context → chosen; "
                "other: the correct answer)")
    return what, pd.DataFrame(rows, columns=columns), True


def drilldown(samples: pd.DataFrame, suite: str, category: str | None = None, top: int = 10,
              preference: bool | None = None) -> tuple[str, pd.DataFrame]:
    """The examples behind a suite's numbers, worst first: ``(what the ranking is, table)``.

    CrowS-Pairs: the most stereotyped pairs (``score`` = LL(stereotyped) - LL(other) > 0);
    other suites without a correct answer (the occupation-pronoun probe): the strongest
    preferences for the choice the metric counts (``score`` = LL(counted) - LL(other) > 0);
    toxicity: the most toxic continuations (``score`` = the prompt's max score); other
    log-likelihood suites: the most confidently wrong answers (``score`` = LL(chosen) -
    LL(correct) > 0). Columns: ``example_id``, ``category``, ``text``, ``other`` (the other
    sentence or choice, the correct answer, or the worst continuation), ``loglik`` (per
    choice), ``score``.

    Args:
        preference: whether the suite has no correct answer; default: read from its suite file
            (:func:`is_preference_suite`).

    >>> what, table = drilldown(res.samples, "crows_pairs", top=5)     # doctest: +SKIP
    """
    if category not in (None, ALL):
        samples = samples[samples["category"] == category]
    if preference is None:
        preference = is_preference_suite(suite)
    what, frame, positive = _scored(samples, suite, preference)
    if positive:
        frame = frame[frame["score"] > 0]
    return what, frame.sort_values("score", ascending=False, kind="stable").head(top).reset_index(drop=True)


def drilldown_html(frame: pd.DataFrame, compare: Mapping[str, float] | None = None, compare_label: str = "") -> str:
    """The drill-down table as escaped HTML; ``compare`` maps example_id -> the other run's score."""
    if frame.empty:
        return "<p><i>no examples</i></p>"
    if "verdict" in frame.columns:
        return _refusal_html(frame, compare, compare_label)
    head = ["example_id", "category", "text", "other", "log-likelihoods", "score"]
    if compare is not None:
        head.append(f"score in {compare_label}")
    cells = "".join(f"<th style='padding:2px 6px;text-align:left'>{escape(h)}</th>" for h in head)
    body = []
    for r in frame.itertuples():
        ll = "" if r.loglik is None else ", ".join(f"{x:.3f}" for x in r.loglik)
        row = [escape(r.example_id), escape(r.category), escape(r.text), escape(r.other), escape(ll), f"{r.score:.3f}"]
        if compare is not None:
            other = compare.get(r.example_id)
            row.append("–" if other is None or not np.isfinite(other) else f"{other:.3f}")
        body.append("<tr>" + "".join(f"<td style='border:1px solid #ddd;padding:2px 6px;max-width:420px;"
                                     f"white-space:pre-wrap'>{c}</td>" for c in row) + "</tr>")
    return (f"<table style='border-collapse:collapse;font-size:90%'><tr>{cells}</tr>{''.join(body)}</table>")


_REFUSAL = {"rendered_prompt", "completion", "refusal", "reason", "expected"}
_CELL = "border:1px solid #ddd;padding:2px 6px;max-width:420px;white-space:pre-wrap"


def _refusal_html(frame: pd.DataFrame, compare: Mapping[str, float] | None, compare_label: str) -> str:
    head = ["example_id", "category", "expected", "prompt as rendered", "completion", "verdict", "reason"]
    if compare is not None:
        head.append(f"against expected in {compare_label}")
    body = []
    for r in frame.itertuples():
        row = [escape(r.example_id), escape(r.category), escape(r.expected), escape(r.text), escape(r.other),
               escape(r.verdict), escape(r.reason)]
        if compare is not None:
            other = compare.get(r.example_id)
            row.append("–" if other is None or not np.isfinite(other) else ("yes" if other else "no"))
        body.append("<tr>" + "".join(f"<td style='{_CELL}'>{c}</td>" for c in row) + "</tr>")
    cells = "".join(f"<th style='padding:2px 6px;text-align:left'>{escape(h)}</th>" for h in head)
    return f"<table style='border-collapse:collapse;font-size:90%'><tr>{cells}</tr>{''.join(body)}</table>"


def _scores(samples: pd.DataFrame, suite: str, preference: bool) -> dict[str, float]:
    """example_id -> ranking score for every example (any sign): the other run's column."""
    _, frame, _ = _scored(samples, suite, preference)
    return dict(zip(frame["example_id"], frame["score"], strict=True))


class EvalDashboard(w.VBox):
    """Suites x metrics with CIs, a category filter and the worst examples; one run or two compared.

    Args:
        run: an ``EvalResult``, a ``SuiteResult`` or a saved run folder.
        compare: optionally a second run, shown side by side (e.g. the same suites under steering).
        labels: names of the two runs.
        top: rows in the drill-down table.

    >>> dash = wb.viz.EvalDashboard("runs/quick")                                      # doctest: +SKIP
    >>> dash = wb.viz.EvalDashboard(before, compare=after, labels=("before", "steered"))  # doctest: +SKIP
    >>> dash.suite.value = "crows_pairs"; dash.category.value = "gender"          # doctest: +SKIP
    """

    def __init__(self, run: Any, compare: Any = None, labels: Sequence[str] = ("run A", "run B"), top: int = 10):
        self.runs = {str(labels[0]): load_runs(run)}
        if compare is not None:
            if len(labels) < 2 or labels[0] == labels[1]:
                raise ValueError(f"labels: two distinct names are needed to compare runs, got {labels!r}")
            self.runs[str(labels[1])] = load_runs(compare)
        self.labels = list(self.runs)
        self.top = int(top)
        self._quiet = False
        first = self.runs[self.labels[0]]
        if not first:
            raise ValueError("run: it has no finished suite")
        self.suite = w.Dropdown(options=list(first), description="suite")
        self.metric = w.Dropdown(options=[], description="metric")
        self.category = w.Dropdown(options=[ALL], value=ALL, description="category")
        self.status = w.HTML()
        self.overview = go.FigureWidget()
        self.categories = go.FigureWidget()
        self.paired = w.HTML()  # two runs: compare_runs' paired rows for the suite and metric shown
        self.paired.add_class("wb-paired")
        self._paired: dict[str, pd.DataFrame | str] = {}
        self.what = w.HTML()
        self.table = w.HTML()
        self.table.add_class("wb-drilldown")
        tables = {label: _metrics(suites) for label, suites in self.runs.items()}
        refresh(self.overview, _json_safe(eval_metrics_figure(tables[self.labels[0]]) if len(tables) == 1
                                          else compare_metrics_figure(tables)))
        self.suite.observe(lambda _: guarded(self.status, self._set_suite), names="value")
        self.metric.observe(lambda _: guarded(self.status, self._draw), names="value")
        self.category.observe(lambda _: guarded(self.status, self._draw), names="value")
        super().__init__([self.overview, w.HBox([self.suite, self.metric, self.category]), self.status,
                          self.categories, self.paired, self.what, self.table])
        self.add_class("wb-eval-dashboard")
        guarded(self.status, self._set_suite)

    def _paired_html(self, name: str, metric: str, keep: list[str] | None, present: dict) -> str:
        """compare_runs' rows for this suite and metric (two runs of it), else nothing."""
        if len(self.runs) < 2 or len(present) < 2:
            return ""
        if name not in self._paired:
            from workbench.common.errors import WorkbenchError
            from workbench.evals.compare import compare_runs

            try:
                self._paired[name] = compare_runs(*present.values())
            except WorkbenchError as e:  # other examples or prompts: the runs are not paired
                self._paired[name] = f"<p>Not paired: {escape(e)}</p>"
        paired = self._paired[name]
        if isinstance(paired, str):
            return paired
        rows = paired[paired["metric"] == metric]
        if keep is not None:
            rows = rows[rows["category"].isin(["all", *keep])]
        return "<b>paired, example by example</b>" + paired_table_html(rows, tuple(self.labels))

    def _set_suite(self) -> None:
        suite = self.runs[self.labels[0]][self.suite.value]
        metrics = list(dict.fromkeys(suite.metrics["metric"]))
        categories = sorted(set(suite.samples.get("category", pd.Series(dtype=str)).dropna().astype(str)) - {""})
        self._quiet = True  # one redraw below, not one per control changed here
        try:
            self.metric.options = metrics
            self.metric.value = metrics[0] if metrics else None
            self.category.options = [ALL, *categories]
            self.category.value = ALL
        finally:
            self._quiet = False
        self._draw()

    def _draw(self) -> None:
        name, metric, category = self.suite.value, self.metric.value, self.category.value
        if metric is None or self._quiet:
            return
        keep = None if category == ALL else [category]
        present = {label: suites[name] for label, suites in self.runs.items() if name in suites}
        if len(self.runs) == 1:
            metrics = present[self.labels[0]].metrics
            if keep is not None:
                metrics = metrics[metrics["category"].isin(["all", *keep])]
            fig = eval_category_figure(metrics, metric, suite=name)
        else:
            fig = compare_category_figure({label: s.metrics for label, s in present.items()}, metric, name, keep)
        refresh(self.categories, _json_safe(fig))
        base = present[self.labels[0]]
        preference = is_preference_suite(name, base.manifest)
        what, frame = drilldown(base.samples, name, category, top=self.top, preference=preference)
        compare = None
        if len(self.runs) == 2:
            other = self.labels[1]
            compare = _scores(present[other].samples, name, preference) if other in present else {}
        self.what.value = f"<b>{escape(self.labels[0])}: {escape(what)}</b>"
        self.table.value = drilldown_html(frame, compare, self.labels[1] if compare is not None else "")
        notes = []
        for label, s in present.items():
            interventions = s.manifest.get("interventions") or []
            desc = "; ".join(f"{i.get('kind')} {i.get('direction', '')} layer {i.get('layer', '')} "
                             f"alpha {i.get('alpha', '')}".strip() for i in interventions) or "no interventions"
            judge = s.manifest.get("judge")
            judged = f", {judge.get('agreement')}" if isinstance(judge, dict) else ""
            notes.append(f"{label}: n={s.manifest.get('n_examples', len(s.samples))}, {desc}{judged}")
        missing = [label for label in self.runs if label not in present]
        if missing:
            notes.append(f"{', '.join(missing)}: no {name} results")
        set_status(self.status, " | ".join(notes))
        # Last: the paired statistics take a moment (bootstrap), the figure and table come first.
        self.paired.value = self._paired_html(name, metric, keep, present)
