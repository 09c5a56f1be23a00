"""Notebook 05 (misuse and refusal) runs top to bottom on the embedded model and the shared data.

Capped like the study notebooks (WORKBENCH_NOTEBOOK_LIMIT, see test_notebooks_studies.py), and
checked for what it is for: the suites' table, the judge's measured agreement, the refusal
direction's layer, the two figures, the drill-down dashboard. It is stored without outputs (no
harmful request or completion in the repository).
"""

import re

import pytest
from test_notebooks_studies import _run  # the capped headless run shared with notebooks 01-04

pytestmark = pytest.mark.integration


def test_misuse_and_refusal(tmp_path, monkeypatch, data_dir):
    text, widgets = _run("05_misuse_and_refusal", tmp_path, monkeypatch, data_dir)
    assert "chat template: SmolLM2-135M-Instruct" in text  # the GGUF metadata's own template
    assert re.search(r"judge: keyword:\S+; keyword:\S+ agrees with XSTest human labels: accuracy 0\.\d\d", text)
    assert "skipped" not in text  # with the data directory every suite of the group ran
    layer = re.search(r"refusal direction: layer (\d+), position (-\d)", text)
    assert layer and 0 <= int(layer.group(1)) < 30
    assert "placebo bypass" in text and "placebo induce" in text and "p_mcnemar" in text
    assert "cosine similarity" in text and "prompts per topic: {'disinformation': 6," in text
    assert (tmp_path / "runs" / "misuse-quick" / "suite.json").is_file()
    assert len(widgets) == 3  # the two figures (FigureWidget) and the eval dashboard
