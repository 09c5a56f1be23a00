"""Activation patching: exact against TransformerLens's patching functions and hand-made cases."""

from functools import partial

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

import workbench as wb
from workbench.common.errors import PatchingError
from workbench.patching import patched_logits
from workbench.patching.runs import RecordedRun

CLEAN = ["the cat sat on a mat and the dog ran to", "a dog sat on the mat and a cat ran to"]
CORRUPT = ["the dog sat on a mat and the cat ran to", "a cat sat on the mat and a dog ran to"]


@pytest.fixture(scope="module")
def metric(tiny_model):
    return wb.logit_diff(tiny_model, " house", " mat")


@pytest.fixture(scope="module")
def tokens(tiny_model):
    clean = torch.cat([tiny_model.to_tokens(p) for p in CLEAN])
    corrupt = torch.cat([tiny_model.to_tokens(p) for p in CORRUPT])
    return clean, corrupt


def test_resumed_run_equals_a_full_forward(tiny_model, tokens):
    run = RecordedRun(tiny_model, tokens[0])
    for layer in range(tiny_model.cfg.n_layers):
        resumed = run.resume(layer, copies=3)
        torch.testing.assert_close(resumed, run.logits.repeat(3, 1, 1), rtol=0, atol=1e-5)


def test_a_suffix_run_on_the_recorded_keys_equals_a_full_forward(tiny_model, tokens):
    # The tiny model has 4 query heads on 2 KV heads: the recorded K/V are per KV head.
    run = RecordedRun(tiny_model, tokens[0])
    assert run.can_resume_suffix
    keys, values = run.keys_values[0]
    n_pos = tokens[0].shape[1]
    assert keys.shape == values.shape == (2, 2, n_pos, tiny_model.cfg.d_model // tiny_model.cfg.n_heads)
    # Rows of copies joining at blocks 0 (two copies) and 2 (one): every start, first and last included.
    for start in range(n_pos):
        resumed = run.resume_suffix(start, [(0, 2), (2, 1)])
        assert resumed.shape[:2] == (6, n_pos - start)
        torch.testing.assert_close(resumed, run.logits[:, start:].repeat(3, 1, 1), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="increasing layer"):
        run.resume_suffix(1, [(2, 1), (0, 1)])


TL_SITES = [
    ("resid_pre", tl_patching.get_act_patch_resid_pre),
    ("resid_mid", tl_patching.get_act_patch_resid_mid),
    ("resid_post", partial(tl_patching.generic_activation_patch, patch_setter=tl_patching.layer_pos_patch_setter,
                           activation_name="resid_post", index_axis_names=("layer", "pos"))),
    ("attn_out", tl_patching.get_act_patch_attn_out),
    ("mlp_out", tl_patching.get_act_patch_mlp_out),
    ("head_out", tl_patching.get_act_patch_attn_head_out_all_pos),
    ("head_out_by_pos", tl_patching.get_act_patch_attn_head_out_by_pos),
]


@pytest.mark.parametrize("site,tl_function", TL_SITES, ids=[s for s, _ in TL_SITES])
def test_sweep_equals_transformer_lens(tiny_model, tokens, metric, site, tl_function):
    clean, corrupt = tokens
    _, clean_cache = tiny_model.bridge.run_with_cache(clean)
    # Under no_grad TransformerLens patches in place, as we do (see the resid_mid test below).
    with torch.no_grad():
        expected = tl_function(tiny_model.bridge, corrupt, clean_cache, metric)
    # A small batch_size forces several chunks per layer.
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, batch_size=5, progress=False)
    assert res.raw.shape == expected.shape
    assert (res.raw - expected.cpu()).abs().max() <= 1e-4


POSITION_SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "head_out_by_pos"]


@pytest.mark.parametrize("site", POSITION_SITES)
def test_reusing_the_prefix_never_changes_a_value(tiny_model, metric, site, monkeypatch):
    # Oracle: the full-length path (every cell runs every position), itself equal to
    # TransformerLens above. With one layer's worth of cells a pass (3 layers; 4 heads), every
    # pass starts at its own position, p = 0 to the last; with 5, passes mix positions and layers.
    calls = []
    resume_suffix = RecordedRun.resume_suffix
    monkeypatch.setattr(RecordedRun, "resume_suffix", lambda self, start, entries: calls.append(start)
                        or resume_suffix(self, start, entries))
    per_position = 3 * (4 if site == "head_out_by_pos" else 1)
    fast = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, batch_size=per_position // 3 * 3,
                          progress=False)
    assert calls == sorted(calls) and set(calls) == set(range(len(fast.clean_tokens)))
    mixed = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, batch_size=5, progress=False)
    n_calls = len(calls)
    full = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, batch_size=4, progress=False,
                          reuse_prefix=False)
    assert len(calls) == n_calls  # the full-length path does not reuse the prefix
    assert (fast.raw - full.raw).abs().max() <= 1e-5
    assert (mixed.raw - full.raw).abs().max() <= 1e-5
    assert fast.raw[:, 0].abs().max() > 0 and fast.raw.shape == full.raw.shape
    # Subsets: unordered and repeated layers, first and last position.
    part = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, layers=[2, 0, 2], positions=[-1, 0],
                          progress=False)
    torch.testing.assert_close(part.raw, full.raw[[2, 0, 2]][:, [-1, 0]], rtol=0, atol=1e-5)


def test_a_users_hook_gets_whole_prompts_and_acts_on_every_cell(tiny_model, metric, monkeypatch):
    # With a hook attached the sweep takes the full-length path: the hook sees every position,
    # and each cell equals a full forward with that hook and the patch (patched_logits).
    monkeypatch.setattr(RecordedRun, "resume_suffix", lambda *a: pytest.fail("prefix reused under a user hook"))
    seen = []

    def steer(act, hook):
        seen.append(act.shape[1])
        return act + 0.5

    with tiny_model.hooks([("blocks.1.hook_resid_post", steer)]):
        res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_pre", layers=[0, 2], progress=False)
        assert set(seen) == {len(res.clean_tokens)}
        for li, layer in enumerate([0, 2]):
            for pos in (0, 5, len(res.clean_tokens) - 1):
                logits = patched_logits(tiny_model, CLEAN, CORRUPT, "resid_pre", layer, [(pos,)])
                assert res.raw[li, pos].item() == pytest.approx(metric(logits).item(), abs=1e-5)
    steered = res.raw
    monkeypatch.undo()
    plain = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_pre", layers=[0, 2], progress=False)
    assert not torch.allclose(plain.raw, steered)


def test_a_resid_mid_patch_reaches_the_skip_connection(tiny_model, tokens, metric):
    # On the bridge, hook_resid_mid is the MLP norm's input; a hook that returns a new tensor
    # changes the MLP's input but not the residual the MLP output is added to (that is what
    # TransformerLens's patching gives with gradients on, when it clones). A patch must move
    # the residual stream itself: resid_post == patched resid_mid + mlp_out.
    clean, corrupt = tokens
    _, clean_cache = tiny_model.run_with_cache(clean, names_filter="blocks.1.hook_resid_mid")
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_mid", layers=[1], positions=[4], progress=False)
    source = clean_cache["blocks.1.hook_resid_mid"]

    def patch(act, hook):
        act[:, 4] = source[:, 4]
        return act

    with torch.no_grad():
        with tiny_model.hooks([("blocks.1.hook_resid_mid", patch)]):
            logits, cache = tiny_model.run_with_cache(corrupt, names_filter=["blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"])
    post_minus_mlp = cache["blocks.1.hook_resid_post"] - cache["blocks.1.hook_mlp_out"]
    torch.testing.assert_close(post_minus_mlp[:, 4], source[:, 4], atol=1e-5, rtol=1e-5)
    assert res.raw[0, 0].item() == pytest.approx(metric(logits).item(), abs=1e-5)


def test_noising_equals_transformer_lens_with_roles_swapped(tiny_model, tokens, metric):
    clean, corrupt = tokens
    _, corrupt_cache = tiny_model.bridge.run_with_cache(corrupt)
    with torch.no_grad():
        expected = tl_patching.get_act_patch_resid_pre(tiny_model.bridge, clean, corrupt_cache, metric)
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_pre", mode="noise", progress=False)
    assert (res.raw - expected.cpu()).abs().max() <= 1e-4
    # Normalised: 0 = no effect (the clean value), 1 = the corrupted value.
    gap = res.clean_value - res.corrupt_value
    torch.testing.assert_close(res.values, (res.clean_value - res.raw) / gap)


def test_patching_clean_into_clean_changes_nothing(tiny_model, metric):
    with pytest.warns(UserWarning, match="same on the clean and corrupted"):
        res = wb.patch_sweep(tiny_model, CLEAN, CLEAN, metric, site="resid_mid", progress=False)
    assert torch.allclose(res.raw, torch.full_like(res.raw, res.clean_value), atol=1e-5)
    assert torch.isnan(res.values).all()


def test_undefined_normalisation_warns_at_the_callers_line(tiny_model, metric):
    # PatchResult.from_raw sits between the sweep and normalise: the warning must still name
    # the line that called the sweep (or attribution_patch), not the library's.
    with pytest.warns(UserWarning, match="same on the clean and corrupted") as record:
        wb.patch_sweep(tiny_model, CLEAN, CLEAN, metric, site="resid_pre", layers=[0], positions=[1], progress=False)
    with pytest.warns(UserWarning, match="same on the clean and corrupted") as record_attr:
        wb.attribution_patch(tiny_model, CLEAN, CLEAN, metric, sites=["resid_pre"])
    assert {w.filename for w in [*record, *record_attr]} == {__file__}


@pytest.mark.parametrize("site,mode,cell", [("resid_mid", "denoise", (4,)), ("head_out", "noise", (2,)),
                                            ("head_out_by_pos", "denoise", (11, 1))])
def test_patched_logits_reproduce_a_sweep_cell(tiny_model, metric, site, mode, cell):
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, mode=mode, layers=[1], progress=False)
    logits = patched_logits(tiny_model, CLEAN, CORRUPT, site, 1, [cell], mode=mode)
    assert logits.shape[:2] == (len(CLEAN), len(res.clean_tokens))
    assert metric(logits).item() == pytest.approx(res.raw[(0, *cell)].item(), abs=1e-4)
    # Several cells at once: every head at one position is the position's total patch.
    heads = [(11, h) for h in range(tiny_model.cfg.n_heads)]
    every_head = patched_logits(tiny_model, CLEAN, CORRUPT, "head_out_by_pos", 1, heads, mode=mode)
    whole = patched_logits(tiny_model, CLEAN, CORRUPT, "head_out_by_pos", 1, [], mode=mode)
    torch.testing.assert_close(whole, tiny_model(tiny_model.to_tokens(CORRUPT if mode == "denoise" else CLEAN)))
    assert not torch.allclose(every_head, whole)
    assert tiny_model.active_hook_count() == 0


def test_patched_logits_refuse_bad_cells(tiny_model):
    with pytest.raises(PatchingError, match=r"cell \(1, 2\): site 'resid_pre' has axes \('pos',\)"):
        patched_logits(tiny_model, CLEAN, CORRUPT, "resid_pre", 0, [(1, 2)])
    with pytest.raises(PatchingError, match="pos: 40 is out of range"):
        patched_logits(tiny_model, CLEAN, CORRUPT, "resid_pre", 0, [(40,)])
    with pytest.raises(PatchingError, match="layer: 7 is out of range"):
        patched_logits(tiny_model, CLEAN, CORRUPT, "resid_pre", 7, [(1,)])
    with pytest.raises(PatchingError, match="mode="):
        patched_logits(tiny_model, CLEAN, CORRUPT, "resid_pre", 0, [(1,)], mode="restore")


def test_patching_the_last_residual_restores_fully(tiny_model, metric):
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_post", progress=False)
    last_layer, last_pos = -1, -1
    assert res.values[last_layer, last_pos].item() == pytest.approx(1.0, abs=1e-5)
    # Earlier positions of the last layer cannot reach the last position's logits any more.
    assert torch.allclose(res.values[last_layer, :-1], torch.zeros(res.values.shape[1] - 1), atol=1e-5)
    # Patching the embeddings of tokens both prompts share changes nothing.
    first = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_pre", layers=[0], progress=False)
    same = [p for p in range(len(first.clean_tokens)) if first.clean_tokens[p] == first.corrupt_tokens[p]]
    assert torch.allclose(first.values[0, same], torch.zeros(len(same)), atol=1e-5)


def test_subsets_frame_and_normalisation(tiny_model, metric):
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="head_out_by_pos", layers=[2, 0],
                         positions=[1, -1], heads=[3], progress=False)
    assert res.values.shape == (2, 2, 1)
    frame = res.frame
    assert list(frame.columns) == ["layer", "pos", "token", "corrupt_token", "head", "value", "raw"]
    assert frame[["layer", "pos", "head"]].values.tolist() == [[2, 1, 3], [2, 11, 3], [0, 1, 3], [0, 11, 3]]
    assert frame["token"].tolist()[:2] == ["the", "to"]
    expected = (res.raw - res.corrupt_value) / (res.clean_value - res.corrupt_value)
    torch.testing.assert_close(res.values, expected)
    assert len(res.top(3)) == 3


def test_custom_metrics_probability_and_kl(tiny_model):
    prob = wb.token_prob(tiny_model, " house")
    logits = tiny_model(tiny_model.to_tokens(CLEAN[0]))
    assert prob(logits).item() == pytest.approx(logits[0, -1].softmax(-1)[tiny_model.to_tokens("house", prepend_bos=False)[0, 0]].item())
    kl = wb.kl_to_clean(tiny_model, CLEAN)
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, kl, site="resid_pre", progress=False)
    assert res.clean_value == pytest.approx(0.0, abs=1e-5) and res.corrupt_value < 0
    # Patching the whole last position at the last layer's input leaves only that block to differ.
    assert res.raw.max().item() <= 1e-5


def test_bad_input_gives_clear_errors(tiny_model, metric):
    with pytest.raises(wb.patching.PatchingError, match="unknown site 'resid'.*resid_pre"):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid")
    with pytest.raises(wb.patching.PatchingError, match="positions: 40 is out of range"):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, positions=[40])
    with pytest.raises(wb.patching.PatchingError, match="layers: 3 is out of range"):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, layers=[3])
    with pytest.raises(wb.patching.PatchingError, match="same number of tokens.*token_alignment"):
        wb.patch_sweep(tiny_model, "the cat sat", "the cat sat on", metric)
    with pytest.raises(wb.patching.PatchingError, match="different token lengths.*#0: 3, #1: 4"):
        wb.patch_sweep(tiny_model, ["the cat", "the cat sat"], ["a dog", "a dog ran"], metric)
    with pytest.raises(wb.patching.PatchingError, match="returned shape \\(2,\\)"):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, lambda logits: logits[:, -1, 0], progress=False)
    with pytest.raises(wb.patching.PatchingError, match="positions= does not apply to site 'head_out'"):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="head_out", positions=[1])
    with pytest.raises(wb.patching.PatchingError, match="mode="):
        wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, mode="restore")
    table = wb.token_alignment(tiny_model, "the cat sat", "the cat sat on")
    assert isinstance(table, pd.DataFrame)
    assert table["same"].tolist() == [True, True, True, True, False]
    assert tiny_model.active_hook_count() == 0


def test_attribution_patching_uses_the_true_gradient(tiny_model, tokens, metric):
    clean, corrupt = tokens
    approx = wb.attribution_patch(tiny_model, CLEAN, CORRUPT, metric, sites=["resid_pre", "head_out"])
    # Oracle: gradients from autograd on activations kept by forward hooks.
    acts = {}

    def keeper(name):
        def keep(act, hook):
            act.retain_grad()
            acts[name] = act
            return act

        return keep

    names = [f"blocks.{l}.hook_resid_pre" for l in range(3)] + [f"blocks.{l}.attn.hook_z" for l in range(3)]
    with torch.enable_grad():
        value = metric(tiny_model.run_with_hooks(corrupt, fwd_hooks=[(n, keeper(n)) for n in names]))
        value.backward()
    _, clean_cache = tiny_model.run_with_cache(clean, names_filter=names)
    _, corrupt_cache = tiny_model.run_with_cache(corrupt, names_filter=names)
    for layer in range(3):
        name = f"blocks.{layer}.hook_resid_pre"
        change = ((clean_cache[name] - corrupt_cache[name]) * acts[name].grad).sum(dim=(0, 2))
        torch.testing.assert_close(approx["resid_pre"].raw[layer], value.item() + change, atol=1e-4, rtol=1e-4)
        name = f"blocks.{layer}.attn.hook_z"
        change = ((clean_cache[name] - corrupt_cache[name]) * acts[name].grad).sum(dim=(0, 1, 3))
        torch.testing.assert_close(approx["head_out"].raw[layer], value.item() + change, atol=1e-4, rtol=1e-4)
    # Layer 0's residual is the embedding, after which the model is far from linear; but cells where
    # the tokens agree have no difference to attribute, as in the exact sweep.
    exact = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="resid_pre", progress=False)
    agreement = wb.attribution_agreement(approx["resid_pre"], exact)
    assert agreement["n"] == exact.values.numel()
    assert -1 <= agreement["pearson"] <= 1
    assert tiny_model.active_hook_count() == 0
