"""Toxicity scorers and the resumable toxicity suite, on tiny random models.

The sampler is tested in test_evals_generation.py, the progress log in test_evals_progress.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.common.errors import WorkbenchError
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


# --- toxicity suite --------------------------------------------------------------------------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

from workbench.evals import toxicity as tox  # noqa: E402


class WordScorer:
    """Deterministic test scorer: share of words in a continuation that are "cat" or "dog"."""

    name = "words"
    scale_note = "test scorer"

    def __init__(self, fail_after: int | None = None, kill_after: int | None = None):
        self.calls = 0
        self.fail_after, self.kill_after = fail_after, kill_after

    def score(self, texts):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("injected failure")
        if self.kill_after is not None and self.calls > self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.array([np.mean([w in ("cat", "dog") for w in t.split()]) if t.split() else 0.0 for t in texts])


def _rtp(text, toxicity=0.5):
    return json.dumps({"filename": "x.txt", "prompt": {"text": text, "toxicity": toxicity},
                       "continuation": {"text": " the end"}})


def write_data(root: Path) -> Path:
    """A small data folder in the published formats, in the tiny tokenizer's vocabulary."""
    (root / "decodingtrust" / "toxicity").mkdir(parents=True)
    (root / "toxigen" / "prompts").mkdir(parents=True)
    toxic = ["the cat sat on", "a dog ran to", "the red house is", "it was in the"]
    nontoxic = ["paris is the capital of", "the blue mat", "what is the"]
    (root / "decodingtrust/toxicity/toxic.jsonl").write_text("\n".join(_rtp(t, 0.9) for t in toxic) + "\n")
    (root / "decodingtrust/toxicity/nontoxic.jsonl").write_text(
        "\ufeff" + "\n".join(_rtp(t, 0.1) for t in nontoxic) + "\n")  # a BOM must not break line 1
    (root / "toxigen/prompts/hate_cat_1k.txt").write_text("- the cat is red\\n- a cat sat\\n-\n- cat cat\\n-\n")
    (root / "toxigen/prompts/hate_dog_1k.txt").write_text("- the dog ran\\n-\n")
    (root / "toxigen/prompts/neutral_cat_1k.txt").write_text("- the cat sat on a mat\\n-\n- rome is in italy\\n-\n")
    return root


@pytest.fixture()
def data(tmp_path):
    return write_data(tmp_path / "data")


def test_load_prompts_interleaves_subsets_and_reads_formats(data):
    prompts, skipped = tox.load_prompts(data, "full")
    assert skipped == {}
    assert list(prompts["category"][:4]) == ["toxic", "nontoxic", "toxigen_hate", "toxigen_neutral"]
    assert prompts["category"].value_counts().to_dict() == {"toxic": 4, "nontoxic": 3, "toxigen_hate": 3,
                                                              "toxigen_neutral": 2}
    first = prompts.set_index("example_id")
    assert first.loc["rtp_nontoxic:0001", "prompt"] == "paris is the capital of"  # BOM stripped
    assert first.loc["rtp_toxic:0002", "prompt_toxicity"] == 0.9
    assert first.loc["toxigen_hate_cat:0001", "prompt"] == "- the cat is red\n- a cat sat\n-"
    assert first.loc["toxigen_hate_cat:0001", "group"] == "cat"
    # round-robin over ToxiGen groups too: hate_cat line 1, hate_dog line 1, hate_cat line 2
    assert list(prompts.query("category == 'toxigen_hate'")["example_id"]) == [
        "toxigen_hate_cat:0001", "toxigen_hate_dog:0001", "toxigen_hate_cat:0002"]
    assert first.loc["toxigen_hate_dog:0001", "source"] == "toxigen/prompts/hate_dog_1k.txt:1"
    quick, _ = tox.load_prompts(data, "quick")
    assert len(quick) == 7 + 3  # quick: one ToxiGen prompt per group file


def test_load_prompts_bad_rows_name_file_and_line(data):
    path = data / "decodingtrust/toxicity/toxic.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = '{"prompt": {"text": "the cat"'            # bad JSON
    lines[2] = json.dumps({"prompt": {"text": "  "}})      # empty field
    lines.insert(3, json.dumps({"text": "wrong columns"}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkbenchError, match=r"toxic.jsonl:2: not valid JSON"):
        tox.load_prompts(data)
    prompts, skipped = tox.load_prompts(data, errors="skip")
    assert list(skipped) == [str(path)] and skipped[str(path)]["rows"] == 3
    assert skipped[str(path)]["lines"] == [2, 3, 4]
    assert "line 4: no prompt.text" in skipped[str(path)]["problems"][2]
    assert list(prompts.query("category == 'toxic'")["example_id"]) == ["rtp_toxic:0001", "rtp_toxic:0005"]
    (data / "toxigen/prompts/neutral_cat_1k.txt").unlink()
    with pytest.raises(WorkbenchError, match=r"toxigen/prompts/neutral_\*_1k.txt under .*workbench data pull toxigen"):
        tox.load_prompts(data)


def test_metrics_hand_computed():
    samples = pd.DataFrame({"category": ["toxic", "toxic", "nontoxic", "toxic"],
                            "max_score": [0.5, 0.2, 0.49, 0.9]})  # 0.5 counts as toxic (>=)
    m = tox.toxicity_metrics(samples, seed=0).set_index(["metric", "category"])
    assert m.loc[("expected_max_toxicity", "all"), "value"] == pytest.approx((0.5 + 0.2 + 0.49 + 0.9) / 4)
    assert m.loc[("toxicity_probability", "all"), "value"] == pytest.approx(2 / 4)
    assert m.loc[("expected_max_toxicity", "toxic"), "value"] == pytest.approx(1.6 / 3)
    assert m.loc[("toxicity_probability", "toxic"), "value"] == pytest.approx(2 / 3)
    assert m.loc[("toxicity_probability", "nontoxic"), "value"] == 0.0
    assert m.loc[("toxicity_probability", "nontoxic"), "n"] == 1
    assert np.isnan(m.loc[("toxicity_probability", "nontoxic"), "ci_low"])  # no CI from one prompt
    low, high = m.loc[("expected_max_toxicity", "all"), ["ci_low", "ci_high"]]
    assert 0.2 <= low <= m.loc[("expected_max_toxicity", "all"), "value"] <= high <= 0.9
    again = tox.toxicity_metrics(samples, seed=0)
    pd.testing.assert_frame_equal(again, tox.toxicity_metrics(samples, seed=0))
    assert np.isnan(tox.expected_max_toxicity(np.array([])))


def _frames_equal(a, b):
    pd.testing.assert_frame_equal(a[0], b[0])
    pd.testing.assert_frame_equal(a[1], b[1])


def test_run_toxicity_tables_and_order_independence(tiny_model, data, tmp_path):
    kw = dict(mode="full", k=3, scorer=WordScorer(), progress=False, n_bootstrap=200)
    metrics, samples, extra = tox.run_toxicity(tiny_model, data, **kw)
    assert list(metrics.columns) == ["suite", "metric", "category", "value", "ci_low", "ci_high", "n"]
    assert set(metrics["category"]) == {"all", *tox.SUBSETS}
    assert len(samples) == 12 and all(len(c) == 3 for c in samples["continuations"])
    assert samples["max_score"].tolist() == [max(s) for s in samples["scores"]]
    by = metrics.set_index(["metric", "category"])
    assert by.loc[("expected_max_toxicity", "toxic"), "value"] == pytest.approx(
        samples.query("category == 'toxic'")["max_score"].mean())
    assert by.loc[("toxicity_probability", "all"), "n"] == 12
    assert extra["scorer"]["name"] == "words" and extra["sampling"]["top_p"] == 0.9
    assert extra["sampling"]["k"] == 3 and extra["sampling"]["max_new_tokens"] == 20
    assert {f["path"] for f in extra["data"]["files"]} >= {"decodingtrust/toxicity/toxic.jsonl"}
    # seeds are per example: a limited run gives the same rows for the examples it has
    _, head, _ = tox.run_toxicity(tiny_model, data, limit=5, **kw)
    pd.testing.assert_frame_equal(head, samples.head(5))


def test_run_toxicity_resumes_after_an_exception(tiny_model, data, tmp_path):
    kw = dict(mode="full", k=2, progress=False, n_bootstrap=200)
    full = tox.run_toxicity(tiny_model, data, scorer=WordScorer(), **kw)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected"):
        tox.run_toxicity(tiny_model, data, scorer=WordScorer(fail_after=5), out=out, **kw)
    lines = (out / tox.PROGRESS_FILE).read_text().splitlines()
    assert len(lines) == 1 + 5  # header + the five finished examples
    resumed_scorer = WordScorer()
    resumed = tox.run_toxicity(tiny_model, data, scorer=resumed_scorer, out=out, **kw)
    assert resumed_scorer.calls == 12 - 5  # finished examples were not sampled again
    _frames_equal(resumed, full)
    assert (full[2]["resumed_examples"], resumed[2]["resumed_examples"]) == (0, 5)
    with pytest.raises(WorkbenchError, match="other settings"):
        tox.run_toxicity(tiny_model, data, scorer=WordScorer(), out=out, **{**kw, "k": 3})


CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_evals_toxicity import WordScorer
from workbench.evals.toxicity import run_toxicity
from workbench.models.loading import load_model
model = load_model({model!r}, device="cpu")
run_toxicity(model, {data!r}, mode="full", k=2, progress=False, n_bootstrap=200,
             scorer=WordScorer(kill_after=4), out={out!r})
"""


def test_run_toxicity_resumes_after_sigkill_and_a_torn_line(tiny_model, hf_folder, data, tmp_path):
    kw = dict(mode="full", k=2, progress=False, n_bootstrap=200)
    full = tox.run_toxicity(tiny_model, data, scorer=WordScorer(), **kw)
    out = tmp_path / "run"
    script = CHILD.format(tests=str(Path(__file__).parent), model=str(hf_folder[0]), data=str(data), out=str(out))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    progress = out / tox.PROGRESS_FILE
    assert len(progress.read_text().splitlines()) == 1 + 4
    with open(progress, "a") as fh:  # what a kill in the middle of a write leaves behind
        fh.write('{"example_id": "rtp_toxic:0003", "continuations": ["the ca')
    resumed = tox.run_toxicity(tiny_model, data, scorer=WordScorer(), out=out, **kw)
    _frames_equal(resumed, full)
    assert len(progress.read_text().splitlines()) == 1 + 12
    # a damaged line in the middle is not guessed at
    lines = progress.read_text().splitlines()
    lines[3] = lines[3][:10]
    progress.write_text("\n".join(lines) + "\n")
    with pytest.raises(WorkbenchError, match=r"line 4: unreadable"):
        tox.run_toxicity(tiny_model, data, scorer=WordScorer(), out=out, **kw)


def test_run_suite_passes_toxicity_parameters_and_rejects_strangers(tiny_model, data, tmp_path):
    from workbench.evals import run_suite

    suite = run_suite(tiny_model, "toxicity", data_dir=data, progress=False,
                         suite_params={"toxicity": {"mode": "quick", "k": 2, "scorer": WordScorer()}})
    manifest = suite["toxicity"].manifest
    assert manifest["sampling"]["k"] == 2 and manifest["sampling"]["mode"] == "quick"
    assert manifest["scorer"]["name"] == "words"
    assert all(len(c) == 2 for c in suite["toxicity"].samples["continuations"])
    with pytest.raises(ValueError, match="'bbq', which is not in 'toxicity'"):
        run_suite(tiny_model, "toxicity", data_dir=data, progress=False, suite_params={"bbq": {}})


def test_cli_toxicity_flags(hf_folder, data, tmp_path, capsys):
    from workbench.cli import main
    from workbench.evals import EvalResult

    out = tmp_path / "runs" / "tox"
    argv = ["eval", "--model", str(hf_folder[0]), "--suite", "toxicity", "--data-dir", str(data),
            "--toxicity-mode", "quick", "--scorer", "profanity-check", "--limit", "2", "--out", str(out)]
    assert main(argv) == 0
    assert "expected_max_toxicity" in capsys.readouterr().out
    manifest = EvalResult.load(out / "toxicity").manifest
    assert manifest["sampling"]["mode"] == "quick" and manifest["sampling"]["k"] == tox.MODES["quick"].k
    assert manifest["scorer"]["name"] == "profanity-check" and manifest["params"]["mode"] == "quick"
    # the same flags on a suite without toxicity are refused before any model is loaded
    assert main(["eval", "--suite", "crows_pairs", "--scorer", "profanity-check"]) == 2
    assert "apply to the toxicity suite" in capsys.readouterr().out


def test_a_suite_run_saves_and_resumes_through_its_folder(tiny_model, data, tmp_path):
    """run_eval with out= keeps the progress file in the result folder; a rerun samples nothing."""
    from workbench.evals import EvalResult, run_eval

    out = tmp_path / "tox"
    first = run_eval(tiny_model, "toxicity", data_dir=data, limit=3, mode="quick", k=2, scorer=WordScorer(),
                     out=out, progress=False)
    assert (out / tox.PROGRESS_FILE).is_file() and first.manifest["resumed_examples"] == 0
    assert first.manifest["loglik"] is None and first.manifest["n_examples"] == 3
    assert list(first.manifest)[-1] == "resumed_examples"  # a kind's extra keys come last, as before
    counting = WordScorer()
    again = run_eval(tiny_model, "toxicity", data_dir=data, limit=3, mode="quick", k=2, scorer=counting,
                     out=out, progress=False)
    assert counting.calls == 0 and again.manifest["resumed_examples"] == 3
    pd.testing.assert_frame_equal(again.metrics, first.metrics)
    assert EvalResult.load(out).manifest["resumed_examples"] == 3
