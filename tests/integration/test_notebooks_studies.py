"""The study notebooks 01-04 run top to bottom on the embedded model (quick size) and do their job.

Beyond running without error (as every notebook must, see test_notebooks.py), each is checked for
what it is for: the widgets it shows were built, the numbers it prints are there, and 04 writes
its HTML report. The suite sizes of 04 are capped through WORKBENCH_NOTEBOOK_LIMIT to keep the
run short on 2 cores.
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from test_notebooks import _quick  # the parameter-cell convention shared with test_notebooks.py

pytestmark = pytest.mark.integration
NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
STUDIES = ["01_bias_study", "02_activation_patching", "03_truthfulness", "04_safety_eval_suite"]


def _run(name: str, folder: Path, monkeypatch, data_dir=None):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: outputs committed"
    _quick(nb)
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_LIMIT", "6")
    if data_dir is not None:
        monkeypatch.setenv("WORKBENCH_DATA", str(data_dir))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "Traceback" not in text and not [o for o in outputs if o.get("output_type") == "error"]
    # Widgets a cell ends with (progress bars are displayed widgets too, not results).
    widgets = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in outputs
               if o.get("output_type") == "execute_result" and "application/vnd.jupyter.widget-view+json" in o["data"]]
    assert "not JSON compliant" not in text  # a NaN in a widget's state would not reach the browser
    return text, widgets


def test_notebooks_are_there():
    assert all((NOTEBOOKS / f"{name}.ipynb").is_file() for name in STUDIES)


def test_bias_study(tmp_path, monkeypatch, data_dir):
    text, widgets = _run("01_bias_study", tmp_path, monkeypatch, data_dir)
    assert "skipped" not in text  # with the data directory, CrowS-Pairs and WinoGender ran
    assert "'The nurse notified the patient that' -> 'The engineer notified the patient that'" in text
    assert "steering strength" in text
    assert len(widgets) == 4  # dashboard, probe explorer, comparison dashboard, steering generator


def test_activation_patching(tmp_path, monkeypatch):
    text, widgets = _run("02_activation_patching", tmp_path, monkeypatch)
    assert "clean 5.2" in text and "pearson" in text and "spearman" in text
    assert len(widgets) == 1  # the patching explorer


def test_truthfulness(tmp_path, monkeypatch, data_dir):
    text, widgets = _run("03_truthfulness", tmp_path, monkeypatch, data_dir)
    assert "toward true" in text and "mc2" in text
    assert len(widgets) == 2  # probe explorer, comparison dashboard


def test_safety_eval_suite_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # no per-user data folder either: built-in suites only
    text, widgets = _run("04_safety_eval_suite", tmp_path, monkeypatch)
    report = tmp_path / "runs" / "quick-suite" / "report.html"
    assert report.is_file() and "report written" in text and str(report) in text
    html = report.read_text()
    assert "occupation_pronoun" in html and "true_false_facts" in html
    assert not re.search(r"<script[^>]*\bsrc\s*=", html)  # plotly.js inlined: opens offline
    assert len(widgets) == 1  # the dashboard


def test_demo_suite_runs_the_suite_the_report_and_notebook_04(tmp_path, monkeypatch, capsys):
    """`make demo` = `workbench demo --suite`: the quick suite, the report, notebook 04 headless."""
    import json

    from workbench.cli import main

    monkeypatch.delenv("WORKBENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # no data: the built-in suites (fast)
    out = tmp_path / "runs" / "quick-suite"
    assert main(["demo", "--max-new-tokens", "4", "--suite", "--suite-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "residual stream norms" in printed and "quick: headline metrics" in printed
    assert f"report: {out / 'report.html'}" in printed.replace("\n", "")
    assert not re.search(r"<script[^>]*\bsrc\s*=", (out / "report.html").read_text())
    executed = nbformat.read(out / "04_safety_eval_suite.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("report written" in o.get("text", "") for o in outputs)
    suites = json.loads((out / "suite.json").read_text())["suites"]
    assert suites[:2] == ["occupation_pronoun", "true_false_facts"]
