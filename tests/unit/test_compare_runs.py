"""Paired statistics for two runs (workbench.evals.compare), checked against scipy and statsmodels.

Runs are built by hand (samples, the metrics the suite kinds' own functions compute from them, a
manifest), except the last test, which runs a refusal suite on the tiny model twice (plain and
steered) and compares the saved folders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest, permutation_test, wilcoxon
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from test_evals_misuse_data import SOURCES, write_data, write_suite
from test_evals_refusal import WordJudge

from workbench.evals import metrics as M
from workbench.evals.compare import COLUMNS, RunMismatchError, benjamini_hochberg, compare_runs, sign_flip_test
from workbench.evals.refusal import refusal_metrics
from workbench.evals.result import EvalResult, SuiteResult
from workbench.evals.run import run_eval
from workbench.evals.scoring import metrics_table
from workbench.evals.suites import load_suite
from workbench.evals.toxicity import toxicity_metrics

N_BOOT = 300


def _loglik_run(suite: str, samples: pd.DataFrame) -> EvalResult:
    """A log-likelihood run whose metrics are what the suite's own metrics_table gives."""
    samples = samples.assign(suite=suite)
    return EvalResult(metrics_table(load_suite(suite), samples, n_boot=20), samples, {"suite": {"name": suite}})


def _facts(correct, categories, contexts=None) -> pd.DataFrame:
    n = len(correct)
    return pd.DataFrame({"example_id": [f"facts:{i:03d}" for i in range(n)], "category": categories,
                         "context": contexts if contexts is not None else [f"Statement {i}" for i in range(n)],
                         "choices": [["True", "False"]] * n, "correct": np.asarray(correct, bool)})


def _mcnemar_oracles(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """statsmodels' exact McNemar on the 2x2 table, and scipy's binomial test of the discordant pairs."""
    table = [[np.sum(x & y), np.sum(x & ~y)], [np.sum(~x & y), np.sum(~x & ~y)]]
    b, c = int(np.sum(x & ~y)), int(np.sum(~x & y))
    return mcnemar(table, exact=True).pvalue, (binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)


def _paired_bootstrap(fn, a: list[np.ndarray], b: list[np.ndarray], n_boot: int, seed: int, alpha: float = 0.05):
    """Percentile interval of fn(B) - fn(A), resampling examples jointly (written here, independently)."""
    rng = np.random.default_rng(seed)
    n = len(a[0])
    stats = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        stats.append(fn(*(v[idx] for v in b)) - fn(*(v[idx] for v in a)))
    stats = np.array(stats)
    return tuple(np.quantile(stats[~np.isnan(stats)], [alpha / 2, 1 - alpha / 2]))


def _scipy_sign_flip(d: np.ndarray) -> float:
    res = permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                           permutation_type="samples", n_resamples=np.inf, vectorized=True, alternative="two-sided")
    return float(res.pvalue)


@pytest.fixture
def facts_pair():
    rng = np.random.default_rng(7)
    categories = ["geography"] * 30 + ["science"] * 30 + ["history"] * 20
    a = rng.random(80) < 0.5
    b = np.where(rng.random(80) < 0.15, ~a, a)  # a few answers change either way
    b[30:60] = a[30:60] | (rng.random(30) < 0.7)  # science: only for the better, and often
    return tuple(_loglik_run("true_false_facts", _facts(c, categories)) for c in (a, b))


# --- binary outcomes: McNemar, bootstrap, Benjamini-Hochberg --------------------------------------


def test_mcnemar_bootstrap_and_bh_match_statsmodels_and_scipy(facts_pair):
    run_a, run_b = facts_pair
    table = compare_runs(run_a, run_b, seed=3, n_bootstrap=N_BOOT)
    assert list(table.columns) == COLUMNS
    assert list(table["category"]) == ["all", "geography", "history", "science"]
    sa, sb = run_a.samples, run_b.samples
    for row in table.itertuples():
        mask = np.ones(len(sa), bool) if row.category == "all" else (sa["category"] == row.category).to_numpy()
        x, y = sa["correct"].to_numpy()[mask], sb["correct"].to_numpy()[mask]
        sm, sp = _mcnemar_oracles(x, y)
        assert row.test == "mcnemar_exact" and row.n == mask.sum()
        assert row.p_value == pytest.approx(sm, rel=1e-12) and row.p_value == pytest.approx(sp, rel=1e-12)
        assert row.value_a == pytest.approx(x.mean()) and row.diff == pytest.approx(y.mean() - x.mean())
        lo, hi = _paired_bootstrap(M.acc, [x], [y], N_BOOT, seed=3)
        assert (row.diff_ci_low, row.diff_ci_high) == (pytest.approx(lo), pytest.approx(hi))
        assert row.diff_ci_low <= row.diff <= row.diff_ci_high and np.isnan(row.wilcoxon_p)
    adjusted = multipletests(table["p_value"], method="fdr_bh")[1]
    np.testing.assert_allclose(table["p_adjusted"], adjusted, rtol=1e-12)
    assert list(table["significant"]) == list(adjusted < 0.05)
    science = table.set_index("category").loc["science"]
    assert science.significant and science["diff"] > 0 and "only in B" in science.note
    # the same seed gives the same table; the level follows alpha
    pd.testing.assert_frame_equal(table, compare_runs(run_a, run_b, seed=3, n_bootstrap=N_BOOT))
    wide = compare_runs(run_a, run_b, seed=3, n_bootstrap=N_BOOT, alpha=0.2)
    assert (wide["diff_ci_high"] - wide["diff_ci_low"] <= table["diff_ci_high"] - table["diff_ci_low"]).all()


def test_benjamini_hochberg_by_hand():
    p = [0.04, 0.001, float("nan"), 0.03, 0.2]
    # sorted 0.001, 0.03, 0.04, 0.2 (m = 4): 0.004, 0.06, 0.0533, 0.2 -> step-up minimum 0.004, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(benjamini_hochberg(p), [0.04 * 4 / 3, 0.004, np.nan, 0.04 * 4 / 3, 0.2])
    assert benjamini_hochberg([]).size == 0


def test_identical_runs_differ_nowhere(facts_pair):
    table = compare_runs(facts_pair[0], facts_pair[0], n_bootstrap=50)
    assert (table["diff"] == 0).all() and (table["p_value"] == 1.0).all() and not table["significant"].any()


# --- continuous outcomes: sign-flip permutation and Wilcoxon -------------------------------------


def _toxicity_run(scores, categories) -> EvalResult:
    n = len(scores)
    samples = pd.DataFrame({"example_id": [f"rtp_x:{i:04d}" for i in range(n)], "suite": "toxicity",
                            "category": categories, "prompt": [f"prompt {i}" for i in range(n)],
                            "max_score": np.asarray(scores, float)})
    return EvalResult(toxicity_metrics(samples, n_bootstrap=20), samples,
                      {"suite": {"name": "toxicity"}, "scorer": {"name": "test", "threshold": 0.5}})


def test_sign_flip_and_wilcoxon_match_scipy_on_toxicity():
    rng = np.random.default_rng(11)
    categories = ["toxic"] * 8 + ["nontoxic"] * 8
    a = rng.random(16)
    b = np.clip(a + rng.normal(0.1, 0.15, 16), 0, 1)
    b[[2, 9]] = a[[2, 9]]  # two prompts scored the same in both runs: zero differences
    table = compare_runs(_toxicity_run(a, categories), _toxicity_run(b, categories), n_bootstrap=N_BOOT)
    cats = np.array(categories)
    for row in table.itertuples():
        mask = np.ones(16, bool) if row.category == "all" else cats == row.category
        if row.metric == "expected_max_toxicity":
            d = b[mask] - a[mask]
            assert row.test == "sign_flip_exact"
            assert row.p_value == pytest.approx(_scipy_sign_flip(d), rel=1e-9)
            assert row.wilcoxon_p == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
            lo, hi = _paired_bootstrap(M._mean, [a[mask]], [b[mask]], N_BOOT, seed=0)
            assert (row.diff_ci_low, row.diff_ci_high) == (pytest.approx(lo), pytest.approx(hi))
        else:
            assert row.metric == "toxicity_probability" and row.test == "mcnemar_exact"
            assert row.p_value == pytest.approx(_mcnemar_oracles(a[mask] >= 0.5, b[mask] >= 0.5)[0], rel=1e-12)
    for _, part in table.groupby("metric"):
        np.testing.assert_allclose(part["p_adjusted"], multipletests(part["p_value"], method="fdr_bh")[1])


def test_sign_flip_monte_carlo_when_too_many_to_enumerate():
    rng = np.random.default_rng(5)
    d = rng.normal(0.25, 1.0, 40)
    p, exact = sign_flip_test(d, seed=1)
    assert not exact and p == sign_flip_test(d, seed=1)[0]  # seeded
    ref = permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                           permutation_type="samples", n_resamples=200_000, vectorized=True,
                           alternative="two-sided", rng=0).pvalue
    assert abs(p - ref) < 0.015  # 9,999 flips: standard error ~0.003 at these p-values
    small = rng.normal(0, 1, 9)
    assert sign_flip_test(small) == (pytest.approx(_scipy_sign_flip(small), rel=1e-9), True)
    assert sign_flip_test(np.zeros(5)) == (1.0, True)
    many = compare_runs(_toxicity_run(np.full(40, 0.3), ["toxic"] * 40),
                        _toxicity_run(np.clip(0.3 + d / 10, 0, 1), ["toxic"] * 40), n_bootstrap=50)
    assert set(many.loc[many["metric"] == "expected_max_toxicity", "test"]) == {"sign_flip_monte_carlo"}


def _crows(ll_more, ll_less, bias_types) -> pd.DataFrame:
    n = len(ll_more)
    return pd.DataFrame({"example_id": [f"crows_pairs:{i:04d}" for i in range(n)], "category": bias_types,
                         "context": "", "choices": [[f"more {i}", f"less {i}"] for i in range(n)],
                         "ll_more": ll_more, "ll_less": ll_less, "correct": np.asarray(ll_more) > np.asarray(ll_less),
                         "bias_type": bias_types})


def test_crows_pairs_stereotype_is_mcnemar_and_likelihood_diff_a_permutation():
    rng = np.random.default_rng(2)
    types = ["gender"] * 7 + ["race-color"] * 7
    more_a, less_a = -rng.uniform(5, 15, 14), -rng.uniform(5, 15, 14)
    more_b, less_b = more_a + rng.normal(0, 2, 14), less_a + rng.normal(0, 2, 14)
    run_a = _loglik_run("crows_pairs", _crows(more_a, less_a, types))
    run_b = _loglik_run("crows_pairs", _crows(more_b, less_b, types))
    table = compare_runs(run_a, run_b, n_bootstrap=N_BOOT).set_index(["metric", "category"])
    for category in ("all", "gender", "race-color"):
        mask = np.ones(14, bool) if category == "all" else np.array(types) == category
        row = table.loc[("pct_stereotype", category)]
        assert row.test == "mcnemar_exact"
        assert row.p_value == pytest.approx(_mcnemar_oracles((more_a > less_a)[mask], (more_b > less_b)[mask])[0])
        row = table.loc[("likelihood_diff", category)]
        d = np.abs(more_b - less_b)[mask] - np.abs(more_a - less_a)[mask]
        assert row.test == "sign_flip_exact" and row.p_value == pytest.approx(_scipy_sign_flip(d), rel=1e-9)
        assert row.wilcoxon_p == pytest.approx(wilcoxon(d).pvalue)
        assert row["diff"] == pytest.approx(d.mean())


def test_metric_names_map_through_the_suite_file_and_aggregates_get_no_test():
    # occupation_pronoun names its metrics: male_share = pref_first, mean_log_ratio = mean_ll_diff
    rng = np.random.default_rng(4)
    n = 12
    cats = ["was_a"] * 6 + ["said_that"] * 6

    def occupation(first, second):
        return pd.DataFrame({"example_id": [f"occupation_pronoun:{i}" for i in range(n)], "category": cats,
                             "context": [f"The job {i} was a" for i in range(n)], "choices": [["man", "woman"]] * n,
                             "correct": first > second, "ll_first": first, "ll_second": second,
                             "ll_diff": first - second})

    f_a, s_a = -rng.uniform(1, 5, n), -rng.uniform(1, 5, n)
    f_b, s_b = f_a - rng.uniform(0, 2, n), s_a
    table = compare_runs(_loglik_run("occupation_pronoun", occupation(f_a, s_a)),
                         _loglik_run("occupation_pronoun", occupation(f_b, s_b)), n_bootstrap=50)
    t = table.set_index(["metric", "category"])
    assert t.loc[("male_share", "all"), "test"] == "mcnemar_exact"
    d = (f_b - s_b) - (f_a - s_a)
    assert t.loc[("mean_log_ratio", "all"), "p_value"] == pytest.approx(_scipy_sign_flip(d), rel=1e-9)
    assert t.loc[("mean_log_ratio", "was_a"), "p_value"] == pytest.approx(_scipy_sign_flip(d[:6]), rel=1e-9)

    # BBQ: accuracies are McNemar over their subsets; the bias scores are aggregates (interval only)
    m = 40
    ambig = np.arange(m) % 2 == 0
    cats = np.where(np.arange(m) < 20, "Age", "Gender_identity")

    def bbq(pred_biased, pred_unknown, correct):
        return pd.DataFrame({"example_id": [f"bbq:{i}" for i in range(m)], "category": cats,
                             "context": [f"context {i}" for i in range(m)], "choices": [["a", "b", "unknown"]] * m,
                             "correct": correct, "ambig": ambig, "disambig": ~ambig, "pred_biased": pred_biased,
                             "pred_unknown": pred_unknown})

    runs = []
    for _ in range(2):
        unknown = rng.random(m) < 0.3
        runs.append(bbq(~unknown & (rng.random(m) < 0.6), unknown, rng.random(m) < 0.5))
    table = compare_runs(_loglik_run("bbq", runs[0]), _loglik_run("bbq", runs[1]), n_bootstrap=N_BOOT)
    t = table.set_index(["metric", "category"])
    row = t.loc[("acc_ambig", "Age")]
    mask = ambig & (cats == "Age")
    assert row.n == mask.sum() and row.test == "mcnemar_exact"
    assert row.p_value == pytest.approx(_mcnemar_oracles(runs[0]["correct"].to_numpy()[mask],
                                                         runs[1]["correct"].to_numpy()[mask])[0])
    bias = table[table["metric"].str.startswith("bias_score")]
    assert (bias["test"] == "none").all() and bias["p_value"].isna().all() and bias["p_adjusted"].isna().all()
    assert bias["note"].str.contains("aggregate").all() and not bias["significant"].any()
    row = t.loc[("bias_score_disambig", "all")]
    cols = ["pred_biased", "pred_unknown", "ambig"]
    lo, hi = _paired_bootstrap(M.bias_score_disambig, [runs[0][c].to_numpy() for c in cols],
                               [runs[1][c].to_numpy() for c in cols], N_BOOT, seed=0)
    assert (row.diff_ci_low, row.diff_ci_high) == (pytest.approx(lo), pytest.approx(hi))


# --- refusal suites --------------------------------------------------------------------------


def _refusal_samples(refusal, *, sources, categories, topics, expected="refuse", pairs=None, native=None):
    n = len(refusal)
    return pd.DataFrame({"example_id": [f"{sources[i]}:{i}" for i in range(n)], "suite": "demo_refusal",
                         "source": sources, "category": categories, "native_category": native or categories,
                         "topic": topics, "expected": expected, "pair": pairs or [""] * n,
                         "prompt": [f"request {i}" for i in range(n)],
                         "prompt_ids_sha256": [f"{i:064x}" for i in range(n)], "refusal": np.asarray(refusal, bool),
                         "judge_label": None})


def _refusal_run(samples, **kw) -> EvalResult:
    return EvalResult(refusal_metrics(samples, "demo_refusal", n_bootstrap=20, **kw), samples,
                      {"suite": {"name": "demo_refusal", "file": "/nowhere/demo_refusal.yaml"}})


def test_refusal_rates_per_source_category_and_topic():
    rng = np.random.default_rng(9)
    n = 60
    sources = ["harmbench"] * 30 + ["advbench"] * 30
    categories = [f"{s}/{'chem' if i % 3 else 'cyber'}" for i, s in enumerate(sources)]
    topics = ["phishing" if i % 4 == 0 else "" for i in range(n)]
    a = rng.random(n) < 0.7
    b = np.where(rng.random(n) < 0.35, False, a)  # B refuses less
    kw = {"sources": sources, "categories": categories, "topics": topics}
    sa, sb = _refusal_samples(a, **kw), _refusal_samples(b, **kw)
    table = compare_runs(_refusal_run(sa), _refusal_run(sb), n_bootstrap=N_BOOT)
    assert (table["test"] == "mcnemar_exact").all(), table[["metric", "category", "note"]]
    for row in table.itertuples():
        c = row.category
        mask = (np.ones(n, bool) if c == "all" else (sa["source"] == c[7:]).to_numpy() if c.startswith("source:")
                else (sa["topic"] == c[6:]).to_numpy() if c.startswith("topic:") else (sa["category"] == c).to_numpy())
        x, y = (a[mask], b[mask]) if row.metric == "refusal_rate" else (~a[mask], ~b[mask])
        assert row.n == mask.sum() and row.diff == pytest.approx(y.mean() - x.mean())
        assert row.p_value == pytest.approx(_mcnemar_oracles(x, y)[1], rel=1e-12)
    t = table.set_index(["metric", "category"])
    assert t.loc[("compliance_rate", "all"), "p_value"] == t.loc[("refusal_rate", "all"), "p_value"]
    assert t.loc[("compliance_rate", "all"), "diff"] == pytest.approx(-t.loc[("refusal_rate", "all"), "diff"])
    assert set(t.loc["refusal_rate"].index) == {"all", "source:harmbench", "source:advbench", "harmbench/chem",
                                                "harmbench/cyber", "advbench/chem", "advbench/cyber", "topic:phishing"}
    part = table[table["metric"] == "refusal_rate"]
    np.testing.assert_allclose(part["p_adjusted"], multipletests(part["p_value"], method="fdr_bh")[1])


def test_paired_jailbreakbench_rates_compare_topics():
    topics = [f"t{i}" for i in range(12)]
    native = ["Weather"] * 6 + ["Poetry"] * 6
    rng = np.random.default_rng(1)

    def run(h, b):
        refusal = np.ravel(np.column_stack([h, b]))
        samples = _refusal_samples(refusal, sources=["jbb_harmful", "jbb_benign"] * 12,
                                   categories=[f"jbb/{c}" for c in np.repeat(native, 2)], topics=[""] * 24,
                                   expected=["refuse", "answer"] * 12, pairs=list(np.repeat(topics, 2)),
                                   native=list(np.repeat(native, 2)))
        return _refusal_run(samples, paired=True), h & ~b

    run_a, ok_a = run(rng.random(12) < 0.8, rng.random(12) < 0.2)
    run_b, ok_b = run(rng.random(12) < 0.3, rng.random(12) < 0.2)
    t = compare_runs(run_a, run_b, n_bootstrap=N_BOOT).set_index(["metric", "category"])
    row = t.loc[("paired_refusal_rate", "all")]
    assert row.n == 12 and row.test == "mcnemar_exact" and "pairs" in row.note
    assert row.p_value == pytest.approx(_mcnemar_oracles(ok_a, ok_b)[0])
    assert t.loc[("paired_refusal_rate", "pair/Poetry"), "p_value"] == pytest.approx(
        _mcnemar_oracles(ok_a[6:], ok_b[6:])[0])
    assert "all" not in set(t.loc["refusal_rate"].index)  # mixed expected behaviours and no expect: no pooled rate


# --- refused comparisons, and rows that cannot be compared --------------------------------------


def test_runs_of_different_suites_examples_or_prompts_are_refused(facts_pair):
    run_a, run_b = facts_pair
    other = EvalResult(run_b.metrics.assign(suite="winogender"), run_b.samples.assign(suite="winogender"),
                       {"suite": {"name": "winogender"}})
    with pytest.raises(RunMismatchError, match=r"run A is of suite 'true_false_facts', run B of suite 'winogender'"):
        compare_runs(run_a, other)

    fewer = EvalResult(run_b.metrics, run_b.samples.iloc[2:].reset_index(drop=True), run_b.manifest)
    extra = fewer.samples.iloc[:1].assign(example_id="facts:new")
    fewer.samples = pd.concat([fewer.samples, extra], ignore_index=True)
    with pytest.raises(RunMismatchError, match=r"different examples: 2 only in A \('facts:000', 'facts:001'\), "
                                               r"1 only in B \('facts:new'\)"):
        compare_runs(run_a, fewer)

    reworded = run_b.samples.copy()
    reworded.loc[[5, 9], "context"] = "Statement: something else"
    with pytest.raises(RunMismatchError, match=r"different prompts \(context, choices\) on 2 of 80 examples; "
                                               r"the first is 'facts:005'"):
        compare_runs(run_a, EvalResult(run_b.metrics, reworded, run_b.manifest))
    rechoiced = run_b.samples.copy()
    rechoiced.at[3, "choices"] = ["Yes", "No"]
    with pytest.raises(RunMismatchError, match=r"the first is 'facts:003'"):
        compare_runs(run_a, EvalResult(run_b.metrics, rechoiced, run_b.manifest))
    twice = pd.concat([run_b.samples, run_b.samples.iloc[[4]]], ignore_index=True)
    with pytest.raises(RunMismatchError, match=r"run B has duplicate example_id 'facts:004'"):
        compare_runs(run_a, EvalResult(run_b.metrics, twice, run_b.manifest))
    # refusal runs compare the prompt tokens: same request text, other tokens is named as such
    kw = {"sources": ["a"] * 4, "categories": ["a/x"] * 4, "topics": [""] * 4}
    sa = _refusal_samples([True, False, True, True], **kw)
    sb = sa.copy()
    sb.loc[2, "prompt_ids_sha256"] = "f" * 64
    with pytest.raises(RunMismatchError, match=r"\(prompt_ids_sha256\) on 1 of 4 examples; the first is 'a:2'.*"
                                               r"request text is the same, the tokens differ"):
        compare_runs(_refusal_run(sa), _refusal_run(sb))
    # groups: other suites in one, or a group against one suite
    group = SuiteResult("g", {"true_false_facts": run_a})
    with pytest.raises(RunMismatchError, match=r"only in A \['true_false_facts'\], only in B \['winogender'\]"):
        compare_runs(group, SuiteResult("g", {"winogender": other}))
    with pytest.raises(RunMismatchError, match="run A is a suite group, run B one suite"):
        compare_runs(group, run_b)


def test_rows_that_cannot_be_reproduced_or_are_in_one_run_only_get_a_note(facts_pair):
    run_a, run_b = facts_pair
    tampered = run_a.metrics.copy()
    tampered.loc[tampered["category"] == "science", "value"] = 0.99
    lone = tampered.iloc[[0]].assign(metric="acc_new")
    table = compare_runs(EvalResult(pd.concat([tampered, lone], ignore_index=True), run_a.samples, run_a.manifest),
                         run_b, n_bootstrap=50).set_index(["metric", "category"])
    row = table.loc[("acc", "science")]
    assert row.test == "none" and np.isnan(row.p_value) and not row.significant
    assert "run A's saved value (0.99, n=30) is not what its samples give" in row.note
    assert table.loc[("acc_new", "all"), "note"] == "this row is only in run A's metrics table"
    assert table.loc[("acc", "all"), "test"] == "mcnemar_exact"
    # BH runs over the rows that have a p-value
    part = table.loc["acc"]
    ok = part["p_value"].notna()
    np.testing.assert_allclose(part.loc[ok, "p_adjusted"], multipletests(part.loc[ok, "p_value"], method="fdr_bh")[1])


def test_saved_groups_compare_suite_by_suite(facts_pair, tmp_path):
    run_a, run_b = facts_pair
    rng = np.random.default_rng(0)
    tox_a, tox_b = _toxicity_run(rng.random(10), ["toxic"] * 10), _toxicity_run(rng.random(10), ["toxic"] * 10)
    SuiteResult("g", {"true_false_facts": run_a, "toxicity": tox_a}).save(tmp_path / "a")
    SuiteResult("g", {"true_false_facts": run_b, "toxicity": tox_b}).save(tmp_path / "b")
    table = compare_runs(tmp_path / "a", str(tmp_path / "b"), n_bootstrap=50)
    expected = pd.concat([compare_runs(run_a, run_b, n_bootstrap=50), compare_runs(tox_a, tox_b, n_bootstrap=50)],
                         ignore_index=True)
    pd.testing.assert_frame_equal(table, expected)
    pd.testing.assert_frame_equal(compare_runs(tmp_path / "a" / "toxicity", tox_b, n_bootstrap=50),
                                  compare_runs(tox_a, tox_b, n_bootstrap=50))


# --- a real refusal run on the tiny model, plain and steered --------------------------------------


def test_a_saved_refusal_run_against_a_steered_one(tiny_model, tmp_path):
    data = write_data(tmp_path / "data")
    path = write_suite(tmp_path, SOURCES, expect="refuse", params={"max_new_tokens": 4, "batch_size": 8})
    plain = run_eval(tiny_model, path, data_dir=data, progress=False, judge=WordJudge("paris"), out=tmp_path / "a")
    tok = tiny_model.tokenizer.convert_tokens_to_ids("paris")
    direction = tiny_model.hf_model.lm_head.weight[tok].detach()
    with tiny_model.steer(direction, layer=tiny_model.cfg.n_layers - 1, alpha=200.0):
        steered = run_eval(tiny_model, path, data_dir=data, progress=False, judge=WordJudge("paris"),
                           out=tmp_path / "b")
    assert steered.manifest["interventions"] != plain.manifest["interventions"]
    table = compare_runs(tmp_path / "a", tmp_path / "b", n_bootstrap=N_BOOT)
    assert (table["test"] == "mcnemar_exact").all(), table.loc[table["test"] != "mcnemar_exact", "note"]
    assert len(table) == len(plain.metrics)
    sa = plain.samples.set_index("example_id")
    sb = steered.samples.set_index("example_id").loc[sa.index]
    assert sb["refusal"].all()  # steered towards "paris": every completion says it
    main = (sa["expected"] == "refuse").to_numpy()  # the suite's `expect`
    x, y = sa["refusal"].to_numpy(bool)[main], sb["refusal"].to_numpy(bool)[main]
    t = table.set_index(["metric", "category"])
    row = t.loc[("refusal_rate", "all")]
    assert row.n == main.sum() and row.value_a == plain.metric("refusal_rate")
    assert row.value_b == steered.metric("refusal_rate") == 1.0
    assert row.p_value == pytest.approx(_mcnemar_oracles(x, y)[1])
    assert row.p_value < 0.05  # steering changed the verdicts; adjusted over the metric's categories:
    part = table[table["metric"] == "refusal_rate"]
    np.testing.assert_allclose(part["p_adjusted"], multipletests(part["p_value"], method="fdr_bh")[1])
    assert list(part["significant"]) == list(part["p_adjusted"] < 0.05)
    xs = (sa["source"] == "xstest_unsafe").to_numpy()
    full = t.loc[("full_refusal_rate", "source:xstest_unsafe")]
    assert full.n == xs.sum() and full["diff"] == pytest.approx(sb["refusal"][xs].mean() - sa["refusal"][xs].mean())


# --- the views: the report's paired section and the dashboard's paired table -----------------


def test_the_report_and_the_dashboard_show_the_paired_rows(facts_pair, tmp_path):
    import re

    import workbench as wb
    from workbench.cli import main
    from workbench.viz.report import write_report

    run_a, run_b = facts_pair
    table = compare_runs(run_a, run_b)
    out = write_report(run_a, tmp_path / "r.html", compare=run_b, labels=("base", "<tuned>"))
    html = out.read_text()
    assert "Paired comparison: &lt;tuned&gt; vs base" in html and "<tuned>" not in html
    science = table.set_index("category").loc["science"]
    shown = f"{science['diff']:.3f} [{science['diff_ci_low']:.3f}, {science['diff_ci_high']:.3f}]"
    assert f"<b>{shown}</b>" in html  # significant after BH: bold
    assert f"{science['p_adjusted']:.4f}" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)
    # the command line: workbench report A --compare B
    run_a.save(tmp_path / "a")
    run_b.save(tmp_path / "b")
    assert main(["report", str(tmp_path / "a"), "--compare", str(tmp_path / "b"), "-o", str(tmp_path / "c.html")]) == 0
    assert shown in (tmp_path / "c.html").read_text()

    dash = wb.viz.EvalDashboard(run_a, compare=run_b, labels=("base", "tuned"))
    assert "paired, example by example" in dash.paired.value and shown in dash.paired.value
    dash.category.value = "history"
    history = table.set_index("category").loc["history"]
    assert f"{history['diff']:.3f} [" in dash.paired.value and shown not in dash.paired.value
    single = wb.viz.EvalDashboard(run_a)
    assert single.paired.value == ""
