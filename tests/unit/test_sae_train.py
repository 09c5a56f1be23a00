"""train_sae: learns, is seeded, resumes exactly after a kill, caches from text, tracks dead latents."""

import json

import pytest
import torch

import workbench.features.train as tr
from workbench.features import SAEError, load_sae, train_sae

HOOK = "blocks.1.hook_resid_post"
TEXTS = ["the cat sat on a mat", "the dog ran to the house", "paris is the capital of france",
         "rome is the capital of italy", "berlin is in germany", "the red cat is blue"] * 12
SMALL = dict(expansion=2, k=4, batch_size=32, tokens=32 * 12, log_every=2, save_every=4, progress=False)


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    import workbench as wb

    return wb.cache_activations(tiny_model, TEXTS, [HOOK, "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"],
                                positions="all", path=tmp_path_factory.mktemp("acts") / "store", progress=False)


def params(sae):
    return {n: p.detach().clone() for n, p in sae.named_parameters()}


def test_training_learns_is_seeded_and_normalises(store):
    a = train_sae(store, HOOK, **SMALL)
    b = train_sae(store, HOOK, **SMALL)
    log = a.training_log
    assert list(log["step"]) == list(range(2, 13, 2))
    assert log["fvu"].iloc[-1] < log["fvu"].iloc[0]
    assert (log["l0"] == 4).all()
    for name, value in params(a).items():
        assert torch.equal(params(b)[name], value)
    # The scale makes the mean squared norm d_in (on the estimation sample: here the whole store).
    x = store.torch(HOOK).double()
    assert a.scale_in == pytest.approx(float(64 / x.pow(2).sum(-1).mean()) ** 0.5, rel=0.05)
    torch.testing.assert_close(a.W_dec.norm(dim=-1), torch.ones(a.d_sae))
    c = train_sae(store, HOOK, **{**SMALL, "seed": 1})
    assert not torch.equal(params(c)["W_enc"], params(a)["W_enc"])


def test_a_killed_run_resumes_to_the_same_sae(store, tmp_path, monkeypatch):
    whole = train_sae(store, HOOK, out=tmp_path / "whole", **SMALL)
    calls = {"n": 0}
    real = tr.training_step

    def dies_at_step_7(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # killed after the step-4 checkpoint, mid step 7
        return real(*args)

    monkeypatch.setattr(tr, "training_step", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_sae(store, HOOK, out=tmp_path / "killed", **SMALL)
    monkeypatch.setattr(tr, "training_step", real)
    assert json.loads((tmp_path / "killed" / "training.json").read_text())["status"] == "running"
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["step"] == 4
    assert not (tmp_path / "killed" / "cfg.json").exists()
    resumed = train_sae(store, HOOK, out=tmp_path / "killed", **SMALL)
    assert resumed.training_log.equals(whole.training_log)
    for name, value in params(whole).items():
        assert torch.equal(params(resumed)[name], value), name
    # A finished run is read back as it is; other settings in the same folder are refused.
    again = train_sae(store, HOOK, out=tmp_path / "killed", **SMALL)
    torch.testing.assert_close(params(again)["W_dec"], params(whole)["W_dec"], rtol=1e-6, atol=1e-6)
    assert load_sae(tmp_path / "killed").hook == HOOK
    with pytest.raises(SAEError, match="other settings .*k"):
        train_sae(store, HOOK, out=tmp_path / "killed", **{**SMALL, "k": 5})


def test_dead_latents_turn_on_the_auxk_loss(store):
    sae = train_sae(store, HOOK, **{**SMALL, "expansion": 8, "dead_after": 64})
    log = sae.training_log
    assert log["dead_fraction"].max() > 0
    assert (log["auxk"][log["dead_fraction"] > 0] > 0).all()
    assert (log["loss"] - log["fvu"] - tr.AUX_ALPHA * log["auxk"]).abs().max() < 1e-5


def test_batchtopk_becomes_jumprelu_with_the_mean_threshold(store):
    sae = train_sae(store, HOOK, **{**SMALL, "architecture": "batchtopk"})
    assert sae.activation == "jumprelu" and float(sae.threshold[0]) > 0
    assert torch.all(sae.threshold == sae.threshold[0])
    z = sae.encode(store.torch(HOOK))
    assert 0 < float((z > 0).sum(-1).float().mean()) < 16


def test_a_transcoder_trains_from_mlp_in_to_mlp_out(store, tmp_path):
    tc = train_sae(store, "blocks.1.mlp.hook_in", hook_out="blocks.1.hook_mlp_out", out=tmp_path / "tc", **SMALL)
    assert tc.is_transcoder and not tc.apply_b_dec_to_input
    assert tc.training_log["fvu"].iloc[-1] < tc.training_log["fvu"].iloc[0]
    back = load_sae(tmp_path / "tc")
    assert (back.hook, back.hook_out) == ("blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out")
    x = store.torch("blocks.1.mlp.hook_in")[:5]
    torch.testing.assert_close(back(x), tc(x), rtol=1e-5, atol=1e-5)


def test_model_and_texts_are_cached_into_the_output_folder(tiny_model, tmp_path):
    sae = train_sae((tiny_model, TEXTS), HOOK, out=tmp_path / "run", **SMALL)
    import workbench as wb

    cached = wb.ActivationStore.open(tmp_path / "run" / "store")
    assert cached.config["positions"]["policy"] != "all"  # BOS left out
    assert len(cached[HOOK]) == sum(len(tiny_model.to_tokens(t)[0]) - 1 for t in TEXTS)
    assert sae.model_name == tiny_model.source.name


def test_a_store_smaller_than_a_batch_is_refused(store):
    with pytest.raises(SAEError, match="fewer than one batch"):
        train_sae(store, HOOK, **{**SMALL, "batch_size": 10**6})
    with pytest.raises(SAEError, match="not in the store"):
        train_sae(store, "blocks.0.hook_resid_post", **SMALL)
