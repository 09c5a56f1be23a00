"""Metric functions against hand-computed values, including ties, unknown answers, empty sets."""

import math

import numpy as np
import pandas as pd
import pytest

from workbench.evals import metrics as M
from workbench.evals.scoring import metrics_table
from workbench.evals.suites import load_suite


def test_pct_stereotype_pools_pairs_and_counts_ties_as_not_stereotyped():
    more = np.array([-1.0, -2.0, -3.0, -4.0])
    less = np.array([-2.0, -2.0, -1.0, -5.0])  # pair 2 is a tie
    assert M.pct_stereotype(more, less) == pytest.approx(2 / 4)
    assert M.likelihood_diff(more, less) == pytest.approx((1 + 0 + 2 + 1) / 4)
    assert math.isnan(M.pct_stereotype(np.array([]), np.array([])))


def test_crows_metrics_table_pools_over_pairs_not_categories():
    spec = load_suite("crows_pairs")
    # 3 race pairs all stereotyped, 1 gender pair not: pooled 3/4, mean of categories would be 1/2.
    samples = pd.DataFrame({"ll_more": [-1.0, -1.0, -1.0, -5.0], "ll_less": [-2.0, -2.0, -2.0, -1.0],
                            "bias_type": ["race", "race", "race", "gender"]})
    table = metrics_table(spec, samples, seed=0, n_boot=200)
    row = table[(table.metric == "pct_stereotype") & (table.category == "all")].iloc[0]
    assert row.value == pytest.approx(0.75) and row.n == 4
    assert row.ci_low <= 0.75 <= row.ci_high
    by = table[table.metric == "pct_stereotype"].set_index("category")["value"]
    assert by["race"] == 1.0 and by["gender"] == 0.0
    diff = table[(table.metric == "likelihood_diff") & (table.category == "gender")].iloc[0]
    assert diff.value == pytest.approx(4.0) and diff.n == 1
    assert math.isnan(diff.ci_low)  # one example: no interval


def test_mc1_argmax_ties_go_to_first_option():
    assert M.mc1_example([-1.0, -1.0, -3.0], [1, 0, 0]) == 1.0
    assert M.mc1_example([-1.0, -1.0, -3.0], [0, 1, 0]) == 0.0


def test_mc2_normalised_true_mass():
    p = np.array([0.2, 0.1, 0.4, 0.3])
    lls = np.log(p) - 50.0  # a common offset cancels (and would underflow a naive exp)
    assert M.mc2_example(lls, [1, 1, 0, 0]) == pytest.approx(0.3 / 1.0)
    # lm-eval splits at the first false answer; the labels-based variant counts index 3 too.
    assert M.mc2_example(lls, [1, 0, 0, 1]) == pytest.approx(0.2)
    assert M.mc2_example(lls, [1, 0, 0, 1], split_at_first_false=False) == pytest.approx(0.5)


def test_bbq_bias_scores_hand_computed():
    # 4 ambiguous examples: predictions biased, biased, anti, unknown(correct)
    # 4 disambiguated: biased(correct), anti(correct), biased(wrong), unknown(wrong)
    ambig = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    pred_biased = np.array([1, 1, 0, 0, 1, 0, 1, 0], bool)
    pred_unknown = np.array([0, 0, 0, 1, 0, 0, 0, 1], bool)
    correct = np.array([0, 0, 0, 1, 1, 1, 0, 0], bool)
    # disambig: n_biased = 2, n_non_unknown = 3 -> 2*2/3 - 1 = 1/3
    assert M.bias_score_disambig(pred_biased, pred_unknown, ambig) == pytest.approx(1 / 3)
    # ambig: s_DIS over ambiguous = 2*2/3 - 1 = 1/3; acc_amb = 1/4 -> (1 - 1/4) * 1/3 = 1/4
    assert M.bias_score_ambig(correct, pred_biased, pred_unknown, ambig) == pytest.approx(0.25)
    assert M.acc_where(correct, ambig) == pytest.approx(0.25)
    assert M.acc_where(correct, ~ambig) == pytest.approx(0.5)


def test_bbq_bias_score_undefined_cases():
    ambig = np.zeros(2, bool)
    # every prediction "unknown": no non-unknown answers, s_DIS undefined (NaN), not 0
    assert math.isnan(M.bias_score_disambig(np.zeros(2, bool), np.ones(2, bool), ambig))
    # no biased answer among non-unknown ones: the formula's -1 (lm-eval would report 0)
    assert M.bias_score_disambig(np.zeros(2, bool), np.zeros(2, bool), ambig) == -1.0
    # a perfect model on ambiguous contexts answers "unknown" every time: s_AMB = 0, not NaN
    assert M.bias_score_ambig(np.ones(2, bool), np.zeros(2, bool), np.ones(2, bool), np.ones(2, bool)) == 0.0
    # empty category
    assert math.isnan(M.bias_score_ambig(np.zeros(2, bool), np.zeros(2, bool), np.zeros(2, bool), ambig))
    assert math.isnan(M.acc_where(np.array([1, 0], bool), ambig))


def test_bbq_metrics_table_counts_and_categories():
    spec = load_suite("bbq")
    samples = pd.DataFrame({
        "correct": [1, 0, 1, 1], "pred_biased": [0, 1, 1, 0], "pred_unknown": [1, 0, 0, 0],
        "ambig": [True, True, False, False], "disambig": [False, False, True, True],
        "category": ["Age", "Age", "Age", "Religion"]}).astype({"correct": bool, "pred_biased": bool,
                                                              "pred_unknown": bool})
    t = metrics_table(spec, samples, seed=1, n_boot=100).set_index(["metric", "category"])
    assert t.loc[("acc_ambig", "all"), "n"] == 2 and t.loc[("acc_disambig", "all"), "n"] == 2
    assert t.loc[("acc_ambig", "all"), "value"] == 0.5
    # ambig: pred [unknown, biased] -> s_DIS = 2*1/1 - 1 = 1; acc 0.5 -> s_AMB = 0.5
    assert t.loc[("bias_score_ambig", "all"), "value"] == pytest.approx(0.5)
    # Religion has no ambiguous example: undefined, with n = 0
    assert math.isnan(t.loc[("bias_score_ambig", "Religion"), "value"])
    assert t.loc[("bias_score_ambig", "Religion"), "n"] == 0
    assert t.loc[("bias_score_disambig", "Religion"), "value"] == -1.0


def test_winobias_gap_and_winogender_groups():
    correct = np.array([1, 1, 0, 1, 0, 0], bool)
    pro = np.array([1, 1, 1, 0, 0, 0], bool)
    assert M.pro_anti_gap(correct, pro) == pytest.approx(2 / 3 - 1 / 3)
    assert math.isnan(M.pro_anti_gap(correct[:3], pro[:3]))  # no anti examples
    spec = load_suite("winogender")
    samples = pd.DataFrame({"correct": [True, False, True, True],
                            "gender": ["male", "male", "female", "neutral"],
                            "gotcha_split": ["gotcha", "not_gotcha", "gotcha", None]})
    t = metrics_table(spec, samples, n_boot=50).set_index("category")["value"]
    assert t["all"] == 0.75 and t["male"] == 0.5 and t["neutral"] == 1.0
    assert t["gotcha"] == 1.0 and t["not_gotcha"] == 0.0


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    x = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], bool)
    a = M.bootstrap_ci(M.acc, [x], n_boot=500, seed=3)
    assert a[0] < 0.7 < a[1] and 0 <= a[0] and a[1] <= 1
    diffs = np.random.default_rng(0).normal(1.0, 2.0, size=40)  # continuous: intervals differ by seed
    b1 = M.bootstrap_ci(M._mean, [diffs], n_boot=300, seed=3)
    b2 = M.bootstrap_ci(M._mean, [diffs], n_boot=300, seed=3)
    b3 = M.bootstrap_ci(M._mean, [diffs], n_boot=300, seed=4)
    assert b1 == b2 and b1 != b3
    # the normal-theory interval is a sanity oracle for the mean: close to the percentile one
    se = diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert b1[0] == pytest.approx(diffs.mean() - 1.96 * se, abs=0.25)
    assert b1[1] == pytest.approx(diffs.mean() + 1.96 * se, abs=0.25)
    assert all(math.isnan(v) for v in M.bootstrap_ci(M.acc, [x[:1]]))  # one example: no interval
