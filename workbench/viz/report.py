"""A self-contained HTML report of an eval run (one suite or a suite group): a view.

The report reads a saved run through the one reader, :func:`workbench.evals.result.load_run`
(or takes an ``EvalResult`` / ``SuiteResult`` in memory), and writes one HTML file that opens
offline: plotly.js is inlined once (never a CDN link), every string from data, the model or
the manifest is HTML-escaped, and there are no external resources at all. The file is
replaced atomically.

Per suite: the manifest (model and checkpoint hash, data file hashes, seed, sampling, scorer
and its scale note, interventions, versions), the metrics table with CIs and n, a chart per
metric across categories, and the examples that drive the numbers (the most stereotyped
CrowS-Pairs pairs, the most confidently wrong multiple-choice answers, the most toxic
continuations; for refusal suites, the rendered prompt, the completion, the judge's verdict and
its reason, examples that went against the expected behaviour first). A refusal suite's rates
are printed with the judge's name and its measured agreement with human labels. Completions
are read from the run at report time; a report is an output, never a committed file.

>>> from workbench.viz.report import write_report
>>> write_report("runs/crows-smollm2", "report.html")              # doctest: +SKIP
PosixPath('report.html')
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workbench.common.errors import WorkbenchError
from workbench.common.files import atomic_write
from workbench.evals.data import data_hint
from workbench.evals.result import EvalResult, SuiteResult, load_run
from workbench.evals.suites import is_preference_suite
from workbench.viz.evals import eval_category_figure, eval_metrics_figure, toxicity_score_figure
from workbench.viz.paired import paired_diff_figure, paired_table_html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em} td,th{border:1px solid #ddd;padding:3px 8px;vertical-align:top}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em;margin:1em 0}
.text{white-space:pre-wrap;max-width:520px} details{margin:.5em 0} pre{white-space:pre-wrap;font-size:.85em}
"""


Run = EvalResult | SuiteResult | str | os.PathLike


def _suites(run: Run) -> tuple[str, list[EvalResult], dict[str, str], Path | None]:
    """``(title, suites in order, skipped suites -> why, folder or None)`` of a run to report."""
    folder = None
    if isinstance(run, (str, os.PathLike)):
        folder = Path(run)
        run = load_run(folder)
    if isinstance(run, EvalResult):
        return f"suite {run.suite}", [run], {}, folder
    if isinstance(run, SuiteResult):
        if not run.results:
            where = folder if folder is not None else f"group {run.group!r}"
            raise WorkbenchError(f"{where}: no finished suite yet (no <suite>/manifest.json)")
        return f"suite group {run.group}", list(run.results.values()), dict(run.skipped), folder
    raise TypeError(f"run: expected an EvalResult, a SuiteResult or a run folder, got {type(run).__name__}")


# --- HTML pieces ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    return f"{float(value):.{digits}f}"


def _table(header: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Rows are already-escaped HTML cells."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def metrics_table_html(metrics: pd.DataFrame) -> str:
    """The metrics table: metric, category, value, 95% CI, n (escaped HTML)."""
    rows = [[_e(r.metric), _e(r.category), _num(r.value), f"[{_num(r.ci_low)}, {_num(r.ci_high)}]", _num(int(r.n))]
            for r in metrics.itertuples()]
    return _table(["metric", "category", "value", "95% CI", "n"], rows, numeric={2, 3, 4})


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if not isinstance(value, str) else [value]


REFUSAL_COLUMNS = {"rendered_prompt", "completion", "refusal", "reason", "expected"}


def refusal_examples_html(samples: pd.DataFrame, top: int = 10) -> str:
    """Refusal suites: per example the rendered prompt, the completion, the verdict and its reason;
    up to ``top`` that went against the expected behaviour, then up to ``top`` that did not."""
    header = ["example_id", "category", "expected", "prompt as rendered", "completion", "verdict", "reason"]
    against = samples["refusal"].astype(bool) != (samples["expected"] == "refuse")
    parts = []
    for title, part in (("Against the expected behaviour (complied with a harmful request, refused a benign one)",
                         samples[against]), ("As expected", samples[~against])):
        rows = [[_e(r.example_id), _e(r.category), _e(r.expected), f'<div class="text">{_e(r.rendered_prompt)}</div>',
                 f'<div class="text">{_e(r.completion)}</div>', "refused" if r.refusal else "answered", _e(r.reason)]
                for r in part.head(top).itertuples()]
        parts.append(f"<h3>{_e(title)}: {len(part)} of {len(samples)}</h3>"
                     + (_table(header, rows) if rows else "<p>None.</p>"))
    return "".join(parts)


def examples_html(suite: EvalResult, top: int = 10) -> str:
    """The examples behind the numbers: most toxic, most stereotyped (or most preferred, for
    suites without a correct answer), most confidently wrong, or refusal verdicts."""
    s = suite.samples
    if s.empty:
        return "<p>No examples.</p>"
    if REFUSAL_COLUMNS <= set(s.columns):
        return refusal_examples_html(s, top)
    if {"max_score", "continuations", "scores"} <= set(s.columns):
        worst = s.sort_values("max_score", ascending=False, kind="stable").head(top)
        rows = []
        for r in worst.itertuples():
            scores = _as_list(r.scores)
            conts = _as_list(r.continuations)
            i = int(np.argmax(scores)) if scores else 0
            rows.append([_e(r.example_id), _e(r.category), f'<div class="text">{_e(r.prompt)}</div>',
                         f'<div class="text">{_e(conts[i] if conts else "")}</div>', _num(r.max_score, 3)])
        return ("<h3>Most toxic continuations</h3>"
                + _table(["example_id", "subset", "prompt", "worst continuation", "score"], rows, numeric={4}))
    if not {"choices", "loglik", "label"} <= set(s.columns):
        return "<p>No per-example choices to rank.</p>"
    ll = [np.asarray(_as_list(x), dtype=float) for x in s["loglik"]]
    labels = s["label"].astype(int).to_numpy()
    chosen = [int(np.argmax(x)) if len(x) else -1 for x in ll]
    name = suite.suite
    preference = is_preference_suite(name, suite.manifest)
    if preference:
        # label = the choice the metric counts (the stereotyped sentence, the male pronoun);
        # margin = how much more likely the model finds it than the best other choice
        margin = np.array([x[lab] - np.max(np.delete(x, lab)) if len(x) > 1 else np.nan
                           for x, lab in zip(ll, labels, strict=True)])
        if name == "crows_pairs":
            title, header = "Most stereotyped pairs (LL(stereotyped) − LL(other))", [
                "example_id", "category", "stereotyped", "other", "margin"]
        else:
            title, header = "Strongest preferences for the choice the metric counts (LL(counted) − LL(other))", [
                "example_id", "category", "context / counted choice", "other", "margin"]
    else:
        margin = np.array([x[c] - x[lab] if len(x) else np.nan for x, c, lab in zip(ll, chosen, labels, strict=True)])
        title, header = "Most confidently wrong (LL(chosen) − LL(correct))", ["example_id", "category",
                                                                                "context / chosen", "correct", "margin"]
    order = [i for i in np.argsort(-np.nan_to_num(margin, nan=-np.inf), kind="stable") if margin[i] > 0][:top]
    if not order:
        return f"<h3>{_e(title)}</h3><p>None.</p>"
    rows = []
    for i in order:
        r = s.iloc[i]
        choices = _as_list(r["choices"])
        lab = labels[i]
        context = _e(str(r.get("context", "") or ""))
        if preference:
            other = max((j for j in range(len(choices)) if j != lab), key=lambda j: ll[i][j])
            first = _e(choices[lab]) if name == "crows_pairs" else f"{context} <b>{_e(choices[lab])}</b>"
            second = _e(choices[other])
        else:
            first, second = f"{context} <b>{_e(choices[chosen[i]])}</b>", _e(choices[lab])
        rows.append([_e(r["example_id"]), _e(r.get("category", "")), f'<div class="text">{first}</div>',
                     f'<div class="text">{second}</div>', _num(margin[i], 3)])
    return f"<h3>{_e(title)}</h3>" + _table(header, rows, numeric={4})


def manifest_html(manifest: dict[str, Any]) -> str:
    """Model, data hashes, parameters, scorer, interventions, versions: escaped key/value rows."""
    model = manifest.get("model") or {}
    rows = [
        ["model", _e(f"{model.get('name', '?')} ({model.get('format', '?')}, {model.get('dtype', '?')}, "
                     f"{model.get('device', '?')})")],
        ["checkpoint fingerprint", f"<code>{_e(model.get('fingerprint'))}</code>"],
        ["suite", _e(json.dumps(manifest.get("suite")))],
        ["parameters", _e(json.dumps(manifest.get("params"), default=str))],
        ["examples", _num(manifest.get("n_examples"))],
        ["interventions", _e(json.dumps(manifest.get("interventions") or [], default=str)) or "none"],
        ["wall time", _e(f"{manifest.get('wall_time_s', float('nan')):.1f} s, {manifest.get('started_at')} → "
                         f"{manifest.get('finished_at')}") if manifest.get("wall_time_s") is not None else "–"],
    ]
    if manifest.get("sampling"):
        rows.append(["sampling", _e(json.dumps(manifest["sampling"], default=str))])
    if manifest.get("scorer"):
        rows.append(["scorer", _e(json.dumps(manifest["scorer"], default=str))])
    if manifest.get("judge"):
        rows.append(["refusal judge", _e(json.dumps(manifest["judge"], default=str))])
    skipped = manifest.get("skipped") or {}
    n_skipped = sum(int(v.get("rows", 0)) for v in skipped.values()) if isinstance(skipped, dict) else 0
    rows.append(["skipped rows", f"{n_skipped}" + (f" <pre>{_e(json.dumps(skipped, indent=1))}</pre>" if n_skipped else "")])
    files = (manifest.get("data") or {}).get("files") or []
    data = "".join(f"<div><code>{_e(f.get('sha256', ''))[:16]}…</code> {_e(f.get('path'))} ({_num(f.get('bytes'))} B)</div>"
                   for f in files) or "none (built-in suite)"
    rows.append(["data files (sha256)", data])
    rows.append(["versions", _e(json.dumps(manifest.get("versions"), default=str))])
    full = f"<details><summary>full manifest.json</summary><pre>{_e(json.dumps(manifest, indent=2, default=str))}</pre></details>"
    return _table(["", ""], rows) + full


def _scorer_note(suite: EvalResult) -> str:
    scorer = suite.manifest.get("scorer")
    if not scorer:
        return ""
    name = scorer.get("name") if isinstance(scorer, dict) else scorer
    note = scorer.get("scale_note", "") if isinstance(scorer, dict) else ""
    if "Perspective" not in note:
        note = f"{note} Its scale is not Perspective API's.".strip()
    return f'<div class="note"><b>Toxicity scorer: {_e(name)}.</b> {_e(note)}</div>'


def judge_note(suite: EvalResult) -> str:
    """A refusal suite's judge and its measured agreement, to print beside its refusal rates."""
    judge = suite.manifest.get("judge")
    if not isinstance(judge, dict):
        return ""
    return (f'<div class="note"><b>{_e(suite.suite)}: refusal judged by {_e(judge.get("name"))}</b>: '
            f'{_e(judge.get("agreement", "agreement not measured"))}. Every refusal and compliance rate of this '
            f'suite is this judge\'s verdict ({_e(judge.get("classes", ""))}).</div>')


class _Figures:
    """Figure HTML with plotly.js inlined once, in the first figure of the page."""

    def __init__(self):
        self.first = True

    def __call__(self, fig) -> str:
        out = fig.to_html(full_html=False, include_plotlyjs=True if self.first else False,
                          config={"displaylogo": False})
        self.first = False
        return out


def report_html(run: Run, top: int = 10, compare: Run | None = None,
                labels: tuple[str, str] = ("run A", "run B")) -> str:
    """The report of a run as one HTML string (see :func:`write_report`).

    Args:
        run: a saved run folder (read with :func:`~workbench.evals.result.load_run`), or an
            ``EvalResult`` / ``SuiteResult``.
        top: examples listed per suite.
        compare, labels: see :func:`write_report`.

    >>> html_text = report_html("runs/crows-smollm2")                 # doctest: +SKIP
    """
    title, suites, skipped, folder = _suites(run)
    figure = _Figures()
    written = _e(_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))
    where = f"Run folder <code>{_e(folder.resolve())}</code>; report" if folder is not None else "Report"
    parts = [f"<h1>workbench eval report: {_e(title)}</h1>", f"<p>{where} written {written}.</p>"]
    every = pd.concat([s.metrics for s in suites], ignore_index=True)
    parts.append("<h2>Headline metrics</h2>" + figure(eval_metrics_figure(every)))
    parts.append(metrics_table_html(every[every["category"] == "all"]))
    parts.extend(judge_note(s) for s in suites)
    if compare is not None:
        parts.append(paired_html(run, compare, labels, figure))
    if skipped:
        hint = data_hint(skipped)
        parts.append("<p>Suites not run:</p><ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in skipped.items())
                     + "</ul>" + (f"<p>{_e(hint)}</p>" if hint else ""))
    for suite in suites:
        parts.append(f'<h2 id="{_e(suite.suite)}">{_e(suite.suite)}</h2>')
        parts.append(_scorer_note(suite))
        parts.append(judge_note(suite))
        parts.append(metrics_table_html(suite.metrics))
        for metric in dict.fromkeys(suite.metrics["metric"]):
            if (suite.metrics["metric"] == metric).sum() > 1:  # more than the headline row
                parts.append(figure(eval_category_figure(suite.metrics, metric, suite=suite.metrics["suite"].iloc[0])))
        if {"category", "max_score"} <= set(suite.samples.columns):
            scorer = (suite.manifest.get("scorer") or {}).get("name") if isinstance(suite.manifest.get("scorer"), dict) else None
            parts.append(figure(toxicity_score_figure(suite.samples, scorer=scorer)))
        parts.append(examples_html(suite, top))
        parts.append("<h3>Manifest</h3>" + manifest_html(suite.manifest))
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>")


def paired_html(run: Run, compare: Run, labels: tuple[str, str], figure) -> str:
    """The paired comparison section: per suite, a forest plot of its first metric's
    differences by category and the table of every paired row (:func:`compare_runs`)."""
    from workbench.evals.compare import compare_runs

    a, b = (str(x) for x in labels)
    paired = compare_runs(run, compare)
    parts = [f"<h2>Paired comparison: {_e(b)} vs {_e(a)}</h2>",
             f"<p>The same examples in both runs, joined by <code>example_id</code>. Per metric and category: "
             f"the difference {_e(b)} - {_e(a)} with a paired bootstrap 95% interval, McNemar's exact test "
             f"for per-example yes/no outcomes or a sign-flip permutation test for continuous ones, and "
             f"Benjamini-Hochberg adjusted p-values across each metric's categories (bold: adjusted p &lt; 0.05)."
             f"</p>"]
    for suite in dict.fromkeys(paired["suite"]):
        rows = paired[paired["suite"] == suite]
        tested = rows[rows["p_value"].notna()]
        first = (tested if len(tested) else rows)["metric"].iloc[0]
        parts.append(f"<h3>{_e(suite)}</h3>")
        parts.append(figure(paired_diff_figure(rows, first, suite, labels=(a, b))))
        parts.append(paired_table_html(rows[rows["metric"] == first], (a, b)))
        others = rows[rows["metric"] != first]
        if len(others):
            parts.append(f"<details><summary>every other metric ({len(others)} rows)</summary>"
                         f"{paired_table_html(others, (a, b))}</details>")
    return "\n".join(parts)


def write_report(run: Run, out: str | os.PathLike, top: int = 10, compare: Run | None = None,
                 labels: tuple[str, str] = ("run A", "run B")) -> Path:
    """Write the self-contained HTML report of a run to ``out`` (atomically).

    Args:
        run: a saved EvalResult folder, a SuiteResult folder with ``suite.json``, or either
            result in memory.
        out: the HTML file to write.
        top: examples listed per suite.
        compare: a second run of the same suites on the same examples (another model, or the
            same model steered): the report then has a paired comparison section
            (:func:`~workbench.evals.compare.compare_runs`). ``run`` is A, ``compare`` is B.
        labels: the names of A and B in that section.

    Raises:
        WorkbenchError: the folder is not a saved run, or no suite in it finished; ``out`` is
            then left as it was. ``RunMismatchError`` (a ``WorkbenchError``): ``compare``
            holds other suites, examples or prompts.

    >>> write_report("runs/safety", "report.html")                    # doctest: +SKIP
    PosixPath('report.html')
    """
    return atomic_write(out, report_html(run, top=top, compare=compare, labels=labels))
