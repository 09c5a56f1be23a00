"""Eval dashboard: figures are the runs' metric tables; drill-down ranks examples by hand-checked margins."""

import numpy as np
import pandas as pd
import pytest

from workbench.evals import run_eval
from workbench.evals.result import EvalResult, SuiteResult
from workbench.evals.suites import is_preference_suite
from workbench.viz.eval_dashboard import ALL, EvalDashboard, drilldown, load_runs

EVIL_SCRIPT = "<script>alert(1)</script>"
EVIL_IMG = "<img src=x onerror=alert(1)>"
COLUMNS = ["suite", "metric", "category", "value", "ci_low", "ci_high", "n"]


def crows(shift=0.0, steered=False):
    metrics = pd.DataFrame([("crows_pairs", "pct_stereotype", "all", 0.75 - shift, 0.5, 1.0, 4),
                            ("crows_pairs", "pct_stereotype", "gender", 1.0, 1.0, 1.0, 2),
                            ("crows_pairs", "pct_stereotype", EVIL_IMG, 0.5 - shift, 0.0, 1.0, 2),
                            ("crows_pairs", "likelihood_diff", "all", 1.5, 1.0, 2.0, 4)], columns=COLUMNS)
    samples = pd.DataFrame({
        "example_id": [f"crows_pairs:{i}" for i in range(4)], "suite": "crows_pairs",
        "category": ["gender", "gender", EVIL_IMG, EVIL_IMG], "context": "",
        "choices": [["He fixed it", "She fixed it"], ["She cried", "He cried"],
                    [f"Stereo {EVIL_SCRIPT}", "Anti"], ["Stereo D", "Anti D"]],
        "loglik": [[-10.0, -12.5 + shift], [-9.0, -9.5], [-20.0, -23.0], [-8.0, -7.0]],
        "label": 0, "prediction": [0, 0, 0, 1], "correct": [True, True, True, False]})
    interventions = [{"kind": "steer", "direction": "gender/logistic", "layer": 12, "alpha": -4.0}] if steered else []
    return EvalResult(metrics, samples, {"suite": {"name": "crows_pairs"}, "n_examples": 4,
                                         "interventions": interventions})


def facts():
    metrics = pd.DataFrame([("true_false_facts", "acc", "all", 1 / 3, 0.0, 1.0, 3)], columns=COLUMNS)
    samples = pd.DataFrame({
        "example_id": ["f:0", "f:1", "f:2"], "suite": "true_false_facts", "category": "",
        "context": ["Paris is in France.", "Rome is in Spain.", EVIL_SCRIPT],
        "choices": [[" True", " False"]] * 3, "loglik": [[-1.0, -3.0], [-2.0, -0.5], [-4.0, -1.0]],
        "label": [0, 1, 0], "prediction": [0, 1, 1], "correct": [True, True, False]})
    return EvalResult(metrics, samples, {"suite": {"name": "true_false_facts"}, "n_examples": 3})


def test_drilldown_ranks_by_hand_computed_margins():
    what, frame = drilldown(crows().samples, "crows_pairs")
    assert "stereotyped" in what
    # margins LL(stereo) - LL(anti): 2.5, 0.5, 3.0, -1.0 -> the positive ones, largest first
    assert frame["example_id"].tolist() == ["crows_pairs:2", "crows_pairs:0", "crows_pairs:1"]
    np.testing.assert_allclose(frame["score"], [3.0, 2.5, 0.5])
    assert frame["loglik"][0] == [-20.0, -23.0]
    _, gender = drilldown(crows().samples, "crows_pairs", category="gender")
    assert gender["example_id"].tolist() == ["crows_pairs:0", "crows_pairs:1"]
    what, wrong = drilldown(facts().samples, "true_false_facts")
    assert "confidently wrong" in what and wrong["example_id"].tolist() == ["f:2"]  # LL(chosen) - LL(label) = 3
    assert wrong["score"].tolist() == [3.0] and wrong["other"].tolist() == [" True"]


def pronouns(shift=0.0):
    """occupation_pronoun-shaped run: no correct answer, the label (0) marks the male word the metric counts."""
    metrics = pd.DataFrame([("occupation_pronoun", "male_share", "all", 0.5, 0.0, 1.0, 4),
                            ("occupation_pronoun", "male_share", "said_that", 0.5, 0.0, 1.0, 2),
                            ("occupation_pronoun", "male_share", "was_a", 0.5, 0.0, 1.0, 2)], columns=COLUMNS)
    samples = pd.DataFrame({
        "example_id": [f"occupation_pronoun:{i}" for i in range(4)], "suite": "occupation_pronoun",
        "category": ["said_that", "said_that", "was_a", "was_a"],
        "context": ["The nurse said that", "The pilot said that", "The chef was a", "The nanny was a"],
        "choices": [["he", "she"]] * 2 + [["man", "woman"]] * 2,
        "loglik": [[-4.0, -2.5], [-2.0, -3.0 - shift], [-1.0, -3.5], [-6.0, -5.5]],
        "label": 0, "prediction": [1, 0, 0, 1], "correct": [False, True, True, False]})
    return EvalResult(metrics, samples, {"suite": {"name": "occupation_pronoun"}, "n_examples": 4})


def test_suites_without_a_correct_answer_rank_by_preference_not_by_wrongness():
    assert is_preference_suite("crows_pairs") and is_preference_suite("occupation_pronoun")
    assert not is_preference_suite("true_false_facts") and not is_preference_suite("winogender")
    assert not is_preference_suite("no_such_suite")
    what, frame = drilldown(pronouns().samples, "occupation_pronoun")
    assert "wrong" not in what and "correct" not in what and "preference" in what
    # LL(male) - LL(female): -1.5, 1.0, 2.5, -0.5 -> the positive ones, largest first
    assert frame["example_id"].tolist() == ["occupation_pronoun:2", "occupation_pronoun:1"]
    np.testing.assert_allclose(frame["score"], [2.5, 1.0])
    assert frame["text"].tolist() == ["The chef was a → man", "The pilot said that → he"]
    assert frame["other"].tolist() == ["woman", "she"]
    # The old ranking (LL(chosen) - LL(label)) called the female-leaning prompts "confidently wrong".
    _, forced = drilldown(pronouns().samples, "occupation_pronoun", preference=False)
    assert forced["example_id"].tolist() == ["occupation_pronoun:0", "occupation_pronoun:3"]

    dash = EvalDashboard(pronouns(), compare=pronouns(shift=2.0), labels=("before", "after"))
    assert "wrong" not in dash.what.value and "preference" in dash.what.value
    dash.category.value = "said_that"
    assert "occupation_pronoun:1" in dash.table.value and "occupation_pronoun:2" not in dash.table.value
    assert ">3.000</td>" in dash.table.value  # the other run's LL(he) - LL(she) for the same example


def test_one_run_figures_filter_and_escaping():
    run = SuiteResult("quick", {"crows_pairs": crows(), "true_false_facts": facts()})
    dash = EvalDashboard(run, top=2)
    assert "#b00020" not in dash.status.value, dash.status.value
    bars = {t.name: list(t.y) for t in dash.overview.data}
    assert bars == {"crows_pairs": [0.75, 1.5], "true_false_facts": [pytest.approx(1 / 3)]}
    assert list(dash.categories.data[0].y) == [0.75, 1.0, 0.5]   # all, then each category
    np.testing.assert_allclose(dash.categories.data[0].error_y.array, [0.25, 0.0, 0.5])
    assert dash.table.value.count("<tr>") == 1 + 2                  # header + top 2
    assert EVIL_SCRIPT not in dash.table.value and "&lt;script&gt;" in dash.table.value
    assert EVIL_IMG not in str(dash.categories.data[0].x) and EVIL_IMG not in dash.table.value

    dash.category.value = EVIL_IMG                                  # the filter: that category only
    assert list(dash.categories.data[0].y) == [0.75, 0.5]
    assert "crows_pairs:2" in dash.table.value and "crows_pairs:0" not in dash.table.value
    dash.metric.value = "likelihood_diff"
    assert list(dash.categories.data[0].y) == [1.5]
    dash.suite.value = "true_false_facts"
    assert dash.category.value == ALL and dash.metric.options == ("acc",)
    assert "f:2" in dash.table.value and "f:1" not in dash.table.value


def test_two_runs_side_by_side(tmp_path):
    before, after = crows(), crows(shift=3.0, steered=True)
    after.save(tmp_path / "after")                                  # a folder works as well as an object
    dash = EvalDashboard(before, compare=tmp_path / "after", labels=("before", "steered"))
    assert [t.name for t in dash.overview.data] == ["before", "steered"]
    assert list(dash.overview.data[1].y) == [-2.25, 1.5]
    assert [list(t.y) for t in dash.categories.data] == [[0.75, 1.0, 0.5], [-2.25, 1.0, -2.5]]
    # example 0's margin moves from 2.5 to 2.5 - 3 = -0.5 in the steered run, shown beside it
    assert "score in steered" in dash.table.value and "-0.500" in dash.table.value
    assert "steer gender/logistic layer 12 alpha -4.0" in dash.status.value
    assert "before: n=4, no interventions" in dash.status.value
    with pytest.raises(ValueError, match="distinct"):
        EvalDashboard(before, compare=after, labels=("a", "a"))
    with pytest.raises(TypeError, match="EvalResult"):
        EvalDashboard(42)


TINY_SUITE = """
name: tiny_capitals
version: 1
builtin: true
description: capitals in the tiny tokenizer's words
kind: multiple_choice
prompt:
  context: "the capital of {country} is"
  choices: [paris, rome, berlin]
  delimiter: " "
  label: label
metrics: [acc]
by: [category]
examples:
  - {id: fr, category: west, label: 0, country: france}
  - {id: it, category: south, label: 1, country: italy}
  - {id: de, category: west, label: 2, country: germany}
  - {id: xx, category: <b>odd</b>, label: 0, country: "red blue"}
"""


def test_a_real_run_on_the_tiny_model(tiny_model, tmp_path):
    (tmp_path / "tiny_capitals.yaml").write_text(TINY_SUITE)
    result = run_eval(tiny_model, str(tmp_path / "tiny_capitals.yaml"), progress=False, out=tmp_path / "run")
    dash = EvalDashboard(tmp_path / "run")
    assert dash.suite.options == ("tiny_capitals",) and "#b00020" not in dash.status.value
    assert list(dash.overview.data[0].y) == pytest.approx(result.headline()["value"].tolist())
    samples = result.samples
    # the oracle: every wrong answer's margin LL(chosen) - LL(correct), from the saved log-likelihoods
    margins = sorted(((ll[p] - ll[lab], eid) for ll, p, lab, eid in
                      zip(samples["loglik"], samples["prediction"], samples["label"], samples["example_id"], strict=True)
                      if ll[p] - ll[lab] > 0), reverse=True)
    assert margins, "the random tiny model gets some capital wrong"
    _, frame = drilldown(samples, "tiny_capitals")
    assert frame["example_id"].tolist() == [eid for _, eid in margins]
    np.testing.assert_allclose(frame["score"], [m for m, _ in margins], rtol=1e-6)
    assert dash.table.value.count("<tr>") == 1 + len(margins)
    dash.category.value = "<b>odd</b>"  # dropdown options are plain text; figures and tables escape
    assert list(dash.categories.data[0].x) == ["all", "&lt;b&gt;odd&lt;/b&gt;"]


def test_undefined_values_reach_the_widget_as_json_null():
    import json

    run = crows()
    run.metrics.loc[2, ["value", "ci_low", "ci_high"]] = float("nan")  # an empty category: undefined
    dash = EvalDashboard(run)
    trace = dash.categories.data[0]
    assert list(trace.y) == [0.75, 1.0, None]
    json.dumps(dash.categories.to_plotly_json(), allow_nan=False)  # strict JSON, as the browser needs
    json.dumps(dash.overview.to_plotly_json(), allow_nan=False)


def test_runs_are_read_by_the_one_reader(tmp_path):
    """A folder opens as the same EvalResult / SuiteResult objects the dashboard is given in memory."""
    group = SuiteResult("quick", {"crows_pairs": crows(), "true_false_facts": facts()})
    group.save(tmp_path / "quick")
    suites = load_runs(tmp_path / "quick")
    assert list(suites) == ["crows_pairs", "true_false_facts"]
    assert all(isinstance(r, EvalResult) for r in suites.values())
    pd.testing.assert_frame_equal(suites["crows_pairs"].metrics, crows().metrics)
    assert list(load_runs(tmp_path / "quick" / "crows_pairs")) == ["crows_pairs"]
    assert list(load_runs(crows())) == ["crows_pairs"] and load_runs(group) == group.results
