"""A refusal suite under several interventions (workbench.evals.effects), on a tiny random model.

Oracles: each run equals a plain ``run_eval`` under the same context; the paired counts and
differences are recomputed from those runs' samples; McNemar's exact p-value from the binomial
sum written out with ``math.comb``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_evals_misuse_data import SOURCES, write_data, write_suite
from test_evals_refusal import WordJudge

from workbench.common.errors import WorkbenchError
from workbench.evals.effects import EFFECT_COLUMNS, intervention_effects, mcnemar_exact
from workbench.evals.run import run_eval


def _exact_mcnemar(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


@pytest.mark.parametrize(("b", "c"), [(0, 0), (0, 6), (3, 9), (7, 7), (1, 20)])
def test_mcnemar_exact_is_the_two_sided_binomial_sum(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(_exact_mcnemar(b, c), rel=1e-12)


def test_each_intervention_runs_the_same_examples_and_is_paired_with_the_baseline(tiny_model, tmp_path):
    data = write_data(tmp_path / "data")
    path = write_suite(tmp_path, SOURCES, expect="answer", params={"max_new_tokens": 4, "batch_size": 4})
    the = tiny_model.hf_model.lm_head.weight[tiny_model.tokenizer.convert_tokens_to_ids("the")].detach()

    def toward_the():  # every answer becomes "the the ...": refused by the word judge
        return tiny_model.steer(the, layer=tiny_model.cfg.n_layers - 1, alpha=200.0)

    options = dict(data_dir=data, progress=False, judge=WordJudge())
    frame = intervention_effects(tiny_model, str(path), {"none": None, "steered": toward_the, "again": None},
                                 out=tmp_path / "runs", **options)
    assert list(frame.columns) == EFFECT_COLUMNS and list(frame["intervention"]) == ["none", "steered", "again"]

    plain = run_eval(tiny_model, path, **options).samples
    with toward_the():
        steered = run_eval(tiny_model, path, **options).samples
    should = plain["expected"] == "answer"  # the suite's `all` examples
    base, this = plain.loc[should, "refusal"].to_numpy(bool), steered.loc[should, "refusal"].to_numpy(bool)
    assert this.all() and not base.all()
    row = frame.set_index("intervention").loc["steered"]
    assert row["n"] == should.sum() and row["refusal_rate"] == pytest.approx(this.mean())
    assert row["diff"] == pytest.approx(this.mean() - base.mean())
    assert row["to_refusal"] == np.sum(this & ~base) and row["to_answer"] == 0
    assert row["p_mcnemar"] == pytest.approx(_exact_mcnemar(int(row["to_refusal"]), 0))
    assert row["diff_ci_low"] <= row["diff"] <= row["diff_ci_high"]
    for label in ("none", "again"):  # no intervention: the baseline's own numbers, nothing changed
        same = frame.set_index("intervention").loc[label]
        assert same["refusal_rate"] == pytest.approx(base.mean()) and same["diff"] == 0
        assert same["to_refusal"] == same["to_answer"] == 0 and same["p_mcnemar"] == 1.0
    # each run is saved under its label, and a rerun reuses them (no new generation)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["again", "none", "steered"]
    judge = WordJudge()
    again = intervention_effects(tiny_model, str(path), {"none": None, "steered": toward_the, "again": None},
                                 out=tmp_path / "runs", **{**options, "judge": judge})
    assert judge.prompts == [] and again.equals(frame)
    # a run already made stands in for its label
    given = intervention_effects(tiny_model, str(path), {"none": run_eval(tiny_model, path, **options),
                                                         "steered": toward_the}, **options)
    assert given.equals(frame.iloc[:2])


def test_bad_arguments_are_named(tiny_model, tmp_path):
    data = write_data(tmp_path / "data")
    path = write_suite(tmp_path, SOURCES, expect="answer")
    with pytest.raises(WorkbenchError, match="baseline 'x' is not one of"):
        intervention_effects(tiny_model, str(path), {"none": None}, baseline="x", data_dir=data)
    with pytest.raises(WorkbenchError, match="empty"):
        intervention_effects(tiny_model, str(path), {}, data_dir=data)
    with pytest.raises(WorkbenchError, match="same folder name"):
        intervention_effects(tiny_model, str(path), {"a b": None, "a_b": None}, out=tmp_path / "o", data_dir=data)
    with pytest.raises(WorkbenchError, match="kind 'loglik'|not 'refusal'"):
        intervention_effects(tiny_model, "crows_pairs", {"none": None}, data_dir=data)
