"""Fused SDPA attention, the default: same results as HF's SDPA, same hooks, eager where watched."""

import pytest
import torch
from transformers import DynamicCache, LlamaForCausalLM

import workbench as wb
from workbench.models.fast_attention import (
    disable_sdpa_when_unhooked,
    eager_while,
    enable_sdpa_when_unhooked,
    sdpa_enabled,
    sdpa_while,
)

TEXTS = ["the cat sat on the mat and the dog ran to the house", "what is the capital of france ?"]
ATTN_HOOKS = ("hook_in", "hook_q", "hook_k", "hook_v", "hook_cos", "hook_sin", "hook_rot_q",
              "hook_rot_k", "hook_z", "hook_out")


@pytest.fixture(scope="module")
def model(hf_folder):
    # Our own instance: tests here switch the attention of this model on and off.
    return wb.load_model(hf_folder[0], device="cpu")


@pytest.fixture(scope="module")
def hf_reference(hf_folder):
    """The same checkpoint as a plain HF model, by attention implementation."""
    return {impl: LlamaForCausalLM.from_pretrained(hf_folder[0], dtype=torch.float32,
                                                   attn_implementation=impl).eval()
            for impl in ("sdpa", "eager")}


@pytest.fixture
def fast(model):
    assert enable_sdpa_when_unhooked(model.bridge) == model.cfg.n_layers
    yield model
    enable_sdpa_when_unhooked(model.bridge)  # the default, whatever a test did


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls to scaled_dot_product_attention (one per layer that took the fused path)."""
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return calls


def both(model, fn):
    """``fn(model)`` with the original (eager) attention, then with the default fused path."""
    assert model.fast_attention
    with model.eager_attention():
        original = fn(model)
    return original, fn(model)


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


def test_fused_is_the_default_and_can_be_switched_off(hf_folder, model, sdpa_calls):
    n = model.cfg.n_layers
    assert model.fast_attention and all(sdpa_enabled(b.attn) for b in model.bridge.blocks)
    eager = wb.load_model(hf_folder[0], device="cpu", fast_attention=False)
    assert not eager.fast_attention and not any(sdpa_enabled(b.attn) for b in eager.bridge.blocks)
    with torch.no_grad():
        eager(TEXTS[0])
        assert not sdpa_calls
        eager.fast_attention = True
        eager(TEXTS[0])
        assert len(sdpa_calls) == n
        eager.fast_attention = False
        eager(TEXTS[0])
        assert len(sdpa_calls) == n
    with model.eager_attention():
        assert not model.fast_attention
        with torch.no_grad():
            model(TEXTS[0])
        assert len(sdpa_calls) == n
    assert model.fast_attention  # back after the block
    with pytest.raises(RuntimeError), eager_while(model.bridge):
        raise RuntimeError("boom")
    assert all(sdpa_enabled(b.attn) for b in model.bridge.blocks)


@torch.no_grad()
def test_default_matches_hf_sdpa_and_eager_matches_hf_eager(model, hf_reference, sdpa_calls):
    # Fidelity: the default forward against HF's default (SDPA) attention, the eager path
    # against HF's eager attention, on one unpadded and one padded batch.
    tokens = model.to_tokens(TEXTS[0])
    batch = model.to_tokens(TEXTS)  # right-padded by the tokenizer
    mask = (batch != model.tokenizer.pad_token_id).long()
    mask[:, 0] = 1
    for inputs, kwargs in ((tokens, {}), (batch, {"attention_mask": mask})):
        ours = model(inputs, **kwargs)
        sdpa = hf_reference["sdpa"](inputs, **kwargs).logits
        ok, diff = close(ours, sdpa, atol=1e-4)
        assert ok, diff
        with model.eager_attention():
            eager = model(inputs, **kwargs)
        ok, diff = close(eager, hf_reference["eager"](inputs, **kwargs).logits, atol=1e-4)
        assert ok, diff
    assert sdpa_calls


@torch.no_grad()
def test_a_pattern_hook_runs_only_its_layer_eagerly_with_the_same_logits(model, sdpa_calls):
    n = model.cfg.n_layers
    tokens = model.to_tokens(TEXTS[0])
    plain = model(tokens)
    assert len(sdpa_calls) == n
    for layer in range(n):
        for point in ("hook_pattern", "hook_attn_scores"):
            sdpa_calls.clear()
            seen = []

            def note(act, hook, seen=seen):
                seen.append(hook.name)

            hooked = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.{point}", note)])
            assert seen == [f"blocks.{layer}.attn.{point}"]
            assert len(sdpa_calls) == n - 1  # only the watched layer ran eagerly
            ok, diff = close(hooked, plain)
            assert ok, (layer, point, diff)
    # The eager layer really is the eager computation: its pattern equals the all-eager one.
    with model.eager_attention():
        _, eager = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_pattern"])
    _, mixed = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_pattern"])
    ok, diff = close(eager["blocks.1.attn.hook_pattern"], mixed["blocks.1.attn.hook_pattern"])
    assert ok, diff


@torch.no_grad()
def test_logits_match_on_tokens(model, sdpa_calls):
    tokens = model.to_tokens(TEXTS[0])
    original, fused = both(model, lambda m: m(tokens))
    assert len(sdpa_calls) == model.cfg.n_layers  # every layer took the fused path
    ok, diff = close(original, fused)
    assert ok, diff


@torch.no_grad()
def test_logits_match_on_padded_batches(model, sdpa_calls):
    # Strings of different lengths: the bridge pads them and passes a padding mask.
    original, fused = both(model, lambda m: m(TEXTS))
    assert sdpa_calls
    ok, diff = close(original, fused)
    assert ok, diff
    # An explicit left-padding mask on a token batch (fully masked query rows included).
    tokens = model.to_tokens(TEXTS[0]).repeat(3, 1)
    mask = torch.ones_like(tokens)
    mask[1, :4] = 0
    mask[2, :9] = 0
    tokens = tokens.masked_fill(mask == 0, model.tokenizer.pad_token_id)
    original, fused = both(model, lambda m: m(tokens, attention_mask=mask))
    ok, diff = close(original, fused)
    assert ok, diff


@torch.no_grad()
def test_other_attention_hooks_see_the_same_values(model, sdpa_calls):
    names = lambda n: ".attn." in n and n.rsplit(".", 1)[1] in ATTN_HOOKS  # noqa: E731
    (_, original), (_, fused) = both(model, lambda m: m.run_with_cache(TEXTS, names_filter=names))
    assert len(sdpa_calls) == model.cfg.n_layers
    assert sorted(original.keys()) == sorted(fused.keys())
    expected = {f"blocks.{i}.attn.{h}" for i in range(model.cfg.n_layers) for h in ATTN_HOOKS}
    assert expected <= set(original.keys())
    for name in original.keys():
        if name.startswith("blocks.0.") and not name.endswith(("hook_z", ".o.hook_in", "hook_out")):
            # Before layer 0's attention core nothing differs, bit for bit.
            assert torch.equal(original[name], fused[name]), name
        ok, diff = close(original[name], fused[name])
        assert ok, (name, diff)


@torch.no_grad()
def test_caching_the_pattern_uses_the_original_path(model, sdpa_calls):
    names = ["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_attn_scores", "blocks.2.hook_resid_post"]
    (logits_o, original), (logits_f, fused) = both(
        model, lambda m: m.run_with_cache(TEXTS, names_filter=names)
    )
    assert len(sdpa_calls) == model.cfg.n_layers - 1  # layer 0 fell back, the others did not
    assert sorted(fused.keys()) == sorted(names)
    # Layer 0 ran the original attention on identical inputs: bit-identical pattern and scores.
    assert torch.equal(original["blocks.0.attn.hook_pattern"], fused["blocks.0.attn.hook_pattern"])
    assert torch.equal(original["blocks.0.attn.hook_attn_scores"], fused["blocks.0.attn.hook_attn_scores"])
    assert close(original["blocks.2.hook_resid_post"], fused["blocks.2.hook_resid_post"])[0]
    assert close(logits_o, logits_f)[0]
    # Caching everything (names_filter=None) hooks every pattern: no fused layer at all.
    sdpa_calls.clear()
    (_, original), (_, fused) = both(model, lambda m: m.run_with_cache(TEXTS[0]))
    assert not sdpa_calls
    assert original.keys() == fused.keys()
    assert all(torch.equal(original[k], fused[k]) for k in original.keys())


@torch.no_grad()
def test_pattern_hooks_still_fire_and_edit(model, fast, sdpa_calls):
    def uniform(pattern, hook):
        causal = torch.ones_like(pattern).tril()
        return causal / causal.sum(-1, keepdim=True)

    hooks = [("blocks.0.attn.hook_pattern", uniform)]
    edited = model.run_with_hooks(TEXTS[0], fwd_hooks=hooks)
    assert len(sdpa_calls) == model.cfg.n_layers - 1
    with model.eager_attention():
        assert close(edited, model.run_with_hooks(TEXTS[0], fwd_hooks=hooks))[0]
    assert not close(edited, model(TEXTS[0]), atol=1e-3)[0]  # the edit mattered


@torch.no_grad()
def test_edits_at_other_hooks_flow_through_the_fused_path(model, sdpa_calls):
    def zero_head(v, hook):
        v = v.clone()
        v[:, :, 0] = 0
        return v

    hooks = [("blocks.0.attn.hook_v", zero_head), ("blocks.1.attn.hook_rot_q", lambda q, hook: q * 2)]
    original, fused = both(model, lambda m: m.run_with_hooks(TEXTS, fwd_hooks=hooks))
    assert len(sdpa_calls) == model.cfg.n_layers
    assert close(original, fused)[0]


def test_gradients_match_and_backward_hooks_fall_back(model, sdpa_calls):
    tokens = model.to_tokens(TEXTS[0])

    weight = model.bridge.blocks[0].attn.q.original_component.weight

    def grad_of_q_proj(m):
        weight.grad = None
        m(tokens)[0, -1].logsumexp(-1).backward()
        grad, weight.grad = weight.grad, None
        return grad

    original, fused = both(model, grad_of_q_proj)
    assert len(sdpa_calls) == model.cfg.n_layers  # the backward ran through SDPA
    assert close(original, fused)[0]

    # Gradients at activations, as attribution patching takes them (backward hooks on
    # hook points other than the pattern keep every layer fused).
    def activation_grads(m):
        grads = {}

        def keep(grad, hook):
            grads[hook.name] = grad.detach().clone()

        names = [f"blocks.{i}.hook_resid_pre" for i in range(m.cfg.n_layers)] + ["blocks.1.attn.hook_z"]
        with m.hooks(bwd_hooks=[(name, keep) for name in names]):
            m(tokens)[0, -1].log_softmax(-1)[5].backward()
        return grads

    sdpa_calls.clear()
    original, fused = both(model, activation_grads)
    assert len(sdpa_calls) == model.cfg.n_layers
    assert original.keys() == fused.keys() and len(fused) == model.cfg.n_layers + 1
    for name in original:
        scale = original[name].abs().max().item()  # float rounding, relative to the gradient
        ok, diff = close(original[name], fused[name], atol=1e-5 * max(scale, 1.0))
        assert ok, (name, diff, scale)

    sdpa_calls.clear()
    grads = {}

    def keep(grad, hook):
        grads[hook.name] = grad

    with model.hooks(bwd_hooks=[("blocks.0.attn.hook_pattern", keep)]):
        model(tokens)[0, -1].sum().backward()
    assert len(sdpa_calls) == model.cfg.n_layers - 1 and "blocks.0.attn.hook_pattern" in grads
    model.hf_model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_generate_is_unchanged_and_decodes_fused(model, sdpa_calls):
    prompt = "the cat sat on"
    original, fused = both(model, lambda m: m.generate(prompt, max_new_tokens=6, stop_at_eos=False))
    assert fused == original
    # Prefill and all 5 later decode steps (KV cache holding earlier positions) were fused.
    assert len(sdpa_calls) == 6 * model.cfg.n_layers
    kwargs = dict(max_new_tokens=6, do_sample=True, seed=3, temperature=1.5)
    original, fused = both(model, lambda m: m.generate(prompt, **kwargs))
    assert fused == original


@torch.no_grad()
def test_enable_disable_are_idempotent_and_per_instance(model, tiny_model):
    n = model.cfg.n_layers
    disable_sdpa_when_unhooked(model.bridge)
    others = [sdpa_enabled(b.attn) for b in tiny_model.bridge.blocks]
    assert enable_sdpa_when_unhooked(model.bridge) == n
    assert enable_sdpa_when_unhooked(model.bridge) == n
    assert all(sdpa_enabled(b.attn) for b in model.bridge.blocks)
    # The HF module under the bridge keeps its own forward (the bridge forwards setattr to it).
    assert "forward" not in vars(model.bridge.blocks[0].attn.original_component)
    disable_sdpa_when_unhooked(model.bridge)
    disable_sdpa_when_unhooked(model.bridge)
    assert not any(sdpa_enabled(b.attn) for b in model.bridge.blocks)
    assert "forward" not in vars(model.bridge.blocks[0].attn)
    assert [sdpa_enabled(b.attn) for b in tiny_model.bridge.blocks] == others  # untouched
    enable_sdpa_when_unhooked(model.bridge)


def test_sdpa_while_restores_what_was_there(model):
    blocks = model.bridge.blocks
    disable_sdpa_when_unhooked(model.bridge)
    try:
        with sdpa_while(model.bridge):
            assert all(sdpa_enabled(b.attn) for b in blocks)
        assert not any(sdpa_enabled(b.attn) for b in blocks)
        with pytest.raises(RuntimeError), sdpa_while(model.bridge):
            raise RuntimeError("boom")
        assert not any(sdpa_enabled(b.attn) for b in blocks)
    finally:
        enable_sdpa_when_unhooked(model.bridge)
    with sdpa_while(model.bridge):
        pass
    assert all(sdpa_enabled(b.attn) for b in blocks)  # enabled before: stays enabled


@torch.no_grad()
def test_a_cache_holding_earlier_positions_stays_fused_and_equal(model, fast, sdpa_calls):
    attn = model.bridge.blocks[0].attn
    cfg = model.hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 3, cfg.hidden_size, generator=gen)
    angles = torch.randn(2, 3, head_dim // 2, generator=gen).repeat(1, 1, 2)
    rope = (angles.cos(), angles.sin())
    past = [torch.randn(2, cfg.num_key_value_heads, 4, head_dim, generator=gen) for _ in range(2)]
    # A float HF mask over 4 cached + 3 new keys: causal from position 4 on, and in the first
    # sequence cached key 1 padded away.
    low = torch.finfo(torch.float32).min
    mask = torch.zeros(2, 1, 3, 7).masked_fill(torch.ones(3, 7, dtype=torch.bool).tril(4).logical_not(), low)
    mask[0, :, :, 1] = low
    results = {}
    for label, context in (("eager", eager_while), ("fused", sdpa_while)):
        for kind, attention_mask in (("mask", mask), ("none", None)):
            cache = DynamicCache()
            cache.update(past[0].clone(), past[1].clone(), 0)
            with context(model.bridge):
                out, _ = attn(hidden_states=hidden, position_embeddings=rope,
                              attention_mask=attention_mask, cache=cache)
            assert cache.get_seq_length(0) == 7  # the new keys were appended
            results[label, kind] = out
    assert len(sdpa_calls) == 2  # both fused calls took SDPA, with 4 positions cached
    for kind in ("mask", "none"):
        ok, diff = close(results["eager", kind], results["fused", kind])
        assert ok, (kind, diff)
    assert not close(results["fused", "mask"], results["fused", "none"], atol=1e-3)[0]  # the mask mattered


@torch.no_grad()
def test_half_precision_and_training_fall_back(hf_folder, model, sdpa_calls):
    bf16 = wb.load_model(hf_folder[0], device="cpu", dtype="bfloat16")
    assert bf16.fast_attention  # switched on, but bf16 activations take the original path
    bf16(TEXTS[0])
    assert not sdpa_calls
    enable_sdpa_when_unhooked(bf16.bridge, low_precision=True)
    bf16(TEXTS[0])
    assert len(sdpa_calls) == bf16.cfg.n_layers

    sdpa_calls.clear()
    for block in model.bridge.blocks:
        block.attn.original_component.attention_dropout = 0.5
    model.bridge.train()
    try:
        model(TEXTS[0])
        assert not sdpa_calls
    finally:
        model.bridge.eval()
        for block in model.bridge.blocks:
            block.attn.original_component.attention_dropout = 0.0
