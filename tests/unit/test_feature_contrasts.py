"""Feature contrasts: per-pair latents against a hand loop on the HF model, the paired statistics
against scipy / statsmodels / the shared stats, a planted latent, and steering a latent through
dose_response beside its placebo."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import permutation_test
from statsmodels.stats.multitest import multipletests

import workbench as wb
from workbench.common.stats import bootstrap_ci, mcnemar_exact, sign_flip_test
from workbench.features import SparseAutoencoder
from workbench.features.contrasts import (
    contrast_table,
    contrasts_from_frame,
    crows_pairs_contrasts,
    feature_contrasts,
    pair_activations,
    refusal_contrasts,
    sign_flip_columns,
    truthfulqa_contrasts,
)

HOOK = "blocks.1.hook_resid_post"
PAIRS = [("the cat sat on a mat", "the dog sat"), ("paris is the capital of france", "rome is red"),
         ("red blue green", "the house of it"), ("what is it ?", "a dog ran to the house and it was red")]


def random_sae(seed=0, **kwargs):
    sae = SparseAutoencoder(64, 256, 8, HOOK, seed=seed, **kwargs)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def by_hand(hf_model, tiny_model, sae, text, reduce, positions=None):
    """One text at a time through the HF model: block 1's output, encoded, reduced by hand."""
    tokens = tiny_model.to_tokens(text) if isinstance(text, str) else tiny_model.chat_tokens(text[-1]["content"])
    with torch.no_grad():
        hidden = hf_model(tokens.cpu(), output_hidden_states=True).hidden_states[2][0]  # after block 1
        z = sae.encode(hidden)[1:]  # drop BOS
    if positions is not None:
        z = z[list(positions)]
    if reduce == "last":
        return z[-1].double().numpy()
    return (z.max(0).values if reduce == "max" else z.mean(0)).double().numpy()


@pytest.mark.parametrize("reduce,positions", [("mean", None), ("max", None), ("last", None), ("mean", [-2, -1])])
def test_pair_activations_match_a_hand_loop_on_the_hf_model(tiny_model, hf_folder, reduce, positions):
    sae = random_sae()
    a, b = pair_activations(tiny_model, sae, PAIRS, reduce=reduce, positions=positions, batch_size=3,
                            progress=False)
    assert a.shape == b.shape == (len(PAIRS), 256)
    for i, (ta, tb) in enumerate(PAIRS):
        np.testing.assert_allclose(a[i], by_hand(hf_folder[1], tiny_model, sae, ta, reduce, positions), atol=2e-5)
        np.testing.assert_allclose(b[i], by_hand(hf_folder[1], tiny_model, sae, tb, reduce, positions), atol=2e-5)


def test_conversations_are_rendered_with_the_chat_template(tiny_model, hf_folder):
    sae = random_sae()
    tiny_model.set_chat_template("chatml")
    try:
        pairs = refusal_contrasts(["what is the capital of france ?", "the cat"], ["red blue", "a dog ran"],
                                  seed=0)
        assert all(p[0][-1]["role"] == "user" for p in pairs)
        a, b = pair_activations(tiny_model, sae, pairs, progress=False)
        for i, (ta, tb) in enumerate(pairs):
            np.testing.assert_allclose(a[i], by_hand(hf_folder[1], tiny_model, sae, ta, "mean"), atol=2e-5)
            np.testing.assert_allclose(b[i], by_hand(hf_folder[1], tiny_model, sae, tb, "mean"), atol=2e-5)
    finally:
        tiny_model.set_chat_template(None)


def sparse_table(n, n_features=40, seed=0):
    """Non-negative, mostly-zero per-pair values; a few features never fire."""
    rng = np.random.default_rng(seed)
    a = rng.exponential(1.0, (n, n_features)) * (rng.random((n, n_features)) < 0.5)
    b = rng.exponential(1.0, (n, n_features)) * (rng.random((n, n_features)) < 0.5)
    a[:, 3] += 3.0  # a real effect
    a[:, -3:] = b[:, -3:] = 0.0  # dead here
    return a, b


def test_statistics_against_scipy_statsmodels_and_the_shared_functions():
    a, b = sparse_table(12)
    table = contrast_table(a, b, top=None, n_boot=500, seed=3).set_index("feature").sort_index()
    d = a - b
    np.testing.assert_allclose(table["diff"], d.mean(0))
    np.testing.assert_allclose(table["mean_a"], a.mean(0))
    np.testing.assert_allclose(table["fires_b"], (b > 0).mean(0))
    tested = (d != 0).any(0)
    assert table["p_value"][~tested].isna().all() and table.attrs["n_tested"] == tested.sum() == 37
    for f in np.flatnonzero(tested):
        ref = permutation_test((a[:, f], b[:, f]), lambda x, y: np.mean(x - y), permutation_type="samples",
                               n_resamples=np.inf, alternative="two-sided").pvalue
        assert table.loc[f, "p_value"] == pytest.approx(ref, abs=1e-12)
        assert table.loc[f, "p_value"] == sign_flip_test(d[:, f])[0] and table.loc[f, "exact"]
        low, high = bootstrap_ci(np.mean, [d[:, f]], n_boot=500, seed=3)
        assert (table.loc[f, "ci_low"], table.loc[f, "ci_high"]) == pytest.approx((low, high), abs=1e-12)
        to_a = int(((a[:, f] > 0) & (b[:, f] == 0)).sum())
        to_b = int(((a[:, f] == 0) & (b[:, f] > 0)).sum())
        if to_a + to_b:
            assert table.loc[f, "p_fires"] == pytest.approx(mcnemar_exact(to_a, to_b), abs=1e-12)
    np.testing.assert_allclose(table["p_adjusted"][tested], multipletests(table["p_value"][tested], method="fdr_bh")[1])
    assert table["p_adjusted"][~tested].isna().all()
    fires = table["p_fires"].notna()
    np.testing.assert_allclose(table["p_fires_adjusted"][fires],
                               multipletests(table["p_fires"][fires], method="fdr_bh")[1])


def test_sorting_and_top():
    a, b = sparse_table(12)
    by_diff = contrast_table(a, b, top=5)
    assert len(by_diff) == 5 and by_diff["diff"].abs().is_monotonic_decreasing
    assert by_diff["feature"].iloc[0] == 3
    by_p = contrast_table(a, b, top=None, sort="p_value")
    assert by_p["p_value"].dropna().is_monotonic_increasing and by_p["p_value"].iloc[-3:].isna().all()
    with pytest.raises(ValueError, match="sort"):
        contrast_table(a, b, sort="nope")


def test_monte_carlo_p_values_are_sign_flip_tests():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, (40, 6))  # no zero differences: the same patterns as sign_flip_test
    p, exact = sign_flip_columns(d, seed=5)
    assert not exact.any()
    assert p.tolist() == [sign_flip_test(d[:, f], seed=5)[0] for f in range(6)]
    d[rng.random(d.shape) < 0.4] = 0.0  # with zeros: the same test with other patterns
    p, exact = sign_flip_columns(d, seed=5)
    ref = [sign_flip_test(d[:, f], seed=5) for f in range(6)]
    assert exact.tolist() == [r[1] for r in ref]
    np.testing.assert_allclose(p, [r[0] for r in ref], atol=0.03)


def planted_sae(tiny_model):
    """A ReLU SAE whose latent 0 reads the residual direction that tells 'paris' from 'rome'."""
    sae = random_sae(activation="relu")
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(["paris", "rome"]), names_filter=[HOOK])
        v = cache[HOOK][0, 1] - cache[HOOK][1, 1]
        v = v / v.norm()
        x = cache[HOOK][:, 1]
        sae.W_enc[:, 0] = 4 * v
        sae.b_enc[0] = -float(((x - sae.b_dec) @ (4 * v)).mean())  # fires on 'paris', not on 'rome'
    return sae


def test_a_planted_latent_comes_first_with_a_small_p(tiny_model):
    sae = planted_sae(tiny_model)
    contexts = ["the", "it is", "what of", "red", "the cat and", "a", "in the house", "blue green", "to", "it was"]
    pairs = [(f"{c} paris", f"{c} rome") for c in contexts]
    table = feature_contrasts(tiny_model, sae, pairs, reduce="last", top=5, progress=False)
    first = table.iloc[0]
    assert first["feature"] == 0 and first["diff"] > 0 and first["ci_low"] > 0
    assert first["p_value"] == pytest.approx(2 / 2**10) and first["exact"]
    assert table.attrs["reduce"] == "last" and table.attrs["hook"] == HOOK and table.attrs["n_pairs"] == 10
    by_p = feature_contrasts(tiny_model, sae, pairs, reduce="last", top=3, sort="p_value", progress=False)
    assert by_p["p_value"].iloc[0] == pytest.approx(2 / 2**10)


def test_pairs_from_loaded_rows():
    crows = pd.DataFrame({"sent_more": ["m0", "m1", "m2"], "sent_less": ["l0", "l1", "l2"]})
    assert crows_pairs_contrasts(crows) == [("m0", "l0"), ("m1", "l1"), ("m2", "l2")]
    sample = crows_pairs_contrasts(crows, limit=2, seed=1)
    assert len(sample) == 2 and sample == crows_pairs_contrasts(crows, limit=2, seed=1)
    tqa = pd.DataFrame({"question": ["q?"], "mc1_choices": [["yes", "no", "maybe"]], "mc1_labels": [[0, 1, 0]],
                        "mc2_choices": [["no"]], "mc2_labels": [[1]]})
    (true, false), = truthfulqa_contrasts(tqa)
    assert true == "Q: q?\nA: no" and false in ("Q: q?\nA: yes", "Q: q?\nA: maybe")
    assert truthfulqa_contrasts(tqa, targets="mc2") == []  # no false answer to contrast with
    misuse = pd.DataFrame({"prompt": ["bad1", "good1", "bad2", "other"], "expected": ["refuse", "answer", "refuse", "answer"],
                           "pair": ["1", "1", "2", ""]})
    assert refusal_contrasts(misuse, chat=False) == [("bad1", "good1")]
    assert contrasts_from_frame(crows, "sent_more", "sent_less", chat=True, system="s")[0][0] == [
        {"role": "system", "content": "s"}, {"role": "user", "content": "m0"}]
    with pytest.raises(KeyError, match="nope"):
        contrasts_from_frame(crows, "nope", "sent_less")


def test_bad_arguments(tiny_model):
    sae = random_sae()
    with pytest.raises(ValueError, match="reduce"):
        pair_activations(tiny_model, sae, PAIRS, reduce="median", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        pair_activations(tiny_model, sae, [("the cat", "the dog")], positions=[5], progress=False)
    with pytest.raises(ValueError, match="pairs"):
        pair_activations(tiny_model, sae, [], progress=False)


def test_steering_a_latent_is_steer_plus_dose_response_with_its_placebo(tiny_model):
    """No steer_feature helper: a latent's decoder row is a direction, dose_response measures it."""
    sae = random_sae(activation="relu")
    f = 7
    texts = ["the cat sat", "paris is red", "a dog ran to the house", "what is it ?", "blue green"]

    def latent_f(model):  # per-example outcome: the latent's mean activation on each text
        values = []
        for t in texts:
            _, cache = model.run_with_cache(model.to_tokens(t), names_filter=[HOOK])
            values.append(float(sae.encode(cache[HOOK])[0, 1:, f].mean()))
        return np.array(values)

    with torch.no_grad():
        curve = wb.dose_response(tiny_model, sae.W_dec[f].detach(), layer=1, alphas=[-4, 0, 4], eval=latent_f,
                                 progress=False)
    frame = curve.frame
    concept = frame[frame["direction"] == "concept"].set_index("alpha")
    assert set(frame["direction"]) == {"concept", "placebo"}
    for column in ("vs_placebo", "vs_placebo_ci_low", "vs_placebo_ci_high", "test", "p_value", "p_adjusted"):
        assert column in frame.columns and concept[column].notna().all()
    assert (concept["test"] == "sign_flip").all() and concept.loc[0.0, "vs_placebo"] == 0
    assert concept.loc[4.0, "value"] > concept.loc[0.0, "value"] > concept.loc[-4.0, "value"]
    assert concept.loc[4.0, "vs_placebo"] > 0
    assert tiny_model.active_hook_count() == 0
