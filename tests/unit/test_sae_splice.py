"""Splicing an SAE into the model (latents as a hook point) and the SAE quality metrics, each
against a hand computation on the HF model."""

import pytest
import torch
import torch.nn.functional as F

from workbench.common.errors import PatchingError
from workbench.features import SparseAutoencoder, sae_metrics
from workbench.models.splice import splice_sae

HOOK = "blocks.1.hook_resid_post"
LATENTS = HOOK + ".sae.hook_acts"
TEXTS = ["the cat sat on a mat", "paris is the capital of france", "the dog ran", "red blue green"]


def random_sae(d_in=64, d_sae=256, k=8, seed=0, **kwargs):
    sae = SparseAutoencoder(d_in, d_sae, k, HOOK, seed=seed, **kwargs)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed))
    return sae


def identity_sae(d_in=64):
    """TopK with k = d_in over [relu(x), relu(-x)]: reconstructs exactly."""
    sae = SparseAutoencoder(d_in, 2 * d_in, d_in, HOOK)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_spliced_output_is_unchanged_and_latents_are_cached(tiny_model):
    sae = random_sae()
    tokens = tiny_model.to_tokens(TEXTS[:2])
    with torch.no_grad():
        clean, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK])
        with tiny_model.sae(sae) if hasattr(tiny_model, "sae") else splice_sae(tiny_model, sae) as name:
            assert name == LATENTS and LATENTS in tiny_model.hook_names()
            spliced, latents = tiny_model.run_with_cache(tokens, names_filter=[LATENTS])
            assert tiny_model.active_interventions()[-1]["kind"] == "sae"
    assert torch.equal(spliced, clean)
    torch.testing.assert_close(latents[LATENTS], sae.encode(cache[HOOK]))
    assert tiny_model.active_hook_count() == 0
    assert LATENTS not in tiny_model.hook_names() and LATENTS not in tiny_model.bridge.hook_dict
    assert tiny_model.active_interventions() == []


def test_editing_a_latent_changes_the_output_by_its_decoded_difference(tiny_model):
    sae = random_sae()
    tokens = tiny_model.to_tokens(TEXTS[:2])
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=[HOOK])
        z = sae.encode(cache[HOOK])
        feature = int((z > 0).sum((0, 1)).argmax())  # one that fires

        def zero_feature(acts, hook):
            acts = acts.clone()
            acts[..., feature] = 0
            return acts

        with splice_sae(tiny_model, sae):
            edited = tiny_model.run_with_hooks(tokens, fwd_hooks=[(LATENTS, zero_feature)])
        z_edit = z.clone()
        z_edit[..., feature] = 0
        expected_act = cache[HOOK] + sae.decode(z_edit) - sae.decode(z)
        by_hand = tiny_model.run_with_hooks(tokens, fwd_hooks=[(HOOK, lambda act, hook: expected_act)])
        clean = tiny_model(tokens)
    torch.testing.assert_close(edited, by_hand, rtol=1e-5, atol=1e-5)
    assert (edited - clean).abs().max() > 1e-3


def test_hooks_go_away_on_error_and_double_splices_are_refused(tiny_model):
    sae = random_sae()
    with pytest.raises(RuntimeError, match="boom"):
        with splice_sae(tiny_model, sae):
            with pytest.raises(PatchingError, match="already spliced"):
                with splice_sae(tiny_model, sae):
                    pass
            raise RuntimeError("boom")
    assert tiny_model.active_hook_count() == 0 and LATENTS not in tiny_model.hook_names()
    with pytest.raises(PatchingError, match="no hook 'blocks.9.hook_resid_post'"):
        with splice_sae(tiny_model, sae, hook="blocks.9.hook_resid_post"):
            pass


def test_a_spliced_transcoder_leaves_the_output_unchanged_and_exposes_its_latents(tiny_model):
    tc = SparseAutoencoder(64, 128, 8, "blocks.1.mlp.hook_in", hook_out="blocks.1.hook_mlp_out")
    tokens = tiny_model.to_tokens(TEXTS[:1])
    with torch.no_grad():
        clean, cache = tiny_model.run_with_cache(tokens, names_filter=["blocks.1.mlp.hook_in"])
        with splice_sae(tiny_model, tc) as name:
            spliced, latents = tiny_model.run_with_cache(tokens, names_filter=[name])
    assert name == "blocks.1.mlp.hook_in.sae.hook_acts"
    assert torch.equal(spliced, clean)
    torch.testing.assert_close(latents[name], tc.encode(cache["blocks.1.mlp.hook_in"]))


# --- metrics ---------------------------------------------------------------------------------


def _hf_losses(hf_model, tiny_model, replace=None):
    """Per-text next-token CE on the HF model, layer 1's output replaced after BOS by ``replace(h)``."""
    layer = hf_model.model.layers[1]

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, 1:] = replace(h[:, 1:])
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = layer.register_forward_hook(hook) if replace is not None else None
    total, n = 0.0, 0
    try:
        with torch.no_grad():
            for text in TEXTS:
                ids = tiny_model.to_tokens(text)
                logits = hf_model(input_ids=ids).logits
                total += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
                n += ids.shape[1] - 1
    finally:
        if handle is not None:
            handle.remove()
    return total / n


def test_metrics_of_a_perfect_sae_against_hand_computation(tiny_model, hf_folder):
    hf_model = hf_folder[1]
    m = sae_metrics(tiny_model, identity_sae(), TEXTS, batch_size=3).set_index("metric")["value"]
    clean = _hf_losses(hf_model, tiny_model)
    zero = _hf_losses(hf_model, tiny_model, torch.zeros_like)
    assert m["ce_loss_clean"] == pytest.approx(clean, rel=1e-4)
    assert m["ce_loss_spliced"] == pytest.approx(clean, rel=1e-4)
    assert m["ce_loss_zero_ablation"] == pytest.approx(zero, rel=1e-4)
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-6)
    # L0, dead and dense by hand on the activations after BOS
    with torch.no_grad():
        acts = torch.cat([tiny_model.run_with_cache(t, names_filter=[HOOK])[1][HOOK][0, 1:] for t in TEXTS])
    z = torch.cat([acts.relu(), (-acts).relu()], 1)
    assert m["l0"] == pytest.approx(float((z > 0).sum(1).float().mean()))
    assert m["n_tokens"] == len(acts)
    assert m["dead_fraction"] == pytest.approx(float(((z > 0).sum(0) == 0).float().mean()))
    assert m["dense_fraction"] == pytest.approx(float(((z > 0).float().mean(0) > 0.1).float().mean()))


def test_metrics_of_a_random_sae_against_hand_computation(tiny_model, hf_folder):
    hf_model = hf_folder[1]
    sae = random_sae(k=4)
    m = sae_metrics(tiny_model, sae, TEXTS, batch_size=2).set_index("metric")["value"]
    with torch.no_grad():
        spliced = _hf_losses(hf_model, tiny_model, lambda h: sae(h))
        acts = torch.cat([tiny_model.run_with_cache(t, names_filter=[HOOK])[1][HOOK][0, 1:] for t in TEXTS])
        fvu = float((acts - sae(acts)).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum())
    clean, zero = _hf_losses(hf_model, tiny_model), _hf_losses(hf_model, tiny_model, torch.zeros_like)
    assert m["ce_loss_spliced"] == pytest.approx(spliced, rel=1e-4)
    assert m["ce_loss_recovered"] == pytest.approx((zero - spliced) / (zero - clean), rel=1e-3)
    assert m["fvu"] == pytest.approx(fvu, rel=1e-4)
    assert m["l0"] == pytest.approx(4.0)


def test_latents_are_cached_to_a_store_and_a_feature_direction_steers(tiny_model):
    """The latents hook works where any hook does: cache_activations, and model.steer along
    a feature's decoder row adds exactly alpha x that unit row to the residual stream."""
    from workbench.store import cache_activations

    sae = random_sae()
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(TEXTS[0]), names_filter=[HOOK])
        with tiny_model.sae(sae) as name:
            store = cache_activations(tiny_model, TEXTS[:1], hooks=[name], positions="last", progress=False)
        expected = sae.encode(cache[HOOK][0, -1])
        torch.testing.assert_close(torch.as_tensor(store[name][:][0]), expected)
        row = sae.W_dec[3] / sae.W_dec[3].norm()
        with tiny_model.steer(row, layer=1, alpha=2.0):
            _, steered = tiny_model.run_with_cache(tiny_model.to_tokens(TEXTS[0]), names_filter=[HOOK])
    torch.testing.assert_close(steered[HOOK] - cache[HOOK], 2.0 * row.expand_as(cache[HOOK]), atol=1e-5, rtol=0)
