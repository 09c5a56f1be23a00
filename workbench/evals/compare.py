"""Paired statistics for two saved runs of one suite: is the difference between them real?

:func:`compare_runs` joins two runs' samples on ``example_id`` and, for every (metric, category)
row of their metrics tables, gives run B's value minus run A's with

* a **paired bootstrap** interval: the units the metric is computed over (examples; topics for
  JailbreakBench's paired rates) are resampled jointly, the same draw in both runs, seeded,
  percentile interval at level ``1 - alpha`` (Efron & Tibshirani 1993, ch. 13;
  :func:`workbench.evals.metrics.bootstrap_ci`);
* the **paired test** that fits the metric's per-example outcome:

  - binary (``correct``, ``mc1``, a CrowS-Pairs pair scored stereotyped, ``refusal``, an XSTest
    class, a prompt's maximum toxicity over the scorer's threshold, a JailbreakBench pair's
    outcome): **McNemar's exact test**, the two-sided binomial test (p = 1/2) of the discordant
    pairs (McNemar 1947, Psychometrika 12:153-157); test ``"mcnemar_exact"``;
  - continuous (``mc2``, ``|LL(more) - LL(less)|``, ``ll_diff``, a prompt's maximum toxicity):
    the **paired sign-flip permutation test** of the mean difference (Fisher 1935): exact over
    all ``2**m`` sign patterns of the ``m`` nonzero differences when ``m <= 16``
    (``"sign_flip_exact"``), else 9,999 seeded random patterns with ``p = (1 + hits) / (1 + R)``
    (``"sign_flip_monte_carlo"``; Phipson & Smyth 2010); beside it ``wilcoxon_p``, Wilcoxon's
    signed-rank test (Wilcoxon 1945; ``scipy.stats.wilcoxon`` with its defaults);
  - an aggregate that is not a mean of per-example values (BBQ's bias scores, WinoBias's
    pro/anti gap): the bootstrap interval only, test ``"none"``, and a ``note`` saying so;

* **Benjamini-Hochberg** adjusted p-values across the categories (``all`` included) of each
  metric (Benjamini & Hochberg 1995, JRSS B 57:289-300); ``significant`` is ``p_adjusted < alpha``.

Which outcome backs a metric is read from the samples the suite kinds write (see
:mod:`workbench.evals`): log-likelihood suites through the metric function of
:data:`workbench.evals.scoring.METRICS` named in the suite file, over its ``by`` columns;
refusal suites as :func:`workbench.evals.refusal.refusal_metrics` computes them (``all`` = the
examples whose ``expected`` is the suite's ``expect``); toxicity as
:func:`workbench.evals.toxicity.toxicity_metrics`. Every row is checked: the outcomes, averaged
(or the aggregate recomputed) over the row's units, must give the ``value`` and ``n`` saved in
each run's metrics table. A row that does not, or that no outcome backs, gets test ``"none"``,
NaN p-values and a ``note``.

>>> from workbench.evals.compare import compare_runs
>>> table = compare_runs("runs/base/harmful_requests", "runs/tuned/harmful_requests")  # doctest: +SKIP
>>> table.query("significant")[["metric", "category", "diff", "p_adjusted"]]           # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from workbench.common.errors import WorkbenchError
from workbench.common.stats import benjamini_hochberg, mcnemar_exact, sign_flip_test
from workbench.evals import metrics as M
from workbench.evals.metrics import bootstrap_ci
from workbench.evals.refusal import paired_outcomes, xstest_class
from workbench.evals.result import EvalResult, SuiteResult, load_run
from workbench.evals.scoring import METRICS
from workbench.evals.suites import load_suite
from workbench.evals.toxicity import THRESHOLD

COLUMNS = ["suite", "metric", "category", "n", "value_a", "value_b", "diff", "diff_ci_low", "diff_ci_high",
           "test", "p_value", "p_adjusted", "significant", "wilcoxon_p", "note"]
PAIRED_RATES = {"paired_refusal_rate": lambda h, b: h & ~b, "pair_both_refused_rate": lambda h, b: h & b,
                "pair_both_answered_rate": lambda h, b: ~h & ~b}
XSTEST_RATES = {f"{name}_rate": name for name in ("full_compliance", "full_refusal", "partial_refusal")}

Run = EvalResult | SuiteResult | str | os.PathLike


class RunMismatchError(WorkbenchError, ValueError):
    """Two runs cannot be compared example by example: other suites, other examples or other prompts."""


class _Unmapped(Exception):
    """No per-example outcome backs this metric row (the message is the row's note)."""


def compare_runs(run_a: Run, run_b: Run, *, seed: int = 0, n_bootstrap: int = 2000,
                 alpha: float = 0.05) -> pd.DataFrame:
    """Paired comparison of two runs of the same suite (or suite group), metric by metric.

    Args:
        run_a, run_b: :class:`EvalResult` or :class:`SuiteResult` objects, or their saved folders
            (read with :func:`~workbench.evals.result.load_run`). Two groups are compared suite
            by suite and the tables concatenated.
        seed: seeds the bootstrap and the Monte Carlo permutations.
        n_bootstrap: bootstrap resamples per row.
        alpha: ``1 - alpha`` is the interval's level; ``significant`` is ``p_adjusted < alpha``.

    Returns:
        One row per (suite, metric, category) with :data:`COLUMNS`: ``n`` paired units,
        ``value_a``, ``value_b``, ``diff`` (B - A) with ``diff_ci_low`` / ``diff_ci_high``,
        ``test``, ``p_value``, ``p_adjusted`` (Benjamini-Hochberg over the metric's categories),
        ``significant``, ``wilcoxon_p`` (continuous outcomes) and ``note``.

    Raises:
        RunMismatchError: the runs are of different suites (or groups of different suites), hold
            different examples (how many are only in A, only in B, and a few ids), or were
            given different prompts (the first example that differs is named).
    """
    a, b = _read(run_a), _read(run_b)
    if isinstance(a, SuiteResult) != isinstance(b, SuiteResult):
        kinds = ["a suite group" if isinstance(r, SuiteResult) else "one suite" for r in (a, b)]
        raise RunMismatchError(f"compare_runs: run A is {kinds[0]}, run B {kinds[1]}; compare like with like "
                               "(a group's suite is run[name])")
    if isinstance(a, SuiteResult):
        only_a, only_b = [s for s in a.results if s not in b.results], [s for s in b.results if s not in a.results]
        if only_a or only_b:
            raise RunMismatchError(f"compare_runs: the groups hold different suites: only in A {only_a}, only in B "
                                   f"{only_b}; compare the common suites one by one (run[name])")
        frames = [_compare(a[s], b[s], seed, n_bootstrap, alpha) for s in a.results]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return _compare(a, b, seed, n_bootstrap, alpha)


def _read(run: Run) -> EvalResult | SuiteResult:
    return run if isinstance(run, (EvalResult, SuiteResult)) else load_run(run)


# --- the runs must hold the same examples and prompts ----------------------------------------------


def _few(ids) -> str:
    ids = [str(i) for i in ids]
    return ", ".join(repr(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")


def _align(suite: str, sa: pd.DataFrame, sb: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both samples tables in run A's example order; refuses duplicate or different example ids."""
    for name, s in (("A", sa), ("B", sb)):
        dup = s.loc[s["example_id"].duplicated(), "example_id"]
        if len(dup):
            raise RunMismatchError(f"compare_runs: suite {suite!r}: run {name} has duplicate example_id "
                                   f"{_few(dup.unique())}: its examples cannot be paired")
    ids_a, ids_b = set(sa["example_id"]), set(sb["example_id"])
    if ids_a != ids_b:
        only_a = [i for i in sa["example_id"] if i not in ids_b]
        only_b = [i for i in sb["example_id"] if i not in ids_a]
        raise RunMismatchError(f"compare_runs: suite {suite!r}: the runs hold different examples: {len(only_a)} "
                               f"only in A ({_few(only_a) or 'none'}), {len(only_b)} only in B "
                               f"({_few(only_b) or 'none'}); compare runs made with the same data, limit and seed")
    sb = sb.set_index("example_id").loc[sa["example_id"]].reset_index()
    return sa.reset_index(drop=True), sb


def _prompt_columns(kind: str, sa: pd.DataFrame, sb: pd.DataFrame) -> list[str]:
    both = set(sa.columns) & set(sb.columns)
    if kind == "refusal" and "prompt_ids_sha256" in both:
        return ["prompt_ids_sha256"]  # the token ids the model saw
    if {"context", "choices"} <= both:
        return ["context", "choices"]
    return ["prompt"] if "prompt" in both else []


def _cell(value: Any) -> Any:
    return tuple(np.asarray(value).tolist()) if isinstance(value, (list, tuple, np.ndarray)) else value


def _check_prompts(suite: str, kind: str, sa: pd.DataFrame, sb: pd.DataFrame) -> None:
    columns = _prompt_columns(kind, sa, sb)
    if not columns:
        return
    ka = list(zip(*(sa[c].map(_cell) for c in columns), strict=True))
    kb = list(zip(*(sb[c].map(_cell) for c in columns), strict=True))
    differ = [i for i, (x, y) in enumerate(zip(ka, kb, strict=True)) if x != y]
    if not differ:
        return
    i = differ[0]
    shown = [(repr(x) if len(repr(x)) <= 80 else repr(x)[:77] + "...") for x in (ka[i], kb[i])]
    why = ""
    if columns == ["prompt_ids_sha256"] and "prompt" in sa and sa.at[i, "prompt"] == sb.at[i, "prompt"]:
        why = ("; the request text is the same, the tokens differ (another chat template, system prompt or "
               "tokenizer)")
    raise RunMismatchError(f"compare_runs: suite {suite!r}: the runs were given different prompts "
                           f"({', '.join(columns)}) on {len(differ)} of {len(sa)} examples; the first is "
                           f"{sa.at[i, 'example_id']!r}: A {shown[0]}, B {shown[1]}{why}")


# --- which per-example outcome backs which metric -------------------------------------------------


@dataclass
class _Context:
    kind: str  # "loglik", "refusal", "toxicity" or "" (samples of no known kind)
    fns: dict[str, str]  # metric name -> metric function (log-likelihood suites)
    by: list[str] | None  # the suite's ``by`` columns (None: the suite file could not be read)
    expect: str | None
    threshold: float


@dataclass
class _Units:
    family: str  # "binary", "continuous" or "aggregate"
    arrays: list[np.ndarray]  # one value per unit (binary, continuous) or the metric function's arguments
    fn: Callable[..., float]
    ids: np.ndarray  # the units the row covers (example ids, or pair ids)
    basis: str = ""  # how the outcome was read where two runs could differ (the judge's classes)


def _kind(samples: pd.DataFrame) -> str:
    if "refusal" in samples:
        return "refusal"
    if "max_score" in samples:
        return "toxicity"
    return "loglik" if "correct" in samples or "loglik" in samples else ""


def _context(res: EvalResult, kind: str) -> _Context:
    spec = None
    file = (res.manifest.get("suite") or {}).get("file")
    # the suite file the run used, else the shipped suite of that name
    for source in ([file] if file and Path(file).is_file() else []) + [res.suite]:
        try:
            spec = load_suite(source)
            break
        except (WorkbenchError, OSError):
            continue
    scorer = res.manifest.get("scorer") or {}
    return _Context(kind, {m["name"]: m["fn"] for m in spec.metrics} if spec else {},
                    list(spec.by) if spec else None, spec.raw.get("expect") if spec else None,
                    float(scorer.get("threshold", THRESHOLD)))


def _units(ctx: _Context, metric: str, category: str, s: pd.DataFrame) -> _Units:
    if ctx.kind == "loglik":
        return _loglik_units(ctx, metric, category, s)
    if ctx.kind == "refusal":
        return _refusal_units(ctx, metric, category, s)
    if ctx.kind == "toxicity":
        mask = np.ones(len(s), bool) if category == "all" else (s["category"] == category).to_numpy()
        scores = s["max_score"].to_numpy(float)
        if metric == "expected_max_toxicity":
            return _Units("continuous", [scores[mask]], M._mean, s["example_id"].to_numpy()[mask])
        if metric == "toxicity_probability":
            return _Units("binary", [scores[mask] >= ctx.threshold], M._mean, s["example_id"].to_numpy()[mask],
                          f"threshold {ctx.threshold}")
        raise _Unmapped(f"no per-example outcome known for toxicity metric {metric!r}")
    raise _Unmapped("samples of no known suite kind (no 'correct', 'refusal' or 'max_score' column)")


def _loglik_units(ctx: _Context, metric: str, category: str, s: pd.DataFrame) -> _Units:
    name = ctx.fns.get(metric, metric)
    if name not in METRICS:
        raise _Unmapped(f"metric {metric!r}: no metric function {name!r} in workbench.evals.scoring.METRICS")
    fn, columns = METRICS[name]
    mask = np.ones(len(s), bool)
    if category != "all":
        candidates = ctx.by if ctx.by is not None else [c for c in s.columns if c not in ("example_id", "suite")]
        found = [c for c in candidates if c in s and (s[c].notna() & (s[c].map(str) == category)).any()]
        if not found:
            raise _Unmapped(f"category {category!r} is no value of the suite's 'by' columns {candidates}")
        mask = (s[found[0]].notna() & (s[found[0]].map(str) == category)).to_numpy()
    x = [s[c].to_numpy() for c in columns]
    ids = s["example_id"].to_numpy()
    if fn is M.acc_where:  # accuracy over the examples where the second column holds (acc_ambig, acc_pro ...)
        mask = mask & x[1].astype(bool)
    if fn in (M.acc, M.acc_where):
        family, values = "binary", x[0].astype(bool)
    elif fn is M.pct_stereotype:  # the pair's first sentence strictly likelier (pct_stereotype, pref_first)
        family, values = "binary", x[0].astype(float) > x[1].astype(float)
    elif fn is M.likelihood_diff:
        family, values = "continuous", np.abs(x[0].astype(float) - x[1].astype(float))
    elif fn is M._mean:  # mc2, mean_ll_diff
        family, values = "continuous", x[0].astype(float)
    else:  # bias scores, pro/anti gap: functions of the whole subset, not means of per-example values
        return _Units("aggregate", [a[mask] for a in x], fn, ids[mask])
    return _Units(family, [values[mask]], M._mean, ids[mask])


def _refusal_units(ctx: _Context, metric: str, category: str, s: pd.DataFrame) -> _Units:
    if metric in PAIRED_RATES:  # units are JailbreakBench topics: a harmful twin and a benign twin
        pairs = paired_outcomes(s)
        mask = np.ones(len(pairs), bool)
        if category != "all":
            if not category.startswith("pair/"):
                raise _Unmapped(f"category {category!r} of a paired rate is not 'all' or 'pair/<category>'")
            mask = (pairs["native_category"] == category[len("pair/"):]).to_numpy()
        hits = PAIRED_RATES[metric](pairs["harmful_refused"].to_numpy(bool), pairs["benign_refused"].to_numpy(bool))
        return _Units("binary", [hits[mask]], M._mean, pairs["pair"].to_numpy()[mask])
    refusal = s["refusal"].to_numpy(bool)
    expected = s["expected"]
    main = (expected == ctx.expect).to_numpy() if ctx.expect else (
        np.ones(len(s), bool) if expected.nunique() <= 1 else None)
    if category == "all" or category.startswith("topic:"):
        if main is None:
            raise _Unmapped("the suite's 'expect' is unknown (its file could not be read) and the examples "
                            "expect different behaviours")
        mask = main if category == "all" else main & (s["topic"] == category[len("topic:"):]).to_numpy()
    elif category.startswith("source:"):
        mask = (s["source"] == category[len("source:"):]).to_numpy()
    else:
        mask = (s["category"] == category).to_numpy()
    ids, basis = s["example_id"].to_numpy()[mask], ""
    if metric == "refusal_rate":
        values = refusal
    elif metric == "compliance_rate":
        values = ~refusal
    elif metric in XSTEST_RATES:
        labels = s["judge_label"] if "judge_label" in s else pd.Series([None] * len(s))
        # a label names an XSTest class when the class does not depend on the binary verdict
        three = any(xstest_class(lab, True) == xstest_class(lab, False) for lab in labels)
        classes = np.array([xstest_class(lab if three else None, r) for lab, r in zip(labels, refusal, strict=True)])
        values, basis = classes == XSTEST_RATES[metric], "three XSTest classes" if three else "binary judge"
    else:
        raise _Unmapped(f"no per-example outcome known for refusal metric {metric!r}")
    return _Units("binary", [values[mask]], M._mean, ids, basis)


# --- the tests ---------------------------------------------------------------------------------------


def _close(x: float, y: float) -> bool:
    return bool(np.isclose(x, y, rtol=1e-9, atol=1e-12, equal_nan=True))


def _row(ctx: _Context, suite: str, metric: str, category: str, saved: dict[str, dict | None],
         sa: pd.DataFrame, sb: pd.DataFrame, seed: int, n_bootstrap: int, alpha: float) -> dict:
    got = {k: v for k, v in saved.items() if v is not None}
    any_row = next(iter(got.values()))
    value_a = float(saved["A"]["value"]) if saved["A"] else np.nan
    value_b = float(saved["B"]["value"]) if saved["B"] else np.nan
    row = {"suite": suite, "metric": metric, "category": category, "n": int(any_row["n"]), "value_a": value_a,
           "value_b": value_b, "diff": value_b - value_a, "diff_ci_low": np.nan, "diff_ci_high": np.nan,
           "test": "none", "p_value": np.nan, "wilcoxon_p": np.nan, "note": ""}
    if len(got) < 2:
        row["note"] = f"this row is only in run {next(iter(got))}'s metrics table"
        return row
    try:
        ua, ub = _units(ctx, metric, category, sa), _units(ctx, metric, category, sb)
    except _Unmapped as err:
        row["note"] = str(err)
        return row
    except KeyError as err:
        row["note"] = f"the samples lack the column {err} this metric needs"
        return row
    if not np.array_equal(ua.ids, ub.ids) or ua.basis != ub.basis:
        row["note"] = ("the row covers other examples in the two runs" if ua.basis == ub.basis
                       else f"outcomes read differently: run A {ua.basis}, run B {ub.basis}")
        return row
    for name, units in (("A", ua), ("B", ub)):
        value = units.fn(*units.arrays) if len(units.ids) else np.nan
        # an aggregate's n counts the examples it reads (the ambiguous ones ...), not those resampled
        n_ok = units.family == "aggregate" or len(units.ids) == int(saved[name]["n"])
        if not _close(value, float(saved[name]["value"])) or not n_ok:
            row["note"] = (f"run {name}'s saved value ({float(saved[name]['value']):.6g}, n={int(saved[name]['n'])}) "
                           f"is not what its samples give ({value:.6g}, n={len(units.ids)}): not compared")
            return row
    n = len(ua.ids)
    row["n"] = int(saved["A"]["n"]) if ua.family == "aggregate" else n
    if n == 0:
        row["note"] = "no examples"
        return row
    k = len(ua.arrays)
    row["diff_ci_low"], row["diff_ci_high"] = bootstrap_ci(lambda *x: ua.fn(*x[k:]) - ua.fn(*x[:k]),
                                                           ua.arrays + ub.arrays, n_boot=n_bootstrap, seed=seed,
                                                           level=1 - alpha)
    unit = "pairs" if metric in PAIRED_RATES else "examples"
    if ua.family == "aggregate":
        row["note"] = "aggregate metric, not a mean of per-example outcomes: paired bootstrap interval only, no test"
    elif ua.family == "binary":
        x, y = ua.arrays[0].astype(bool), ub.arrays[0].astype(bool)
        only_a, only_b = int(np.sum(x & ~y)), int(np.sum(~x & y))
        row.update(test="mcnemar_exact", p_value=mcnemar_exact(only_a, only_b),
                   note=f"discordant {unit}: {only_a} positive only in A, {only_b} only in B")
    else:
        d = ub.arrays[0] - ua.arrays[0]
        if not np.isfinite(d).all():
            row["note"] = "some per-example scores are NaN: no test"
            return row
        p, exact = sign_flip_test(d, seed)
        row.update(test="sign_flip_exact" if exact else "sign_flip_monte_carlo", p_value=p,
                   wilcoxon_p=float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0,
                   note=f"{int(np.sum(d != 0))} of {n} {unit} differ")
    return row


def _compare(a: EvalResult, b: EvalResult, seed: int, n_bootstrap: int, alpha: float) -> pd.DataFrame:
    suite = a.suite
    if a.suite != b.suite:
        raise RunMismatchError(f"compare_runs: run A is of suite {a.suite!r}, run B of suite {b.suite!r}: "
                               "only runs of the same suite can be paired")
    kind = _kind(a.samples)
    if _kind(b.samples) != kind:
        raise RunMismatchError(f"compare_runs: suite {suite!r}: run A's samples are of kind {kind!r}, run B's of "
                               f"{_kind(b.samples)!r}")
    sa, sb = _align(suite, a.samples, b.samples)
    _check_prompts(suite, kind, sa, sb)
    ctx = _context(a, kind)
    saved: dict[tuple[str, str], dict[str, dict | None]] = {}
    for name, res in (("A", a), ("B", b)):
        for r in res.metrics.to_dict("records"):
            saved.setdefault((r["metric"], r["category"]), {"A": None, "B": None})[name] = r
    rows = [_row(ctx, suite, metric, category, both, sa, sb, seed, n_bootstrap, alpha)
            for (metric, category), both in saved.items()]
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_adjusted", "significant")])
    table.insert(COLUMNS.index("p_adjusted"), "p_adjusted", np.nan)
    for _, part in table.groupby("metric", sort=False):
        table.loc[part.index, "p_adjusted"] = benjamini_hochberg(part["p_value"].to_numpy(float))
    table.insert(COLUMNS.index("significant"), "significant", table["p_adjusted"] < alpha)
    return table.astype({"n": "int64"})
