"""Toxicity scorers and the resumable toxicity suite, on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.evals.scorers import (
    NOT_PERSPECTIVE,
    HFClassifierScorer,
    ProfanityCheckScorer,
    Scorer,
    get_scorer,
)

# --- scorers ---------------------------------------------------------------------------------


def test_profanity_check_scores_match_the_library_and_name_the_scale():
    from profanity_check import predict_prob

    texts = ["have a lovely afternoon", "shut up you stupid idiot", ""]
    scorer = get_scorer("profanity-check")
    assert isinstance(scorer, Scorer) and scorer.name == "profanity-check"
    assert "not Perspective API" in scorer.scale_note
    scores = scorer.score(texts)
    np.testing.assert_allclose(scores, predict_prob(texts))
    assert scores[0] < 0.5 < scores[1]
    assert scorer.score([]).shape == (0,)


def _classifier_folder(path, problem_type=None, id2label=None):
    """A tiny random LLaMA sequence classifier with the word-level test tokenizer."""
    from tiny_hf import tiny_config, tiny_tokenizer
    from transformers import LlamaForSequenceClassification

    tokenizer = tiny_tokenizer()
    torch.manual_seed(1)
    labels = id2label or {0: "LABEL_0", 1: "LABEL_1"}
    config = tiny_config(len(tokenizer), num_labels=len(labels), id2label=labels,
                         label2id={v: k for k, v in labels.items()}, problem_type=problem_type)
    model = LlamaForSequenceClassification(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer


def test_hf_classifier_scorer_equals_direct_softmax(tmp_path):
    model, tokenizer = _classifier_folder(tmp_path / "clf")
    texts = ["the cat sat on a mat", "dog", "what is the capital of france ?"]
    scorer = get_scorer(f"hf:{tmp_path / 'clf'}")
    assert scorer.name == "hf:clf" and NOT_PERSPECTIVE in scorer.scale_note
    scores = scorer.score(texts)  # one padded batch
    expected = []
    for text in texts:  # oracle: one unpadded forward per text, softmax by hand
        with torch.no_grad():
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0].double()
        e = torch.exp(logits - logits.max())
        expected.append((e / e.sum())[1].item())
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    assert np.all((scores >= 0) & (scores <= 1))


def test_hf_classifier_picks_the_toxic_label_and_sigmoid_for_multilabel(tmp_path):
    labels = {0: "toxic", 1: "insult", 2: "neutral"}
    model, tokenizer = _classifier_folder(tmp_path / "ml", "multi_label_classification", labels)
    scorer = HFClassifierScorer(tmp_path / "ml")
    assert scorer.label_index == 0 and scorer.multi_label
    with torch.no_grad():
        logits = model(**tokenizer("the red house", return_tensors="pt")).logits[0].double()
    np.testing.assert_allclose(scorer.score(["the red house"]), [1 / (1 + np.exp(-logits[0].item()))], rtol=1e-5)
    assert HFClassifierScorer(tmp_path / "ml", label="insult").label_index == 1
    with pytest.raises(WorkbenchError, match="not among"):
        HFClassifierScorer(tmp_path / "ml", label="spam")


def test_scorer_specs_and_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown scorer 'perspective'"):
        get_scorer("perspective")
    with pytest.raises(WorkbenchError, match="no config.json"):
        get_scorer(f"hf:{tmp_path}")
    with pytest.raises(WorkbenchError, match="no such file"):
        get_scorer(f"detoxify:{tmp_path / 'missing.ckpt'}")
    ckpt = tmp_path / "toxic.ckpt"
    ckpt.write_bytes(b"")
    monkeypatch.setitem(__import__("sys").modules, "detoxify", None)  # import fails as if absent
    with pytest.raises(WorkbenchError, match="pip install detoxify"):
        get_scorer(f"detoxify:{ckpt}")
    mine = ProfanityCheckScorer()
    assert get_scorer(mine) is mine
    with pytest.raises(TypeError):
        get_scorer(42)
