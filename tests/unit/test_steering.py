"""Steering and ablation contexts: exact effects, composition, no leaks, generation, dose-response."""

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.models.direction import Direction, load_directions, save_directions

PROMPT = "the cat sat on a mat and"


@pytest.fixture(scope="module")
def direction():
    rng = np.random.default_rng(0)
    return Direction(rng.standard_normal(64), "blocks.1.hook_resid_post", 1, "toy", "manual")


def resid(model, layer=1, site="resid_post"):
    with torch.no_grad():
        _, cache = model.run_with_cache(PROMPT, names_filter=f"blocks.{layer}.hook_{site}")
    return cache[f"blocks.{layer}.hook_{site}"]


def test_steer_adds_alpha_times_the_unit_direction(tiny_model, direction):
    base = resid(tiny_model)
    with tiny_model.steer(direction, alpha=3.0):          # layer and site from the Direction
        steered = resid(tiny_model)
        assert tiny_model.active_interventions() == [
            {"kind": "steer", "direction": "toy/manual@blocks.1.hook_resid_post",
             "hook": "blocks.1.hook_resid_post", "layer": 1, "alpha": 3.0}]
    torch.testing.assert_close(steered - base, 3.0 * direction.torch().expand_as(base), atol=1e-5, rtol=0)
    # A raw, unnormalised vector is scaled to unit length: alpha is the added length.
    with tiny_model.steer(torch.tensor(direction.vector) * 7, layer=1, alpha=3.0):
        torch.testing.assert_close(resid(tiny_model), steered, atol=1e-5, rtol=0)
    assert tiny_model.active_interventions() == [] and tiny_model.active_hook_count() == 0


def test_steers_compose_and_survive_inner_hook_calls(tiny_model, direction):
    base = resid(tiny_model, layer=2, site="resid_pre")
    other = direction.random_like(seed=1)
    with tiny_model.steer(direction, layer=1, alpha=2.0), tiny_model.steer(other, layer=1, alpha=-1.0):
        # run_with_cache / run_with_hooks inside the block must not remove the steering hooks.
        tiny_model.run_with_hooks(PROMPT, fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: a)])
        both = resid(tiny_model, layer=2, site="resid_pre")
        assert len(tiny_model.active_interventions()) == 2
    expected = 2.0 * direction.torch() - 1.0 * other.torch()
    torch.testing.assert_close(both - base, expected.expand_as(base), atol=1e-5, rtol=0)


def test_contexts_leave_nothing_behind_after_an_exception(tiny_model, direction):
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.steer(direction, alpha=5.0), tiny_model.ablate(direction, layers=[0, 2]):
            with tiny_model.ablate_heads([(0, 1)]):
                raise RuntimeError("boom")
    assert tiny_model.active_hook_count() == 0
    assert tiny_model.active_interventions() == []
    torch.testing.assert_close(resid(tiny_model), resid(tiny_model))


def test_steering_acts_at_every_generation_step(tiny_model, direction):
    def greedy(n):
        tokens = tiny_model.to_tokens(PROMPT)
        with torch.no_grad():
            for _ in range(n):
                tokens = torch.cat([tokens, tiny_model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
        return tokens

    plain = tiny_model.bridge.generate(PROMPT, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                                       return_type="tokens", verbose=False)
    with tiny_model.steer(direction, alpha=40.0):
        steered = tiny_model.bridge.generate(PROMPT, max_new_tokens=8, do_sample=False, stop_at_eos=False,
                                             return_type="tokens", verbose=False)
        expected = greedy(8)
        text = tiny_model.generate(PROMPT, max_new_tokens=4)
    assert steered.tolist() == expected.tolist()
    assert steered.tolist() != plain.tolist()
    assert text.startswith(PROMPT) and tiny_model.active_hook_count() == 0


def test_ablate_removes_the_component_along_the_direction(tiny_model, direction):
    base0 = resid(tiny_model, layer=0)
    with tiny_model.ablate(direction, layers=[1]):
        with torch.no_grad():
            _, cache = tiny_model.run_with_cache(PROMPT, names_filter="blocks.*.hook_resid_post")
    d = direction.torch()
    assert (cache["blocks.1.hook_resid_post"] @ d).abs().max() < 1e-5
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], base0)      # earlier layers untouched
    assert (cache["blocks.2.hook_resid_post"] @ d).abs().max() > 1e-3           # and later ones not forced


def test_head_and_neuron_ablation_zero_and_mean(tiny_model):
    reference = ["the dog ran to a house", "red blue green is was"]
    with torch.no_grad():
        _, ref = tiny_model.run_with_cache(reference, names_filter=["blocks.2.attn.hook_z", "blocks.1.mlp.hook_post"])
    with tiny_model.ablate_heads([(2, 1), (2, 3)]):
        _, cache = tiny_model.run_with_cache(PROMPT, names_filter="blocks.2.attn.hook_z")
    z = cache["blocks.2.attn.hook_z"]
    assert z[:, :, [1, 3]].abs().max() == 0 and z[:, :, 0].abs().max() > 0
    with tiny_model.ablate_heads([(2, 1)], mode="mean", reference=reference):
        _, cache = tiny_model.run_with_cache(PROMPT, names_filter="blocks.2.attn.hook_z")
    z_ref = ref["blocks.2.attn.hook_z"]
    expected_mean = z_ref.reshape(-1, *z_ref.shape[2:]).mean(0)[1]
    torch.testing.assert_close(cache["blocks.2.attn.hook_z"][0, 3, 1], expected_mean)
    with tiny_model.ablate_neurons([(1, 5)], mode="mean", reference=reference):
        _, cache = tiny_model.run_with_cache(PROMPT, names_filter="blocks.1.mlp.hook_post")
    post = ref["blocks.1.mlp.hook_post"]
    torch.testing.assert_close(cache["blocks.1.mlp.hook_post"][0, :, 5],
                               post.reshape(-1, post.shape[-1]).mean(0)[5].expand(cache["blocks.1.mlp.hook_post"].shape[1]))
    assert tiny_model.active_hook_count() == 0


def test_saved_probe_directions_load_straight_into_steering(tiny_model, direction, tmp_path):
    path = save_directions(tmp_path / "toy.safetensors", [direction])
    loaded = load_directions(path)["blocks.1.hook_resid_post"]
    base = resid(tiny_model)
    with tiny_model.steer(loaded, alpha=2.0):
        torch.testing.assert_close(resid(tiny_model) - base, 2.0 * direction.torch().expand_as(base), atol=1e-5, rtol=0)


def test_dose_response_with_placebo(tiny_model, direction):
    metric = wb.logit_diff(tiny_model, " house", " mat")
    tokens = tiny_model.to_tokens(PROMPT)

    def score(model):
        with torch.no_grad():
            return metric(model(tokens))

    curve = wb.dose_response(tiny_model, direction, alphas=[-4, 0, 4], eval=score, progress=False)
    frame = curve.frame
    assert frame["direction"].tolist() == ["concept"] * 3 + ["placebo"] * 3
    baseline = score(tiny_model).item()
    zero = frame[frame["alpha"] == 0]["value"]
    assert np.allclose(zero, baseline, atol=1e-6)
    with tiny_model.steer(direction, alpha=4.0):
        assert frame.iloc[2]["value"] == pytest.approx(score(tiny_model).item(), abs=1e-6)
    assert frame.iloc[2]["value"] != frame.iloc[5]["value"]   # the placebo is another direction
    assert frame.iloc[4]["value"] == pytest.approx(baseline, abs=1e-6)
    assert len(curve.plot().data) == 2

    class Result:  # an eval run: a metrics table, read at its overall row
        metrics = pd.DataFrame({"metric": ["acc", "acc"], "category": ["all", "x"], "value": [0.25, 0.5]})

    curve = wb.dose_response(tiny_model, direction, alphas=[1], eval=lambda m: Result(), metric="acc",
                             placebo=False, progress=False)
    assert curve.frame["value"].tolist() == [0.25]
    with pytest.raises(wb.patching.PatchingError, match="pass metric="):
        wb.dose_response(tiny_model, direction, alphas=[1], eval=lambda m: Result(), progress=False)
    with pytest.raises(wb.patching.PatchingError, match="one number"):
        wb.dose_response(tiny_model, direction, alphas=[1], eval=lambda m: torch.ones(2, 2), progress=False)
    assert tiny_model.active_hook_count() == 0


PROMPTS = ["the cat sat on a", "the dog ran to the", "paris is the capital of", "rome is in",
           "what is the capital of germany ?", "the red house is", "a blue mat was in the", "berlin is in"]


def test_dose_response_tests_the_concept_against_its_placebo_example_by_example(tiny_model, direction):
    """Per-example outcomes: the concept and the placebo at each alpha are paired; the tests
    agree with statsmodels' exact McNemar and scipy's paired permutation test."""
    from scipy.stats import permutation_test
    from statsmodels.stats.contingency_tables import mcnemar

    def last_logits(model):
        with torch.no_grad():
            return torch.stack([model(p)[0, -1] for p in PROMPTS])

    clean_top = last_logits(tiny_model).argmax(-1)
    alphas = [0, 6, 12]

    def same_top1(model):  # 0/1 per prompt: the prediction did not move
        return (last_logits(model).argmax(-1) == clean_top).float()

    def top_logit(model):  # continuous per prompt
        return last_logits(model).gather(1, clean_top[:, None])[:, 0]

    binary = wb.dose_response(tiny_model, direction, alphas=alphas, eval=same_top1, progress=False).frame
    continuous = wb.dose_response(tiny_model, direction, alphas=alphas, eval=top_logit, progress=False).frame
    placebo_vector = None
    for frame, kind in ((binary, "binary"), (continuous, "continuous")):
        concept = frame[frame["direction"] == "concept"].set_index("alpha")
        assert frame[frame["direction"] == "placebo"]["p_value"].isna().all()
        assert concept.loc[0, "vs_placebo"] == 0 and concept.loc[0, "p_value"] == 1.0  # alpha 0: the same model
        for alpha in alphas[1:]:
            with tiny_model.steer(direction, alpha=alpha):
                c = (same_top1 if kind == "binary" else top_logit)(tiny_model).numpy()
            if placebo_vector is None:
                placebo_vector = _placebo(tiny_model, direction)
            with tiny_model.steer(placebo_vector, layer=direction.layer, alpha=alpha):
                p = (same_top1 if kind == "binary" else top_logit)(tiny_model).numpy()
            assert concept.loc[alpha, "vs_placebo"] == pytest.approx(float(np.mean(c - p)), abs=1e-6)
            if kind == "binary":
                table = [[np.sum((c == 1) & (p == 1)), np.sum((c == 1) & (p == 0))],
                         [np.sum((c == 0) & (p == 1)), np.sum((c == 0) & (p == 0))]]
                assert concept.loc[alpha, "test"] == "mcnemar_exact"
                assert concept.loc[alpha, "p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
            else:
                d = c - p
                ref = permutation_test((d, np.zeros_like(d)), lambda x, y, axis: np.mean(x - y, axis=axis),
                                       permutation_type="samples", n_resamples=np.inf, vectorized=True)
                assert concept.loc[alpha, "test"] == "sign_flip"
                assert concept.loc[alpha, "p_value"] == pytest.approx(ref.pvalue, rel=1e-6)
        assert (concept["vs_placebo_ci_low"] <= concept["vs_placebo"] + 1e-9).all()
        assert (concept["p_adjusted"] >= concept["p_value"] - 1e-12).all()
    last = continuous[continuous["direction"] == "concept"].iloc[-1]
    assert last["vs_placebo"] != 0 and last["p_value"] < 1  # the checks above compared real differences


def _placebo(model, direction):
    """The placebo dose_response draws: a seeded random direction orthogonal to the concept's."""
    from workbench.models.interventions import unit_vector

    concept = unit_vector(model, direction)[0].numpy().astype(np.float64)
    random = np.random.default_rng(0).standard_normal(concept.shape[0])
    random -= (random @ concept) * concept
    return random.astype(np.float32)


def test_dose_response_outcome_column_of_an_eval_result(tiny_model, direction):
    class Result:
        def __init__(self, values):
            self.samples = pd.DataFrame({"example_id": ["a", "b", "c"], "refusal": values})

    calls = iter([[1, 1, 0], [0, 0, 0]])
    curve = wb.dose_response(tiny_model, direction, alphas=[2], eval=lambda m: Result(next(calls)),
                             outcome="refusal", progress=False)
    concept = curve.frame.iloc[0]
    assert concept["value"] == pytest.approx(2 / 3) and concept["vs_placebo"] == pytest.approx(2 / 3)
    assert concept["test"] == "mcnemar_exact" and concept["p_value"] == pytest.approx(0.5)  # 2 discordant
    with pytest.raises(wb.patching.PatchingError, match="outcome='correct'.*refusal"):
        wb.dose_response(tiny_model, direction, alphas=[2], eval=lambda m: Result([1, 0, 0]),
                         outcome="correct", progress=False)


def test_bad_input(tiny_model, direction):
    with pytest.raises(wb.patching.PatchingError, match="layer 7 is out of range.*0..2"):
        tiny_model.steer(direction, layer=7)
    with pytest.raises(wb.patching.PatchingError, match="has 3 dimensions.*64"):
        tiny_model.steer([1.0, 2.0, 3.0], layer=0)
    with pytest.raises(wb.patching.PatchingError, match="layer: required"):
        tiny_model.steer(np.ones(64))
    with pytest.raises(wb.patching.PatchingError, match="site 'resid_mid'"):
        tiny_model.steer(direction, site="resid_mid")
    with pytest.raises(wb.patching.PatchingError, match="norm 0"):
        tiny_model.steer(np.zeros(64), layer=0)
    with pytest.raises(wb.patching.PatchingError, match="index 9 at layer 0 is out of range"):
        tiny_model.ablate_heads([(0, 9)])
    with pytest.raises(wb.patching.PatchingError, match="reference="):
        tiny_model.ablate_neurons([(0, 1)], mode="mean")
    assert tiny_model.active_hook_count() == 0
