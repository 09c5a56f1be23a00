"""Patching SAE latents (``feature_patch``): exact cells and the attribution estimate, each against a
hand computation that edits the hook's activation directly (not through the splice)."""

import pytest
import torch
from test_sae_splice import HOOK, random_sae

from workbench.common.errors import PatchingError
from workbench.patching.features import feature_patch

CLEAN = torch.tensor([[1, 17, 30, 23, 9, 31]])
CORRUPT = torch.tensor([[1, 17, 12, 23, 9, 31]])  # one token differs


def metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -1, 7].mean()


def _latents(model, sae, tokens):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        return cache[HOOK], sae.encode(cache[HOOK])


def _patched_by_hand(model, sae, base_tokens, source_tokens, position, feature):
    """The metric on the base run with one latent replaced, written at the SAE's hook as
    ``x + decode(z') - decode(z)``."""
    x, z = _latents(model, sae, base_tokens)
    _, z_source = _latents(model, sae, source_tokens)
    edited = z.clone()
    edited[:, position, feature] = z_source[:, position, feature]
    with torch.no_grad():
        act = x + sae.decode(edited) - sae.decode(z)
        return float(metric(model.run_with_hooks(base_tokens, fwd_hooks=[(HOOK, lambda a, hook: act)])))


@pytest.mark.parametrize("mode", ["denoise", "noise"])
def test_exact_cells_equal_a_hand_patched_forward(tiny_model, mode):
    sae = random_sae(k=16)
    table = feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, mode=mode, progress=False, batch_size=7)
    base, source = (CORRUPT, CLEAN) if mode == "denoise" else (CLEAN, CORRUPT)
    _, z_base = _latents(tiny_model, sae, base)
    _, z_source = _latents(tiny_model, sae, source)
    differing = (z_base != z_source).any(0).nonzero().tolist()
    # the positions before the changed token cannot differ (causal attention)
    assert {p for p, _ in differing} == {2, 3, 4, 5}
    assert len(table) == len(differing) == table.attrs["n_cells_differing"]
    assert sorted(map(tuple, table[["position", "feature"]].to_numpy().tolist())) == sorted(map(tuple, differing))
    for row in table.sample(6, random_state=0).itertuples():
        assert row.value == pytest.approx(_patched_by_hand(tiny_model, sae, base, source, row.position, row.feature),
                                          abs=1e-4)
        assert row.base_act == pytest.approx(float(z_base[0, row.position, row.feature]))
        assert row.source_act == pytest.approx(float(z_source[0, row.position, row.feature]))
    clean, corrupt = table.attrs["clean_value"], table.attrs["corrupt_value"]
    assert clean == pytest.approx(float(metric(tiny_model(CLEAN).detach())), abs=1e-5)
    expected = (table["value"] - corrupt) / (clean - corrupt) if mode == "denoise" else (clean - table["value"]) / (clean - corrupt)
    torch.testing.assert_close(torch.tensor(table["effect"].to_numpy()), torch.tensor(expected.to_numpy()))
    assert table["effect"].abs().is_monotonic_decreasing


def test_attribution_is_the_latent_gradient_times_the_difference(tiny_model):
    sae = random_sae(k=16)
    table = feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, method="attribution")
    x, z_base = _latents(tiny_model, sae, CORRUPT)
    _, z_clean = _latents(tiny_model, sae, CLEAN)
    leaf = z_base.clone().requires_grad_(True)
    decoded_base = sae.decode(z_base).detach()
    out = tiny_model.run_with_hooks(CORRUPT, fwd_hooks=[(HOOK, lambda a, hook: x + sae.decode(leaf) - decoded_base)])
    metric(out).backward()
    estimate = table.attrs["corrupt_value"] + ((z_clean - z_base) * leaf.grad).sum(0)
    for row in table.itertuples():
        assert row.value == pytest.approx(float(estimate[row.position, row.feature]), abs=1e-5)
    # the estimate tracks the exact patch for the largest cells of this near-linear toy
    exact = feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, progress=False).set_index(["position", "feature"])
    top = table.head(5).set_index(["position", "feature"])
    assert (top["value"] - exact.loc[top.index, "value"]).abs().max() < 0.5 * (top["value"] - table.attrs["corrupt_value"]).abs().max()


def test_restricted_cells_and_bad_arguments(tiny_model):
    sae = random_sae(k=16)
    table = feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, positions=[3], features=range(0, 256, 2),
                          progress=False)
    assert set(table["position"]) == {3} and (table["feature"] % 2 == 0).all()
    with pytest.raises(PatchingError, match="method"):
        feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, method="grad")
    with pytest.raises(PatchingError, match="features"):
        feature_patch(tiny_model, sae, CLEAN, CORRUPT, metric, features=[256])
    assert tiny_model.active_hook_count() == 0 and tiny_model.active_interventions() == []
