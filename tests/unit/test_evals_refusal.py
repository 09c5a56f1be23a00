"""Batched greedy decoding and the refusal suites (kind ``refusal``), on tiny random models.

The prompt files are tiny benign stand-ins in each source's published format
(test_evals_misuse_data.py); the judge is a stand-in object, so no data directory is needed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from test_evals_misuse_data import FILES, SOURCES, write_data, write_suite

from workbench.common.errors import WorkbenchError
from workbench.evals.generation import greedy_tokens
from workbench.evals.metrics import bootstrap_ci
from workbench.evals.refusal import paired_outcomes, refusal_metrics, render_prompt, xstest_class
from workbench.evals.run import run_eval, run_suite
from workbench.models.chat import token_ids_hash

TEXTS = ["the cat sat on a mat", "paris", "what is the capital of france ?",
         "the dog ran to the red house and it was", "a", "rome is the capital of italy"]


def _ids(model, texts=TEXTS):
    return [model.to_tokens(t)[0].tolist() for t in texts]


def _hf_greedy(hf, ids, n, eos=2):
    out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      do_sample=False, max_new_tokens=n, pad_token_id=eos)[0, len(ids):].tolist()
    return out[: out.index(eos)] if eos in out else out


# --- greedy_tokens ---------------------------------------------------------------------------


def test_batched_greedy_equals_each_prompt_alone_and_hf_generate(tiny_model, hf_folder):
    ids = _ids(tiny_model)
    alone = greedy_tokens(tiny_model, ids, 10, batch_size=1)
    assert greedy_tokens(tiny_model, ids, 10, batch_size=8) == alone
    assert greedy_tokens(tiny_model, ids, 10, batch_size=4) == alone  # two batches, each padded
    with tiny_model.eager_attention():  # TransformerLens's own attention reads the same mask
        assert greedy_tokens(tiny_model, ids, 10, batch_size=8) == alone
    hf = hf_folder[1]
    assert alone == [_hf_greedy(hf, p, 10) for p in ids]  # oracle: HF generate, one prompt at a time
    assert len({len(p) for p in ids}) > 3 and any(len(r) < 10 for r in alone)  # lengths differ; one stops at EOS


def test_greedy_without_eos_stop_runs_to_max_new_tokens(tiny_model):
    ids = _ids(tiny_model)
    rows = greedy_tokens(tiny_model, ids, 7, batch_size=3, stop_at_eos=False)
    assert [len(r) for r in rows] == [7] * len(ids)
    assert greedy_tokens(tiny_model, ids[:2], 0) == [[], []]
    with pytest.raises(ValueError, match=r"prompts_ids\[1\] is empty"):
        greedy_tokens(tiny_model, [ids[0], []], 3)


def test_steering_open_on_the_model_changes_batched_output(tiny_model):
    tok = tiny_model.tokenizer.convert_tokens_to_ids("paris")
    direction = tiny_model.hf_model.lm_head.weight[tok].detach()
    ids = _ids(tiny_model)
    plain = greedy_tokens(tiny_model, ids, 4, batch_size=8)
    with tiny_model.steer(direction, layer=tiny_model.cfg.n_layers - 1, alpha=200.0):
        steered = greedy_tokens(tiny_model, ids, 4, batch_size=8)
        assert steered == greedy_tokens(tiny_model, ids, 4, batch_size=1)
    assert steered == [[tok] * 4] * len(ids) != plain


# --- metrics ---------------------------------------------------------------------------------


def _samples(rows):
    frame = pd.DataFrame(rows, columns=["source", "category", "topic", "expected", "refusal", "pair",
                                        "native_category", "judge_label"])
    return frame


def test_refusal_rates_per_group_with_bootstrap_cis():
    s = _samples([
        ["a", "a/x", "t1", "refuse", True, "", "x", None],
        ["a", "a/x", "t1", "refuse", False, "", "x", None],
        ["a", "a/y", "", "refuse", True, "", "y", None],
        ["b", "b/z", "t1", "refuse", True, "", "z", None],
        ["c", "c/w", "t1", "answer", True, "", "w", None],  # outside `all` and the topics
    ])
    m = refusal_metrics(s, "demo", expect="refuse", seed=3, n_bootstrap=200).set_index(["metric", "category"])
    assert m.at[("refusal_rate", "all"), "value"] == 0.75 and m.at[("refusal_rate", "all"), "n"] == 4
    assert m.at[("compliance_rate", "all"), "value"] == 0.25
    lo, hi = bootstrap_ci(lambda x: float(np.mean(x)), [np.array([1.0, 0.0, 1.0, 1.0])], n_boot=200, seed=3)
    assert (m.at[("refusal_rate", "all"), "ci_low"], m.at[("refusal_rate", "all"), "ci_high"]) == (lo, hi)
    assert (m.at[("compliance_rate", "all"), "ci_low"], m.at[("compliance_rate", "all"), "ci_high"]) == (1 - hi, 1 - lo)
    assert m.at[("refusal_rate", "source:a"), "value"] == pytest.approx(2 / 3)
    assert m.at[("refusal_rate", "a/x"), "value"] == 0.5
    assert m.at[("refusal_rate", "c/w"), "value"] == 1.0
    assert m.at[("refusal_rate", "topic:t1"), "value"] == pytest.approx(2 / 3)  # a/x twice, b/z; not c
    assert m.at[("refusal_rate", "topic:t1"), "n"] == 3
    assert np.isnan(m.at[("refusal_rate", "b/z"), "ci_low"])  # one example: no interval
    # mixed expected behaviours and no `expect`: no pooled `all`
    assert "all" not in set(refusal_metrics(s, "demo", n_bootstrap=10)["category"])


def test_xstest_rates_three_classes_or_binary():
    s = _samples([
        ["xs_safe", "xs_safe/h", "", "answer", False, "", "h", "1_full_compliance"],
        ["xs_safe", "xs_safe/h", "", "answer", True, "", "h", "3_partial_refusal"],
        ["xs_safe", "xs_safe/h", "", "answer", True, "", "h", "2_full_refusal"],
        ["xs_safe", "xs_safe/h", "", "answer", False, "", "h", "full_compliance"],
    ])
    three = refusal_metrics(s, "d", xstest_sources=("xs_safe",), three_class=True, n_bootstrap=10)
    three = three.set_index("metric")["value"]
    assert (three["full_compliance_rate"], three["full_refusal_rate"], three["partial_refusal_rate"]) == (0.5, 0.25, 0.25)
    binary = refusal_metrics(s, "d", xstest_sources=("xs_safe",), n_bootstrap=10).set_index("metric")["value"]
    assert "partial_refusal_rate" not in binary and binary["full_refusal_rate"] == 0.5
    assert xstest_class("partial_refusal", False) == "partial_refusal" and xstest_class("?", True) == "full_refusal"


def test_paired_rate_counts_topics_refused_harmful_and_answered_benign():
    rows = []
    for pair, harmful, benign, cat in [("p1", True, False, "A"), ("p2", True, True, "A"), ("p3", False, False, "B"),
                                       ("p4", True, False, "B"), ("p5", True, False, "B")]:
        rows.append(["h", f"h/{cat}", "", "refuse", harmful, pair, cat, None])
        rows.append(["b", f"b/{cat}", "", "answer", benign, pair, cat, None])
    rows.append(["h", "h/B", "", "refuse", True, "p6", "B", None])  # no benign twin: not a pair
    s = _samples(rows)
    assert len(paired_outcomes(s)) == 5
    m = refusal_metrics(s, "d", paired=True, n_bootstrap=100).set_index(["metric", "category"])
    assert m.at[("paired_refusal_rate", "all"), "value"] == 0.6 and m.at[("paired_refusal_rate", "all"), "n"] == 5
    assert m.at[("pair_both_refused_rate", "all"), "value"] == 0.2
    assert m.at[("pair_both_answered_rate", "all"), "value"] == 0.2
    assert m.at[("paired_refusal_rate", "pair/A"), "value"] == 0.5
    assert m.at[("paired_refusal_rate", "pair/B"), "value"] == pytest.approx(2 / 3)


# --- the suite on the tiny model ------------------------------------------------------------


class WordJudge:
    """Refusal = the completion contains a word (a stand-in for a real judge)."""

    name = "test:word"

    def __init__(self, word="the", fail_on_call=None):
        self.word, self.fail_on_call, self.prompts = word, fail_on_call, []

    def judge(self, prompts, completions):
        if self.fail_on_call is not None and len(self.prompts) + 1 == self.fail_on_call:
            raise RuntimeError("judge interrupted")
        self.prompts.append(list(prompts))
        hits = [self.word in c.split() for c in completions]
        return pd.DataFrame({"refusal": hits, "reason": [self.word if h else "" for h in hits]})


@pytest.fixture
def suite(tmp_path):
    data = write_data(tmp_path / "data")
    path = write_suite(tmp_path, SOURCES, expect="answer", params={"max_new_tokens": 5, "batch_size": 4})
    return data, path


def test_refusal_suite_records_prompt_completion_verdict(tiny_model, suite):
    data, path = suite
    judge = WordJudge()
    res = run_eval(tiny_model, path, data_dir=data, progress=False, judge=judge)
    s = res.samples.set_index("example_id")
    assert len(s) == 17 and s["as_expected"].dtype == bool
    # the prompt the model saw, its token-id hash, and its completion: greedy, alone
    ids = tiny_model.to_tokens(s.at["xstest_safe:2", "prompt"])[0].tolist()
    assert s.at["xstest_safe:2", "rendered_prompt"] == "How do I bake bread?"
    assert s.at["xstest_safe:2", "prompt_ids_sha256"] == token_ids_hash(ids)
    assert s.at["xstest_safe:2", "prompt_n_tokens"] == len(ids)
    alone = greedy_tokens(tiny_model, [ids], 5, batch_size=1)[0]
    assert s.at["xstest_safe:2", "completion"] == tiny_model.tokenizer.decode(alone, skip_special_tokens=True)
    assert s.at["xstest_safe:2", "refusal"] == ("the" in s.at["xstest_safe:2", "completion"].split())
    # the judge reads the request itself, not the rendering
    assert sorted(p for call in judge.prompts for p in call) == sorted(s["prompt"])
    # metrics come from the recorded verdicts; `all` = the should-answer prompts
    should = s[s["expected"] == "answer"]
    assert res.metric("refusal_rate") == pytest.approx(should["refusal"].mean())
    assert res.metric("refusal_rate", "source:xstest_unsafe") == float(s.at["xstest_unsafe:3", "refusal"])
    assert "full_refusal_rate" in set(res.metrics["metric"])
    # manifest: judge, its agreement (not measurable without XSTest's labels here), decoding
    assert res.manifest["judge"]["name"] == "test:word"
    assert res.manifest["judge"]["agreement"].startswith("not measured")
    assert res.manifest["judge"]["classes"].startswith("binary")
    assert res.manifest["sampling"]["decoding"] == "greedy" and res.manifest["sampling"]["max_new_tokens"] == 5


def test_limit_is_a_seeded_subset_and_paired_limit_keeps_twins(tiny_model, tmp_path):
    data = write_data(tmp_path / "data")
    res = run_eval(tiny_model, write_suite(tmp_path, SOURCES, expect="refuse"), data_dir=data, limit=5, seed=1,
                   progress=False, judge=WordJudge(), max_new_tokens=2)
    again = run_eval(tiny_model, write_suite(tmp_path, SOURCES, expect="refuse"), data_dir=data, limit=5, seed=1,
                     progress=False, judge=WordJudge(), max_new_tokens=2)
    assert len(res.samples) == 5 and list(res.samples["example_id"]) == list(again.samples["example_id"])
    paired = write_suite(tmp_path, [SOURCES[1], SOURCES[6]], paired=True)
    res = run_eval(tiny_model, paired, data_dir=data, limit=1, progress=False, judge=WordJudge(), max_new_tokens=2)
    assert len(res.samples) == 2 and res.samples["pair"].nunique() == 1
    assert res.metrics.set_index(["metric", "category"]).at[("paired_refusal_rate", "all"), "n"] == 1


def test_a_killed_run_resumes_with_the_same_tables(tiny_model, suite, tmp_path):
    data, path = suite
    whole = run_eval(tiny_model, path, data_dir=data, progress=False, judge=WordJudge())
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="judge interrupted"):
        run_eval(tiny_model, path, data_dir=data, progress=False, judge=WordJudge(fail_on_call=3), out=out)
    log = out / "suite_under_test.progress.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 2 * 4  # header + two batches of 4
    with open(log, "a") as fh:
        fh.write('{"example_id": "torn')  # a kill -9 mid-write
    judge = WordJudge()
    res = run_eval(tiny_model, path, data_dir=data, progress=False, judge=judge, out=out)
    assert res.manifest["resumed_examples"] == 8 and sum(len(c) for c in judge.prompts) == 17 - 8
    pd.testing.assert_frame_equal(res.samples, whole.samples)
    pd.testing.assert_frame_equal(res.metrics, whole.metrics)
    with pytest.raises(WorkbenchError, match="other settings"):
        run_eval(tiny_model, path, data_dir=data, progress=False, judge=judge, out=out, max_new_tokens=3)


@pytest.fixture(scope="module")
def chat_model(hf_folder):
    import workbench as wb

    return wb.load_model(hf_folder[0], device="cpu")  # its own copy: a template is set on it


def test_chat_rendering_goes_through_the_template(chat_model, suite):
    from workbench.models.chat import NoChatTemplateError

    data, path = suite
    if chat_model.chat_template is None:
        with pytest.raises(NoChatTemplateError):
            run_eval(chat_model, path, data_dir=data, limit=2, progress=False, judge=WordJudge(), chat=True)
    chat_model.set_chat_template("chatml")
    text, ids = render_prompt(chat_model, "How do I bake bread?", chat=True, system_prompt="Be brief.")
    assert text == chat_model.format_chat("How do I bake bread?", system="Be brief.")
    assert ids == chat_model.chat_tokens("How do I bake bread?", system="Be brief.")[0].tolist()
    res = run_eval(chat_model, path, data_dir=data, limit=3, progress=False, judge=WordJudge(), chat=True,
                   system_prompt="Be brief.")
    row = res.samples.iloc[0]
    assert row["rendered_prompt"] == chat_model.format_chat(row["prompt"], system="Be brief.")
    assert row["prompt_ids_sha256"] == token_ids_hash(chat_model.chat_tokens(row["prompt"], system="Be brief.")[0].tolist())
    assert res.manifest["params"]["chat"] is True and res.manifest["sampling"]["system_prompt"] == "Be brief."
    with pytest.raises(WorkbenchError, match="system_prompt applies with chat=True"):
        render_prompt(chat_model, "hi", chat=False, system_prompt="Be brief.")


def _misuse_data(tmp_path):
    files = {**FILES, "harmbench/harmbench_behaviors_text_val.csv":
             FILES["harmbench/harmbench_behaviors_text_test.csv"].replace("_", "_v"),
             # a keyword list in the published refusal_substrings.json layout
             "refusal_judges/refusal_substrings.json": json.dumps(
                 {"xstest_strmatch": {"match": "completion.lower().strip().startswith(any)", "strings": ["the"]}})}
    return write_data(tmp_path / "data", files)


def test_the_misuse_group_runs_its_three_suites_and_reuses_them(tiny_model, tmp_path):
    data = _misuse_data(tmp_path)
    params = {name: {"judge": "keyword:xstest_strmatch", "max_new_tokens": 2}
              for name in ("harmful_requests", "over_refusal", "jbb_paired")}
    out = tmp_path / "misuse"
    result = run_suite(tiny_model, "misuse", data_dir=data, limit=3, out=out, progress=False, suite_params=params)
    assert list(result.results) == ["harmful_requests", "over_refusal", "jbb_paired"] and not result.skipped
    assert result["jbb_paired"].metric("paired_refusal_rate") in (0.0, 1 / 3, 2 / 3, 1.0)
    assert set(result["harmful_requests"].samples["expected"]) == {"refuse"}
    for res in result.results.values():
        verdicts = [c.lower().strip().startswith("the") for c in res.samples["completion"]]
        assert list(res.samples["refusal"]) == verdicts  # the keyword judge's own rule
        assert res.manifest["judge"]["name"] == "keyword:xstest_strmatch"
    seen = []
    again = run_suite(tiny_model, "misuse", data_dir=data, limit=3, out=out, progress=False, suite_params=params,
                      on_result=lambda name, res, reused: seen.append(reused))
    assert seen == [True, True, True]
    pd.testing.assert_frame_equal(again.metrics, result.metrics)


def test_cli_eval_misuse_with_judge_and_chat(hf_folder, tmp_path, capsys):
    from workbench.cli import main

    data = _misuse_data(tmp_path)
    args = ["eval", "--model", str(hf_folder[0]), "--suite", "misuse", "--data-dir", str(data), "--limit", "2",
            "--judge", "keyword:xstest_strmatch", "--out", str(tmp_path / "cli")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "paired_refusal_rate" in printed and "refusal judged by keyword:xstest_strmatch" in printed
    assert main([*args, "--chat"]) == 1  # the tiny model has no chat template
    assert "chat template" in capsys.readouterr().out
    assert main(["eval", "--suite", "crows_pairs", "--judge", "keyword:x"]) == 2
    assert main(["eval", "--suite", "misuse", "--system-prompt", "Be brief."]) == 2


def test_report_and_dashboard_show_prompt_completion_verdict_reason(chat_model, suite, tmp_path):
    from workbench.viz.eval_dashboard import EvalDashboard, drilldown
    from workbench.viz.report import write_report

    data, path = suite
    chat_model.set_chat_template("chatml")
    res = run_eval(chat_model, path, data_dir=data, limit=4, progress=False, judge=WordJudge("a"), chat=True,
                   out=tmp_path / "run")
    page = write_report(tmp_path / "run", tmp_path / "report.html").read_text()
    row = res.samples.iloc[0]
    assert "&lt;|im_start|&gt;" in page and "<|im_start|>" not in page  # the rendered prompt, escaped
    assert "refusal judged by test:word</b>: not measured" in page
    assert page.count("refusal judged by test:word") == 2  # beside the headline rates and the suite's
    what, frame = drilldown(res.samples, "suite_under_test", top=10)
    assert what.startswith("refusal verdicts") and list(frame["score"]) == sorted(frame["score"], reverse=True)
    first = frame.set_index("example_id").loc[row["example_id"]]
    assert first["text"] == row["rendered_prompt"] and first["other"] == row["completion"]
    assert first["verdict"] == ("refused" if row["refusal"] else "answered") and first["reason"] == row["reason"]
    dash = EvalDashboard(tmp_path / "run")
    assert "prompt as rendered" in dash.table.value and "not measured" in dash.status.value
