"""Notebook 07 (fine-tuning and safety) runs top to bottom on the embedded model (quick size).

Checked for what it is for: the fine-tuning run and its merged folder, the paired refusal
comparison with McNemar's test, compare_models' figures and lens, the weight diff naming the
LoRA targets. It is stored without outputs (no harmful request or completion in the repository).
"""

import re

import pytest
from test_notebooks_studies import _run  # the capped headless run shared with notebooks 01-05

pytestmark = pytest.mark.integration


def test_finetuning_and_safety(tmp_path, monkeypatch, data_dir):
    text, widgets = _run("07_finetuning_and_safety", tmp_path, monkeypatch, data_dir)
    out = tmp_path / "runs" / "finetune-quick"
    assert "4820 benign rows" in text
    assert (out / "finetune" / "merged" / "config.json").is_file()
    assert re.search(r"trainable parameters, 3 steps", text)
    assert "judge: keyword:" in text and "mcnemar" in text
    assert re.search(r"benign \(held-out Alpaca\): 6 texts, \d+ tokens: mean KL \d\.\d{4} nats", text)
    assert "promoted" in text and "suppressed" in text
    # LoRA on every block's seven projections of the 30-layer model: 210 tensors moved.
    assert "210 tensors changed" in text
    assert "per-example drill-down off" in text
