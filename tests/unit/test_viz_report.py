"""The self-contained HTML report (a view) over saved eval folders, read by the one reader."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.cli import main
from workbench.common.errors import WorkbenchError
from workbench.evals import EvalResult, SuiteResult, load_run, run_suite
from workbench.viz.report import report_html, write_report

EVIL_SCRIPT = "<script>alert('pwned')</script>"
EVIL_IMG = '<img src=x onerror="alert(1)">'
COLUMNS = ["suite", "metric", "category", "value", "ci_low", "ci_high", "n"]


def _manifest(suite, **extra):
    return {"suite": {"name": suite, "version": "1", "file": f"evals/{suite}.yaml"},
            "model": {"name": "tiny-llama", "format": "hf", "path": "/m", "fingerprint": "f" * 64,
                      "dtype": "float32", "device": "cpu"},
            "data": {"dir": "/data", "files": [{"path": f"{suite}/data.csv", "sha256": "ab" * 32, "bytes": 1234}]},
            "params": {"limit": None, "seed": 0, "errors": "skip", "n_bootstrap": 1000},
            "skipped": {"/data/x.csv": {"rows": 2, "lines": [5, 9]}}, "n_examples": 3,
            "scorer": None, "sampling": None,
            "interventions": [{"kind": "steer", "layer": 12, "alpha": -4.0}],
            "versions": {"workbench": "0.1.0", "torch": "2.13"},
            "started_at": "2026-11-28T08:00:00Z", "finished_at": "2026-11-28T08:01:00Z", "wall_time_s": 60.0,
            "format_version": 1, **extra}


def _save(folder: Path, metrics, samples, manifest):
    folder.mkdir(parents=True)
    pd.DataFrame(metrics, columns=COLUMNS).to_parquet(folder / "metrics.parquet", index=False)
    pd.DataFrame(samples).to_parquet(folder / "samples.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def write_crows(folder: Path):
    metrics = [("crows_pairs", "pct_stereotype", "all", 0.6667, 0.3333, 1.0, 3),
               ("crows_pairs", "pct_stereotype", "race-color", 0.5, 0.0, 1.0, 2),
               ("crows_pairs", "pct_stereotype", EVIL_IMG, 1.0, float("nan"), float("nan"), 1),
               ("crows_pairs", "likelihood_diff", "all", 1.25, 0.5, 2.0, 3)]
    samples = {"example_id": ["crows_pairs:0", "crows_pairs:1", "crows_pairs:2"],
               "suite": ["crows_pairs"] * 3, "category": ["race-color", "race-color", EVIL_IMG],
               "context": ["", "", ""],
               "choices": [["Stereo A", "Anti A"], ["Stereo B", "Anti B"], [f"Stereo {EVIL_SCRIPT}", "Anti C"]],
               "loglik": [[-10.0, -12.5], [-9.0, -8.0], [-20.0, -21.0]],
               "n_tokens": [[3, 3], [3, 3], [4, 3]],
               "label": [0, 0, 0], "prediction": [0, 1, 0], "correct": [True, False, True]}
    _save(folder, metrics, samples, _manifest("crows_pairs"))


def write_toxicity(folder: Path):
    metrics = [("toxicity", "expected_max_toxicity", "all", 0.45, 0.2, 0.7, 2),
               ("toxicity", "expected_max_toxicity", "toxic", 0.8, float("nan"), float("nan"), 1),
               ("toxicity", "toxicity_probability", "all", 0.5, 0.0, 1.0, 2)]
    samples = {"example_id": ["rtp_toxic:0001", "rtp_nontoxic:0001"], "suite": ["toxicity"] * 2,
               "category": ["toxic", "nontoxic"], "group": ["", ""],
               "prompt": [f"Prompt with {EVIL_SCRIPT}", "A calm prompt"],
               "continuations": [["fine", f"worst {EVIL_IMG}"], ["ok", "nice"]],
               "scores": [[0.1, 0.8], [0.05, 0.1]], "max_score": [0.8, 0.1],
               "prompt_toxicity": [0.9, 0.1], "source": ["t.jsonl:1", "n.jsonl:1"]}
    scorer = {"name": "profanity-check", "scale_note": "own scale, not Perspective API's", "threshold": 0.5}
    sampling = {"k": 2, "top_p": 0.9, "max_new_tokens": 20, "temperature": 1.0, "seed": 0}
    _save(folder, metrics, samples, _manifest("toxicity", scorer=scorer, sampling=sampling))


def _assert_safe(text: str):
    assert EVIL_SCRIPT not in text and EVIL_IMG not in text
    assert "onerror=\"alert" not in text
    # no script (or anything else) is loaded from the network: plotly.js is inlined
    assert not re.search(r"<script[^>]*\bsrc\s*=", text)
    assert not re.search(r"<link[^>]*https?://", text)


def test_report_of_one_suite_is_self_contained_and_escaped(tmp_path):
    write_crows(tmp_path / "crows")
    out = write_report(tmp_path / "crows", tmp_path / "r" / "report.html")
    text = out.read_text()
    _assert_safe(text)
    assert text.count("Plotly.newPlot") >= 2 and "plotly.js v" in text  # inlined bundle, drawn charts
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in text  # shown, as characters
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "0.6667" in text and "[0.3333, 1.0000]" in text and "likelihood_diff" in text
    assert "f" * 64 in text and "ababab" in text and "&quot;layer&quot;: 12" in text  # manifest
    # most stereotyped pairs: examples 0 (margin 2.5) then 2 (1.0); 1 preferred the anti-stereotype
    section = text[text.index("Most stereotyped"):]
    assert section.index("crows_pairs:0") < section.index("crows_pairs:2")
    assert "crows_pairs:1" not in section.split("</table>")[0]
    assert "2.500" in section


def test_report_of_a_suite_group_names_the_scorer(tmp_path):
    run = tmp_path / "safety"
    write_crows(run / "crows_pairs")
    write_toxicity(run / "toxicity")
    (run / "bbq").mkdir()  # a suite that never finished: no manifest, not reported
    (run / "suite.json").write_text(json.dumps({"group": "safety", "suites": ["crows_pairs", "toxicity", "bbq"],
                                                "skipped": {"winobias": "data missing"}, "format_version": 1}))
    loaded = load_run(run)
    assert isinstance(loaded, SuiteResult) and loaded.group == "safety"
    assert list(loaded.results) == ["crows_pairs", "toxicity"] and loaded.skipped == {"winobias": "data missing"}
    text = report_html(run)
    assert report_html(loaded).count('<h2 id="') == text.count('<h2 id="')  # the same run, in memory
    _assert_safe(text)
    assert text.count("plotly.js v") == 1  # the bundle once, not once per figure
    assert "Toxicity scorer: profanity-check" in text and "not Perspective API" in text
    most_toxic = text[text.index("Most toxic continuations"):]
    assert most_toxic.index("rtp_toxic:0001") < most_toxic.index("rtp_nontoxic:0001")
    assert "worst &lt;img src=x" in most_toxic  # the worst continuation of the worst prompt
    assert "winobias" in text and "data missing" in text
    assert "0.4500" in text and "[0.2000, 0.7000]" in text


def test_report_cli_and_errors(tmp_path, capsys):
    write_toxicity(tmp_path / "tox")
    assert main(["report", str(tmp_path / "tox"), "-o", str(tmp_path / "tox.html")]) == 0
    _assert_safe((tmp_path / "tox.html").read_text())
    (tmp_path / "unfinished").mkdir()
    pd.DataFrame(columns=COLUMNS).to_parquet(tmp_path / "unfinished" / "metrics.parquet")
    with pytest.raises(WorkbenchError, match="did not finish"):
        report_html(tmp_path / "unfinished")
    with pytest.raises(WorkbenchError, match="no such run folder"):
        report_html(tmp_path / "missing")
    assert main(["report", str(tmp_path / "unfinished"), "-o", str(tmp_path / "u.html")]) == 1
    assert "did not finish" in capsys.readouterr().out
    assert not (tmp_path / "u.html").exists()


def test_report_of_a_real_quick_suite_run(tiny_model, tmp_path):
    """The folder run_suite writes (built-in suites, no data directory) reports as it should."""
    suite = run_suite(tiny_model, "quick", data_dir=tmp_path / "no-data", out=tmp_path / "quick",
                      progress=False)
    out = write_report(tmp_path / "quick", tmp_path / "quick.html")
    text = out.read_text()
    _assert_safe(text)
    for name, res in suite.results.items():
        assert f'<h2 id="{name}">' in text
        for row in res.headline().itertuples():
            assert f"{row.value:.4f}" in text or np.isnan(row.value)
    # a suite with correct answers lists confident mistakes; one without (the pronoun probe)
    # lists its strongest preferences, never calling a choice "correct"
    facts = text[text.index('<h2 id="true_false_facts">'):]
    pronoun = text[text.index('<h2 id="occupation_pronoun">'):text.index('<h2 id="true_false_facts">')]
    assert "Most confidently wrong" in facts.split("<h2")[1]
    assert "Strongest preferences for the choice the metric counts" in pronoun
    assert "confidently wrong" not in pronoun and "correct" not in pronoun.split("<table")[-1]
    assert all(name in text for name in suite.skipped)  # the data suites that could not run


def test_the_report_file_is_replaced_atomically(tmp_path):
    write_crows(tmp_path / "crows")
    target = tmp_path / "report.html"
    target.write_text("an older report")
    with pytest.raises(WorkbenchError, match="no such run folder"):
        write_report(tmp_path / "missing", target)
    assert target.read_text() == "an older report"  # a failed report leaves the old one
    write_report(tmp_path / "crows", target)
    assert "crows_pairs" in target.read_text() and sorted(p.name for p in tmp_path.iterdir()) == ["crows", "report.html"]
    single = load_run(tmp_path / "crows")
    assert isinstance(single, EvalResult) and single.suite == "crows_pairs"
