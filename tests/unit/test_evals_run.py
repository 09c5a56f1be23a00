"""run_eval / run_suite end to end on a tiny model and small data folders in the published formats."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.evals import DataError, EvalResult, MissingDataError, SuiteResult, run_eval, run_suite
from workbench.evals.suites import list_groups, load_group, load_suite

sys.path.insert(0, str(Path(__file__).parent))
from test_evals_loglik import direct_hf  # noqa: E402

PAIRS = [("the cat sat on a mat", "the dog sat on a mat", "gender"),
         ("the dog ran to the house", "the cat ran to the house", "age"),
         ("paris is the capital of france", "rome is the capital of france", "gender"),
         ("the red house", "the blue house", "age"),
         ("it was a green mat", "it was a red mat", "gender")]


@pytest.fixture()
def data_dir(tmp_path):
    root = tmp_path / "data"
    (root / "crows_pairs").mkdir(parents=True)
    rows = [f'{i},{m},{l},stereo,{b},x,a{i},y' for i, (m, l, b) in enumerate(PAIRS)]
    header = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators"
    (root / "crows_pairs" / "crows_pairs_anonymized.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "truthfulqa" / "v0").mkdir(parents=True)
    qa = [{"question": "what is the capital of france ?",
           "mc1_targets": {"paris is the capital of france .": 1, "rome is .": 0, "berlin is .": 0},
           "mc2_targets": {"paris .": 1, "it is paris .": 1, "rome .": 0, "berlin .": 0}},
          {"question": "what is red ?", "mc1_targets": {"a red mat": 1, "a cat": 0},
           "mc2_targets": {"a red mat": 1, "a blue cat": 0}}]
    (root / "truthfulqa" / "v0" / "mc_task.json").write_text(json.dumps(qa))
    return root


def test_crows_pairs_result_against_direct_forward(tiny_model, data_dir, tmp_path):
    res = run_eval(tiny_model, "crows_pairs", data_dir=data_dir, progress=False)
    lls = [(direct_hf(tiny_model, "", m)[0], direct_hf(tiny_model, "", l)[0]) for m, l, _ in PAIRS]
    want = np.mean([a > b for a, b in lls])
    assert res.metric("pct_stereotype") == pytest.approx(want)
    assert res.metric("likelihood_diff") == pytest.approx(np.mean([abs(a - b) for a, b in lls]), abs=1e-4)
    gender = [i for i, p in enumerate(PAIRS) if p[2] == "gender"]
    assert res.metric("pct_stereotype", "gender") == pytest.approx(np.mean([lls[i][0] > lls[i][1] for i in gender]))
    s = res.samples.set_index("example_id")
    assert list(s.index) == [f"crows_pairs:{i:04d}" for i in range(5)]
    assert s.loc["crows_pairs:0002", "loglik"][0] == pytest.approx(lls[2][0], abs=1e-4)
    assert set(res.metrics.columns) == {"suite", "metric", "category", "value", "ci_low", "ci_high", "n"}
    head = res.headline().set_index("metric")
    assert (head["n"] == 5).all() and (head["ci_low"] <= head["value"]).all() and (head["value"] <= head["ci_high"]).all()

    m = res.manifest
    assert m["suite"]["name"] == "crows_pairs" and m["suite"]["version"] == "1"
    assert m["model"]["fingerprint"] == tiny_model.source.fingerprint and m["model"]["format"] == "hf"
    f = m["data"]["files"][0]
    assert f["path"] == "crows_pairs/crows_pairs_anonymized.csv" and len(f["sha256"]) == 64
    assert m["params"]["seed"] == 0 and m["params"]["limit"] is None and m["params"]["errors"] == "raise"
    assert m["interventions"] == [] and "torch" in m["versions"] and m["wall_time_s"] > 0
    assert m["n_examples"] == 5 and m["skipped"] == {}

    folder = res.save(tmp_path / "run")
    again = EvalResult.load(folder)
    pd.testing.assert_frame_equal(again.metrics, res.metrics)
    assert again.samples["loglik"].map(list).tolist() == res.samples["loglik"].map(list).tolist()
    assert again.manifest["suite"] == res.manifest["suite"]


def test_truthfulqa_mc1_mc2(tiny_model, data_dir):
    res = run_eval(tiny_model, "truthfulqa_mc", data_dir=data_dir, progress=False)
    spec = load_suite("truthfulqa_mc")
    primer = spec.prompt["context"]
    mc1, mc2 = [], []
    for q in json.loads((data_dir / "truthfulqa/v0/mc_task.json").read_text()):
        ctx = primer.format(question=q["question"])
        l1 = [direct_hf(tiny_model, ctx, " " + a)[0] for a in q["mc1_targets"]]
        mc1.append(float(np.argmax(l1) == 0))
        l2 = np.array([direct_hf(tiny_model, ctx, " " + a)[0] for a in q["mc2_targets"]])
        p = np.exp(l2)
        true = np.array(list(q["mc2_targets"].values())) == 1
        mc2.append(p[true].sum() / p.sum())
    assert res.metric("mc1") == pytest.approx(np.mean(mc1))
    assert res.metric("mc2") == pytest.approx(np.mean(mc2), abs=1e-4)
    assert list(res.samples["mc2_choices"][0]) == ["paris .", "it is paris .", "rome .", "berlin ."]


def test_limit_is_a_seeded_subset_and_errors_are_counted(tiny_model, data_dir):
    a = run_eval(tiny_model, "crows_pairs", data_dir=data_dir, limit=3, seed=1, progress=False)
    b = run_eval(tiny_model, "crows_pairs", data_dir=data_dir, limit=3, seed=1, progress=False)
    assert len(a.samples) == 3 and a.samples.example_id.tolist() == b.samples.example_id.tolist()
    assert a.samples.example_id.is_monotonic_increasing
    path = data_dir / "crows_pairs" / "crows_pairs_anonymized.csv"
    path.write_text(path.read_text() + "9,only,three\n")
    with pytest.raises(DataError, match=r"crows_pairs_anonymized\.csv:7: 3 columns"):
        run_eval(tiny_model, "crows_pairs", data_dir=data_dir, progress=False)
    res = run_eval(tiny_model, "crows_pairs", data_dir=data_dir, errors="skip", progress=False)
    assert res.manifest["n_skipped"] == 1 and res.manifest["skipped"][str(path)]["lines"] == [7]
    assert len(res.samples) == 5


def test_missing_data_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(MissingDataError, match="bbq/\\*.jsonl"):
        run_eval(tiny_model, "bbq", data_dir=tmp_path, progress=False)


def test_builtin_suites_need_no_data(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "nothing-here"))
    res = run_eval(tiny_model, "true_false_facts", progress=False)
    assert len(res.samples) == 40 and res.samples.example_id.is_unique
    assert res.manifest["data"]["dir"] is None and res.manifest["data"]["files"][0]["path"] == "true_false_facts.yaml"
    acc = res.samples.correct.mean()
    assert res.metric("acc") == pytest.approx(acc)
    occ = run_eval(tiny_model, "occupation_pronoun", progress=False)
    s = occ.samples
    assert s.example_id.str.startswith("occupation_pronoun:was_a.").sum() == 32
    assert occ.metric("male_share") == pytest.approx((s.ll_first > s.ll_second).mean())
    assert occ.metric("mean_log_ratio") == pytest.approx((s.ll_first - s.ll_second).mean())


def test_a_suite_variant_is_one_yaml_file(tiny_model, data_dir, tmp_path):
    variant = tmp_path / "crows_prompted.yaml"
    variant.write_text(load_suite("crows_pairs").path.read_text()
                       .replace("name: crows_pairs", "name: crows_prompted")
                       .replace('context: ""', 'context: "the cat :"').replace('delimiter: ""', 'delimiter: " "'))
    res = run_eval(tiny_model, str(variant), data_dir=data_dir, progress=False)
    assert res.manifest["suite"]["name"] == "crows_prompted"
    assert res.samples.context[0] == "the cat :"
    want = direct_hf(tiny_model, "the cat :", " " + PAIRS[0][0])[0]
    assert res.samples.loglik[0][0] == pytest.approx(want, abs=1e-4)


def test_groups_are_defined():
    assert {"safety", "quick"} <= set(list_groups())
    safety = [e.suite for e in load_group("safety")]
    assert safety == ["crows_pairs", "bbq", "winogender", "winobias", "truthfulqa_mc", "toxigen", "toxicity"]
    quick = load_group("quick")
    assert [e.suite for e in quick if not e.optional] == ["occupation_pronoun", "true_false_facts"]
    assert all(load_suite(e.suite).builtin for e in quick if not e.optional)


def test_run_suite_saves_skips_and_reuses(tiny_model, data_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "workbench.evals.toxicity", None)  # plug-in not installed
    out = tmp_path / "runs" / "quick"
    seen = []
    suite = run_suite(tiny_model, "quick", data_dir=data_dir, out=out, progress=False,
                         on_result=lambda name, res, reused: seen.append((name, reused)))
    assert list(suite.results) == ["occupation_pronoun", "true_false_facts", "crows_pairs", "truthfulqa_mc"]
    assert {"bbq", "winogender", "winobias", "toxigen", "toxicity"} == set(suite.skipped)
    assert "toxicity plug-in" in suite.skipped["toxicity"] and "bbq/*.jsonl" in suite.skipped["bbq"]
    assert suite["crows_pairs"].manifest["params"]["limit"] == 40
    index = json.loads((out / "suite.json").read_text())
    assert index["suites"] == list(suite.results) and index["group"] == "quick"
    assert set(suite.metrics.suite) == set(suite.results)

    loaded = SuiteResult.load(out)
    pd.testing.assert_frame_equal(loaded.metrics, suite.metrics)
    seen.clear()
    run_suite(tiny_model, "quick", data_dir=data_dir, out=out, progress=False,
                 on_result=lambda name, res, reused: seen.append((name, reused)))
    assert all(reused for _, reused in seen) and len(seen) == 4
    # different parameters: run again rather than reuse
    seen.clear()
    run_suite(tiny_model, "crows_pairs", data_dir=data_dir, out=out, seed=5, progress=False,
                 on_result=lambda name, res, reused: seen.append((name, reused)))
    assert seen == [("crows_pairs", False)]
    assert EvalResult.load(out / "crows_pairs").manifest["params"]["seed"] == 5
    # a single-suite command into the same folder keeps the other suites listed
    assert set(SuiteResult.load(out).results) == {"occupation_pronoun", "true_false_facts", "crows_pairs",
                                                  "truthfulqa_mc"}


def test_unknown_suite_lists_known_ones(tiny_model):
    with pytest.raises(DataError, match="unknown suite 'nope'.*crows_pairs"):
        run_eval(tiny_model, "nope", progress=False)


def test_cli_eval_writes_results_and_resumes(hf_folder, data_dir, tmp_path, capsys):
    from workbench.cli import main

    out = tmp_path / "runs" / "cli"
    argv = ["eval", "--model", str(hf_folder[0]), "--suite", "crows_pairs", "--data-dir", str(data_dir),
            "--out", str(out), "--limit", "4", "--seed", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "pct_stereotype" in text and "95% CI" in text and "done crows_pairs: 4 examples" in text
    res = EvalResult.load(out / "crows_pairs")
    assert res.manifest["params"]["limit"] == 4 and res.manifest["params"]["seed"] == 2
    assert main(argv) == 0
    assert "reused from --out" in capsys.readouterr().out
    assert main(["eval", "--suite", "no_such_suite"]) == 1
    assert "unknown suite 'no_such_suite'" in capsys.readouterr().out


def test_suite_files_ship_in_the_wheel():
    import tomllib

    cfg = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "workbench.evals" in cfg["packages"] and "workbench.eval_data" in cfg["packages"]
    assert cfg["package-dir"]["workbench.eval_data"] == "evals"
    assert "*.yaml" in cfg["package-data"]["workbench.eval_data"]
    assert (Path(__file__).parents[2] / "evals" / "groups.yaml").is_file()


def test_run_suite_with_a_suite_file_saves_under_its_name(tiny_model, tmp_path):
    text = (Path(__file__).parents[2] / "evals" / "true_false_facts.yaml").read_text()
    path = tmp_path / "elsewhere" / "custom.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("name: true_false_facts", "name: my_facts", 1))
    out = tmp_path / "runs" / "custom"
    suite = run_suite(tiny_model, str(path), out=out, progress=False)
    assert list(suite.results) == ["my_facts"]
    assert EvalResult.load(out / "my_facts").manifest["suite"]["name"] == "my_facts"
    assert list(SuiteResult.load(out).results) == ["my_facts"]


def test_suites_without_data_are_one_line_each_and_one_hint(tiny_model, tmp_path):
    """A first run with no data directory: a short line per missing suite, one line on getting data."""
    from rich.console import Console

    from workbench.cli.eval import print_skipped
    from workbench.evals.data import NO_DATA, data_hint
    from workbench.viz.report import write_report

    empty = tmp_path / "no-data"
    suite = run_suite(tiny_model, "quick", data_dir=empty, out=tmp_path / "quick", progress=False)
    data_suites = {"crows_pairs", "bbq", "winogender", "winobias", "truthfulqa_mc", "toxigen", "toxicity"}
    assert set(suite.skipped) == data_suites
    for name, why in suite.skipped.items():
        assert why.startswith(NO_DATA) and str(empty) in why and "\n" not in why, (name, why)
    assert "winobias/*_stereotyped_type*.txt.test (+2 more) not found" in suite.skipped["winobias"]
    console = Console(record=True, width=400)
    print_skipped(suite.skipped, console)
    lines = console.export_text().strip().splitlines()
    assert len(lines) == len(data_suites) + 1
    assert lines[-1] == data_hint(suite.skipped) and "workbench data pull" in lines[-1]
    html = write_report(tmp_path / "quick", tmp_path / "report.html").read_text()
    assert html.count("<li><b>") == len(data_suites) and "workbench data pull" in html
    assert data_hint({"toxicity": "the toxicity plug-in (x) is not installed"}) is None
