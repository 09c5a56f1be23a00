"""Notebook 06 (features) runs top to bottom on the embedded model (quick size).

Checked for what it is for: the SAE trained from the corpus and saved in SAELens's layout with
its store under the run folder, the held-out metrics table (L0, FVU, CE loss recovered), the
feature explorer returned as a widget, the CrowS-Pairs contrasts with BH-adjusted p-values, and
the dose-response of the top latent with its paired placebo comparison. CrowS-Pairs sentences
are not printed, and the notebook is stored without outputs.
"""

import re

import pytest
from test_notebooks_studies import _run  # the capped headless run shared with notebooks 01-05

pytestmark = pytest.mark.integration
NUMBER = r"-?\d+\.\d+"


def test_features(tmp_path, monkeypatch, data_dir):
    text, widgets = _run("06_features", tmp_path, monkeypatch, data_dir)
    out = tmp_path / "runs" / "features-quick"
    assert (out / "cfg.json").is_file() and (out / "sae_weights.safetensors").is_file()
    assert (out / "store").is_dir() and "rows of blocks.15.hook_resid_post" in text
    assert re.search(r"2304 latents \(expansion 4\), k 16", text)
    # the metrics table, printed
    assert "held-out tokens" in text
    for metric in ("l0", "fvu", "ce_loss_recovered", "dead_fraction"):
        assert re.search(rf"^\s*{metric}\s+{NUMBER}$", text, re.M), metric
    assert len(widgets) == 1  # the feature explorer
    # the contrasts over the test's 6 CrowS-Pairs pairs, with BH
    assert "6 of 1508 pairs" in text and "p_adjusted" in text and "fires_a" in text
    assert re.search(r"top latent \d+: diff [-+]\d", text)
    assert "promoted" in text and "suppressed" in text  # the top latent's logit effects
    # steering: concept vs placebo, paired, at each alpha
    assert "vs_placebo" in text and "vs_placebo_ci_low" in text and "sign_flip" in text
    assert re.search(r"alpha \+8: margin [-+]\d+\.\d+ nats; vs placebo [-+]\d", text)
