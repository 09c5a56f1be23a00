"""Toxicity suite on the embedded SmolLM2 model and the real DecodingTrust / ToxiGen prompts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from workbench.evals import generation as gen
from workbench.evals import run_eval
from workbench.evals import toxicity as tox
from workbench.evals.scorers import ProfanityCheckScorer

pytestmark = pytest.mark.integration


class CountingScorer(ProfanityCheckScorer):
    """The default scorer, counting the prompts it scores (to see what a rerun re-samples)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def score(self, texts):
        self.calls += 1
        return super().score(texts)


def test_toxicity_quick_run_saves_resumes_and_reports(embedded, data_dir, tmp_path):
    from workbench.viz.report import report_html

    out = tmp_path / "tox"
    res = run_eval(embedded, "toxicity", data_dir=data_dir, limit=4, seed=0, mode="quick", out=out,
                      progress=False)
    samples, metrics = res.samples, res.metrics
    assert len(samples) == 4 and set(samples["category"]) == set(tox.SUBSETS)  # one per subset
    assert all(len(c) == tox.MODES["quick"].k for c in samples["continuations"])
    assert any(text.strip() for conts in samples["continuations"] for text in conts)
    # metrics recomputed by hand from the per-prompt maxima
    by = metrics.set_index(["metric", "category"])
    maxima = np.array([max(s) for s in samples["scores"]])
    assert by.loc[("expected_max_toxicity", "all"), "value"] == pytest.approx(maxima.mean())
    assert by.loc[("toxicity_probability", "all"), "value"] == pytest.approx((maxima >= 0.5).mean())
    assert by.loc[("expected_max_toxicity", "all"), "n"] == 4
    assert res.manifest["scorer"]["name"] == "profanity-check"
    assert "not Perspective API" in res.manifest["scorer"]["scale_note"]
    assert res.manifest["sampling"]["top_p"] == 0.9 and res.manifest["sampling"]["max_new_tokens"] == 20
    assert {f["path"] for f in res.manifest["data"]["files"]} >= {"decodingtrust/toxicity/toxic.jsonl"}

    # one example again, alone: same continuations (seeded per example, order-free)
    row = samples.iloc[1]
    again = gen.sample_continuations(embedded, row["prompt"], gen.Sampling(k=tox.MODES["quick"].k),
                                     gen.example_seed(0, row["example_id"]))
    assert again == list(row["continuations"])

    # the rerun finds every example in the progress file (in the result folder) and samples nothing
    scorer = CountingScorer()
    metrics2, samples2, _ = tox.run_toxicity(embedded, data_dir, limit=4, seed=0, mode="quick", scorer=scorer,
                                             out=out, progress=False)
    assert scorer.calls == 0
    assert metrics2.equals(metrics) and samples2["scores"].map(list).tolist() == samples["scores"].map(list).tolist()

    html = report_html(out)
    assert "Toxicity scorer: profanity-check" in html and not re.search(r"<script[^>]*\bsrc\s*=", html)


def test_steering_changes_sampled_text(embedded):
    """Generation runs through the bridge, so an open hook changes what is sampled.

    The hook pushes the last residual stream along the unembedding row with the largest norm
    (divided by the final RMSNorm gain, which the norm multiplies back): that token then has the
    largest logit by a wide margin, so every sampled token must be it.
    """
    last = embedded.cfg.n_layers - 1
    unembed = embedded.hf_model.lm_head.weight.detach()
    tok = int(unembed.norm(dim=-1).argmax())
    direction = unembed[tok] / embedded.hf_model.model.norm.weight.detach()

    def push(resid, hook):
        return resid + 50 * direction / direction.norm() * resid.norm(dim=-1, keepdim=True)

    sampling = gen.Sampling(k=2, max_new_tokens=5)
    plain = gen.sample_tokens(embedded, "My favourite food is", sampling, seed=3)
    with embedded.hooks([(f"blocks.{last}.hook_resid_post", push)]):
        steered = gen.sample_tokens(embedded, "My favourite food is", sampling, seed=3)
    assert steered == [[tok] * 5] * 2 and plain != steered


def test_real_prompt_files_parse_cleanly(data_dir):
    """Every published prompt row parses: none skipped, ids unique, every group represented."""
    full, skipped = tox.load_prompts(data_dir, "full", errors="skip")
    assert skipped == {}
    counts = full["category"].value_counts().to_dict()
    hate = len(list((data_dir / "toxigen" / "prompts").glob("hate_*_1k.txt")))
    neutral = len(list((data_dir / "toxigen" / "prompts").glob("neutral_*_1k.txt")))
    per_file = tox.MODES["full"].toxigen_per_file
    assert counts == {"toxic": 1196, "nontoxic": 1200, "toxigen_hate": hate * per_file,
                      "toxigen_neutral": neutral * per_file}
    assert full["example_id"].is_unique
    assert not full["prompt"].str.contains(r"\\n", regex=False).any()  # literal \n became newlines
    # RTP's Perspective scores of the prompts: the nontoxic file is all below 0.5, the toxic one mostly above
    assert full.query("category == 'nontoxic'")["prompt_toxicity"].max() < 0.5
    assert full.query("category == 'toxic'")["prompt_toxicity"].median() > 0.5
