"""The SAE object and its files: TopK against numpy, the training losses against sparsify's own
forward and hand computation, SAELens's documented layout, sparsify's own writer."""

import json

import numpy as np
import pytest
import torch

from workbench.features import SAEError, SparseAutoencoder, load_sae
from workbench.features.train import topk_losses

HOOK = "blocks.1.hook_resid_post"


def random_sae(d_in=8, d_sae=32, k=4, seed=0, **kwargs):
    sae = SparseAutoencoder(d_in, d_sae, k, HOOK, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g))
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_dec.copy_(torch.randn(sae.d_out, generator=g) * 0.1)
    return sae


def numpy_topk_encode(x, W_enc, b_enc, b_dec, k, scale=1.0):
    pre = (x * scale - b_dec) @ W_enc + b_enc
    z = np.zeros_like(pre)
    for i, row in enumerate(pre):
        top = np.argsort(-row)[:k]
        z[i, top] = np.maximum(row[top], 0)
    return z


def test_topk_encode_matches_a_numpy_reference():
    sae = random_sae(scale_in=0.5)
    x = torch.randn(20, 8)
    params = {n: p.detach().double().numpy() for n, p in sae.named_parameters()}
    expected = numpy_topk_encode(x.double().numpy(), params["W_enc"], params["b_enc"], params["b_dec"], 4, 0.5)
    z = sae.encode(x)
    np.testing.assert_allclose(z.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int((z > 0).sum(-1).max()) <= 4
    recon = (expected @ params["W_dec"] + params["b_dec"]) / 0.5
    np.testing.assert_allclose(sae(x).detach().numpy(), recon, rtol=1e-5, atol=1e-5)


def test_decoder_rows_start_unit_norm_and_encoder_tied():
    sae = SparseAutoencoder(8, 32, 4, HOOK)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)


def test_training_losses_match_sparsify_forward():
    sparsify = pytest.importorskip("sparsify")
    sae = random_sae(d_in=16, d_sae=64, k=6)
    coder = sparsify.SparseCoder(16, sparsify.SparseCoderConfig(num_latents=64, k=6))
    with torch.no_grad():
        coder.encoder.weight.copy_(sae.W_enc.T)
        coder.encoder.bias.copy_(sae.b_enc)
        coder.W_dec.copy_(sae.W_dec)
        coder.b_dec.copy_(sae.b_dec)
    x = torch.randn(32, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    ours = topk_losses(sae, x, x, dead, 6)
    theirs = coder(x, dead_mask=dead)
    torch.testing.assert_close(ours["recon"], theirs.sae_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["fvu"], theirs.fvu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["auxk"], theirs.auxk_loss, rtol=1e-5, atol=1e-6)
    assert ours["auxk"].item() > 0


def _dense_losses(sae, x, dead, k, aux_alpha):
    """The training loss written densely, autograd through relu, topk and a scatter (the oracle
    for the sparse backward of ``topk_encoder``)."""
    acts = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
    values, indices = acts.topk(k, dim=-1)
    z = torch.zeros_like(acts).scatter(-1, indices, values)
    e = x - (z @ sae.W_dec + sae.b_dec)
    total = (x - x.mean(0)).pow(2).sum()
    k_aux = min(x.shape[-1] // 2, int(dead.sum()))
    aux_values, aux_indices = torch.where(dead, acts, -torch.inf).topk(k_aux, dim=-1)
    z_aux = torch.zeros_like(acts).scatter(-1, aux_indices, aux_values)
    auxk = min(int(dead.sum()) / (x.shape[-1] // 2), 1.0) * (z_aux @ sae.W_dec - e.detach()).pow(2).sum() / total
    return e.pow(2).sum() / total + aux_alpha * auxk


@pytest.mark.parametrize("n_dead", [0, 3, 40])
def test_the_sparse_backward_equals_autograd_through_the_dense_topk(n_dead):
    sae = random_sae(d_in=12, d_sae=48, k=5)
    with torch.no_grad():
        sae.b_enc[:20] -= 30.0  # latents that never fire: some rows select zeros, AuxK picks zeros
    x = torch.randn(24, 12, generator=torch.Generator().manual_seed(3))
    x[:4] *= 0.01  # rows with fewer than k positive latents
    dead = torch.zeros(48, dtype=torch.bool)
    dead[torch.randperm(48, generator=torch.Generator().manual_seed(4))[:n_dead]] = True
    grads = []
    for loss_of in (lambda: (lambda o: o["fvu"] + 0.5 * o["auxk"])(topk_losses(sae, x, x, dead, 5)),
                    lambda: _dense_losses(sae, x, dead, 5, 0.5)):
        sae.zero_grad(set_to_none=True)
        loss_of().backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None})
    ours, dense = grads
    assert set(ours) == set(dense) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    for name in dense:
        torch.testing.assert_close(ours[name], dense[name], rtol=1e-4, atol=1e-6, msg=name)
    assert ours["W_enc"][:, :20].abs().max() == 0  # no gradient reaches latents that never fire


def test_auxk_and_fvu_by_hand():
    # d_in 4 -> k_aux 2; 1 dead latent -> scale 1/2, it alone reconstructs the residual.
    sae = SparseAutoencoder(4, 3, 1, HOOK)
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0, 0.5], [0, 1, 0], [0, 0, 0], [0, 0, 0]]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
        sae.b_dec.zero_()
    x = torch.tensor([[2.0, 1, 1, 0], [0, 3, 0, 1]])
    dead = torch.tensor([False, False, True])
    with torch.no_grad():
        out = topk_losses(sae, x, x, dead, 1)
    # latents: row 0 pre [2, 1, 1] -> keep latent 0 (2); row 1 pre [0, 3, 0] -> latent 1 (3)
    recon = np.array([[2.0, 0, 0, 0], [0, 3, 0, 0]])
    e = x.numpy() - recon
    total = ((x.numpy() - x.numpy().mean(0)) ** 2).sum()
    assert float(out["fvu"]) == pytest.approx((e**2).sum() / total)
    # dead latent 2 pre-acts (ReLU'd) [1, 0] decode to [0, 0, 1, 0] and [0, 0, 0, 0]
    e_hat = np.array([[0, 0, 1.0, 0], [0, 0, 0, 0]])
    assert float(out["auxk"]) == pytest.approx(0.5 * ((e_hat - e) ** 2).sum() / total)
    assert topk_losses(sae, x, x, torch.zeros(3, dtype=torch.bool), 1)["auxk"].item() == 0


def test_saved_files_follow_saelens_layout_and_reproduce_the_sae_on_raw_activations(tmp_path):
    from safetensors.numpy import load_file

    sae = random_sae(scale_in=0.25, model_name="tiny")
    sae.save(tmp_path / "sae")
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert {"architecture": "topk", "d_in": 8, "d_sae": 32, "k": 4, "dtype": "float32",
            "apply_b_dec_to_input": True, "normalize_activations": "none"}.items() <= cfg.items()
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["model_name"] == "tiny"
    assert cfg["metadata"]["workbench"]["activation_scale_in"] == 0.25
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    tensors = load_file(str(tmp_path / "sae" / "sae_weights.safetensors"))
    assert {k: v.shape for k, v in tensors.items()} == {"W_enc": (8, 32), "b_enc": (32,), "W_dec": (32, 8),
                                                        "b_dec": (8,)}
    # What an SAELens reader computes (no run-time scaling): the folded weights on raw x.
    x = torch.randn(10, 8).double().numpy()
    z = numpy_topk_encode(x, tensors["W_enc"], tensors["b_enc"], tensors["b_dec"], 4)
    np.testing.assert_allclose(z @ tensors["W_dec"] + tensors["b_dec"],
                               sae(torch.from_numpy(x).float()).detach().numpy(), rtol=1e-4, atol=1e-5)
    back = load_sae(tmp_path / "sae")
    assert (back.hook, back.k, back.scale_in, back.model_name) == (HOOK, 4, 0.25, "tiny")
    for name, p in sae.named_parameters():
        torch.testing.assert_close(dict(back.named_parameters())[name], p, rtol=1e-6, atol=1e-6)


def test_jumprelu_and_pre6_saelens_files_load(tmp_path):
    from safetensors.torch import save_file

    d_in, d_sae = 6, 12
    g = torch.Generator().manual_seed(3)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "b_enc": torch.randn(d_sae, generator=g),
         "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g),
         "threshold": torch.rand(d_sae, generator=g)}
    (tmp_path / "j").mkdir()
    save_file(w, str(tmp_path / "j" / "sae_weights.safetensors"))
    (tmp_path / "j" / "cfg.json").write_text(json.dumps({
        "architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "apply_b_dec_to_input": False,
        "normalize_activations": "none", "metadata": {"hook_name": HOOK, "model_name": "m",
                                                      "sae_lens_version": "6.5.0"}}))
    sae = load_sae(tmp_path / "j")
    x = torch.randn(7, d_in)
    pre = x @ w["W_enc"] + w["b_enc"]
    torch.testing.assert_close(sae.encode(x), pre.relu() * (pre > w["threshold"]))
    # The flat pre-6.0 layout: hook_point, activation_fn "topk" with its k.
    del w["threshold"]
    (tmp_path / "old").mkdir()
    save_file(w, str(tmp_path / "old" / "sae_weights.safetensors"))
    (tmp_path / "old" / "cfg.json").write_text(json.dumps({
        "d_in": d_in, "d_sae": d_sae, "hook_point": HOOK, "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 3}, "apply_b_dec_to_input": True}))
    old = load_sae(tmp_path / "old")
    assert (old.activation, old.k, old.hook) == ("topk", 3, HOOK)


def test_sparsify_written_folder_loads_and_agrees(tmp_path):
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(16, sparsify.SparseCoderConfig(num_latents=48, k=5))
    with torch.no_grad():
        coder.b_dec.normal_()
        coder.encoder.bias.normal_(0, 0.1)
    coder.save_to_disk(tmp_path / "layers.1")
    sae = load_sae(tmp_path / "layers.1")
    assert (sae.hook, sae.d_in, sae.d_sae, sae.k) == ("blocks.1.hook_resid_post", 16, 48, 5)
    x = torch.randn(9, 16)
    torch.testing.assert_close(sae(x), coder(x).sae_out, rtol=1e-5, atol=1e-5)
    with pytest.raises(SAEError, match=r"load one of: \['layers.1'\]"):
        load_sae(tmp_path)


def test_shapes_that_do_not_fit_the_model_name_both(tiny_model, tmp_path):
    random_sae(d_in=8).save(tmp_path / "small")
    with pytest.raises(SAEError, match=r"width is 8 .*hook 'blocks.1.hook_resid_post' .* has width 64"):
        load_sae(tmp_path / "small", model=tiny_model)
    assert load_sae(tmp_path / "small", model=None).d_in == 8
    random_sae(d_in=64).save(tmp_path / "fits")
    assert load_sae(tmp_path / "fits", model=tiny_model).d_in == 64
    with pytest.raises(ValueError, match="matches no hook"):
        load_sae(tmp_path / "fits", model=tiny_model, hook="blocks.1.hook_typo")


def test_malformed_and_unsupported_files_are_clear_errors(tmp_path):
    with pytest.raises(SAEError, match="no cfg.json"):
        load_sae(tmp_path)
    random_sae().save(tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(SAEError, match="architecture 'gated' is not supported"):
        load_sae(tmp_path / "a")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 33}))
    with pytest.raises(SAEError, match=r"W_enc \[8, 32\] \(cfg.json implies \[8, 33\]\)"):
        load_sae(tmp_path / "a")
    (tmp_path / "a" / "sae_weights.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "a" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="not a readable safetensors file"):
        load_sae(tmp_path / "a")
