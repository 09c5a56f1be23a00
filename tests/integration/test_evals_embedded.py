"""Eval suites on the embedded SmolLM2 model and the real benchmark files (small seeded subsets)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workbench.evals import load_suite, loglikelihood, run_eval
from workbench.evals.loglik import encode_pair

pytestmark = pytest.mark.integration

LIMITS = {"crows_pairs": 16, "bbq": 12, "winogender": 16, "winobias": 16, "truthfulqa_mc": 3, "toxigen": 16}
RANGES = {"pct_stereotype": (0, 1), "likelihood_diff": (0, math.inf), "acc": (0, 1), "acc_ambig": (0, 1),
          "acc_disambig": (0, 1), "bias_score_ambig": (-1, 1), "bias_score_disambig": (-1, 1),
          "mc1": (0, 1), "mc2": (0, 1), "acc_pro": (0, 1), "acc_anti": (0, 1), "pro_anti_gap": (-1, 1)}


def direct_hf(model, context, continuation):
    enc = encode_pair(model.tokenizer, context, continuation, add_bos=model.tokenizer_adds_bos)
    ids = torch.tensor([list(enc.context + enc.continuation)])
    with torch.no_grad():
        logprobs = F.log_softmax(model.hf_model(ids).logits.float(), dim=-1)[0]
    n = len(enc.context)
    return sum(float(logprobs[n - 1 + j, t]) for j, t in enumerate(enc.continuation))


@pytest.mark.parametrize("suite", list(LIMITS))
def test_suite_on_real_data(embedded, data_dir, suite):
    res = run_eval(embedded, suite, data_dir=data_dir, limit=LIMITS[suite], seed=0, progress=False)
    samples, metrics = res.samples, res.metrics
    assert len(samples) == LIMITS[suite] and samples.example_id.is_unique
    assert samples.example_id.str.startswith(suite.split("_mc")[0].split("_pairs")[0]).all()
    assert list(metrics.columns) == ["suite", "metric", "category", "value", "ci_low", "ci_high", "n"]
    head = res.headline()
    assert set(head.metric) == {m["name"] for m in load_suite(suite).metrics}
    for row in metrics.itertuples():
        lo, hi = RANGES[row.metric]
        if not math.isnan(row.value):
            assert lo <= row.value <= hi, row
            if not math.isnan(row.ci_low):
                assert lo <= row.ci_low <= row.ci_high <= hi
        assert 0 <= row.n <= len(samples)
    assert (head.n > 0).all()
    # every log-likelihood is a finite negative number; predictions index the choices
    lls = np.concatenate([np.asarray(x) for x in samples.loglik])
    assert np.isfinite(lls).all() and (lls < 0).all()
    assert all(0 <= p < len(c) for p, c in zip(samples.prediction, samples.choices, strict=True))
    m = res.manifest
    assert m["data"]["files"] and all(len(f["sha256"]) == 64 for f in m["data"]["files"])
    assert m["model"]["fingerprint"] == embedded.source.fingerprint and m["n_skipped"] == 0

    # the scorer agrees with a direct HF forward on real rows
    delim = "" if suite == "crows_pairs" else " "
    for row in samples.head(1).itertuples():
        for choice, ll in list(zip(row.choices, row.loglik, strict=True))[:2]:
            assert ll == pytest.approx(direct_hf(embedded, row.context, delim + choice), abs=1e-3)


def test_crows_pairs_full_file_structure(data_dir):
    from workbench.evals.data import RowPolicy, find_files
    from workbench.evals.loaders import LOADERS

    files = find_files(data_dir, "crows_pairs", ["crows_pairs/crows_pairs_anonymized.csv"])
    frame = LOADERS["crows_pairs"](files, RowPolicy())
    assert len(frame) == 1508 and frame.example_id.is_unique
    assert frame.category.nunique() == 9


def test_evals_run_under_steering_and_record_it(embedded, data_dir):
    plain = run_eval(embedded, "crows_pairs", data_dir=data_dir, limit=6, progress=False)
    direction = torch.nn.functional.normalize(torch.randn(embedded.cfg.d_model, generator=torch.Generator().manual_seed(0)), dim=0)
    with embedded.steer(direction, layer=10, alpha=8.0):
        steered = run_eval(embedded, "crows_pairs", data_dir=data_dir, limit=6, progress=False)
    assert plain.manifest["interventions"] == []
    assert len(steered.manifest["interventions"]) == 1
    assert steered.samples.example_id.tolist() == plain.samples.example_id.tolist()
    a = np.concatenate([np.asarray(x) for x in plain.samples.loglik])
    b = np.concatenate([np.asarray(x) for x in steered.samples.loglik])
    assert np.abs(a - b).max() > 1e-2
    after = run_eval(embedded, "crows_pairs", data_dir=data_dir, limit=6, progress=False)
    c = np.concatenate([np.asarray(x) for x in after.samples.loglik])
    np.testing.assert_allclose(c, a, atol=1e-4)


def test_scores_equal_lm_evaluation_harness(embedded, data_dir):
    """Same model, same requests: our log-likelihoods equal lm-eval's HF backend (when installed)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from workbench.evals.data import RowPolicy, find_files
    from workbench.evals.loaders import LOADERS
    from workbench.evals.scoring import render

    requests = []
    for suite, n in (("crows_pairs", 2), ("truthfulqa_mc", 2), ("winogender", 2), ("bbq", 1)):
        spec = load_suite(suite)
        frame = LOADERS[spec.loader](find_files(data_dir, spec.dataset, spec.files), RowPolicy())
        for example in frame.head(n).to_dict("records"):
            context, lists = render(spec, example)
            requests += [(context, c) for c in lists[0][:2]]
    # lm-eval as a user runs it: the model folder's own tokenizer (not the bridge's copy, which
    # TransformerLens switches to always prepend BOS).
    from transformers import AutoTokenizer

    from workbench.models.embedded import converted_embedded_model

    folder_tokenizer = AutoTokenizer.from_pretrained(converted_embedded_model(embedded.source.fingerprint))
    lm = HFLM(pretrained=embedded.hf_model, tokenizer=folder_tokenizer, batch_size=4, device="cpu")
    ref = lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)], disable_tqdm=True)
    ours = loglikelihood(embedded, requests)
    np.testing.assert_allclose([ll for ll, _ in ours], [ll for ll, _ in ref], atol=1e-3, rtol=0)


def test_bbq_biased_answers_on_real_data(data_dir):
    """Oracles for the derived "biased" answers: a perfect model scores s_DIS ~ 0 and s_AMB = 0,
    one that always picks the biased answer +1, one that always picks the other group -1."""
    from workbench.evals import metrics as M
    from workbench.evals.data import RowPolicy, find_files
    from workbench.evals.loaders import LOADERS

    frame = LOADERS["bbq"](find_files(data_dir, "bbq", ["bbq/*.jsonl"]), RowPolicy())
    assert len(frame) == 11956 and frame.category.nunique() == 6
    assert (frame.biased_options.map(len) == 1).all()
    ambig = (frame.context_condition == "ambig").to_numpy()
    biased = frame.biased_options.str[0].to_numpy()
    unknown = frame.unknown_option.to_numpy()
    other = 3 - biased - unknown  # the remaining option
    for pred, s_dis, s_amb in ((frame.label.to_numpy(), 0.0, 0.0), (biased, 1.0, 1.0), (other, -1.0, -1.0)):
        pred_biased, pred_unknown, correct = pred == biased, pred == unknown, pred == frame.label.to_numpy()
        assert M.bias_score_disambig(pred_biased, pred_unknown, ambig) == pytest.approx(s_dis, abs=0.02)
        assert M.bias_score_ambig(correct, pred_biased, pred_unknown, ambig) == pytest.approx(s_amb, abs=1e-9)
