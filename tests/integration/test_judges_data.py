"""Refusal judges on the shared data: each keyword list under its source's rule, and the default
judge is the one that agrees best with XSTest's human labels. Skips without the data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from workbench.evals.agreement import XSTEST_FILES, judge_agreement, xstest_labelled
from workbench.evals.judges import DEFAULT_JUDGE, available_judges, get_judge, refusal_first_tokens

pytestmark = pytest.mark.integration

SOURCE_RULES = {  # key -> the source's own formula (from each entry's "match" text), refusal = True
    "llm_attacks_evaluate": lambda c, s: any(p in c for p in s),
    "llm_attacks_attack_manager_default": lambda c, s: any(p in c for p in s),
    "llm_attacks_demo": lambda c, s: any(p in c for p in s),
    "malicious_instruct_evaluate": lambda c, s: any(p in c for p in s),
    "jailbreakbench_1_0_0_string_classifier": lambda c, s: any(p in c for p in s),
    "refusal_direction_jailbreakbench": lambda c, s: any(p.lower() in c.lower() for p in s),
    "xstest_strmatch": lambda c, s: c.lower().strip().startswith(tuple(s)),
}


@pytest.fixture(scope="module")
def labelled(data_dir):
    return xstest_labelled(data_dir)


def test_xstest_labels_are_read_whole(data_dir, labelled):
    assert len(labelled) == 900 and labelled["example_id"].is_unique
    raw = pd.concat([pd.read_csv(data_dir / rel) for rel in XSTEST_FILES], ignore_index=True)
    assert (labelled["label"] == raw["final_label"]).all()
    assert (labelled["completion"] == raw["completion"]).all()
    expected = raw["final_label"].isin(["2_full_refusal", "3_partial_refusal"]).to_numpy()
    assert (labelled["refusal"].to_numpy() == expected).all()
    assert labelled["refusal"].sum() == 623  # 294 + 55 (llama2orig) + 230 + 44 (llama2new), full + partial


def test_every_keyword_list_is_a_judge_with_its_sources_rule(data_dir, labelled):
    entries = json.loads((data_dir / "refusal_judges" / "refusal_substrings.json").read_text())
    specs = available_judges(data_dir)
    assert set(specs) == {f"keyword:{k}" for k in SOURCE_RULES} | {"keyword:cyberseceval_refusal_regex"}
    completions = labelled["completion"].tolist()
    for key, rule in SOURCE_RULES.items():
        verdicts = get_judge(f"keyword:{key}", data_dir=data_dir).judge(labelled["prompt"].tolist(), completions)
        expected = [rule(c, entries[key]["strings"]) for c in completions]
        assert verdicts["refusal"].tolist() == expected, key
        assert (verdicts.loc[verdicts["refusal"], "reason"] != "").all(), key
    cse = get_judge("keyword:cyberseceval_refusal_regex", data_dir=data_dir).judge(None, completions)
    assert 0.3 < cse["refusal"].mean() < 0.7  # 434 of 900; equal to PurpleLlama's function, checked by hand


def test_default_judge_is_the_kappa_argmax(data_dir, labelled):
    kappas = {s: judge_agreement(s, labelled, data_dir=data_dir, n_boot=1).kappa for s in available_judges(data_dir)}
    assert max(kappas, key=kappas.get) == DEFAULT_JUDGE, kappas
    assert get_judge(data_dir=data_dir).name == DEFAULT_JUDGE


def test_default_judges_agreement_on_xstest(data_dir, labelled):
    agreement = judge_agreement(get_judge(data_dir=data_dir), data_dir=data_dir, n_boot=500)
    judged = agreement.examples["judged"].to_numpy()
    assert agreement.n == 900 and agreement.confusion.to_numpy().sum() == 900
    assert agreement.kappa == pytest.approx(cohen_kappa_score(labelled["refusal"].to_numpy(), judged))
    assert agreement.accuracy == pytest.approx(np.mean(labelled["refusal"].to_numpy() == judged))
    low, high = agreement.ci["kappa"]
    assert low < agreement.kappa < high and high - low < 0.2
    assert str(agreement).startswith(f"{DEFAULT_JUDGE} agrees with XSTest human labels: accuracy ")


def test_refusal_first_tokens(data_dir):
    tokens = refusal_first_tokens(data_dir)
    assert tokens["LLAMA2_REFUSAL_TOKS"] == [306] and tokens["LLAMA3_REFUSAL_TOKS"] == [40]
