"""SDPA attention when hook_attn_scores / hook_pattern are unhooked: same results, same hooks."""

import pytest
import torch

import workbench as wb
from workbench.models.fast_attention import (
    disable_sdpa_when_unhooked,
    enable_sdpa_when_unhooked,
    sdpa_enabled,
    sdpa_while,
)

TEXTS = ["the cat sat on the mat and the dog ran to the house", "what is the capital of france ?"]
ATTN_HOOKS = ("hook_in", "hook_q", "hook_k", "hook_v", "hook_cos", "hook_sin", "hook_rot_q",
              "hook_rot_k", "hook_z", "hook_out")


@pytest.fixture(scope="module")
def model(hf_folder):
    # Our own instance: the shared tiny_model fixture must not be wrapped.
    return wb.load_model(hf_folder[0], device="cpu")


@pytest.fixture
def fast(model):
    assert enable_sdpa_when_unhooked(model.bridge) == model.cfg.n_layers
    yield model
    disable_sdpa_when_unhooked(model.bridge)


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
    """``fn(model)`` with the original attention, then with the fused path."""
    disable_sdpa_when_unhooked(model.bridge)
    original = fn(model)
    enable_sdpa_when_unhooked(model.bridge)
    try:
        return original, fn(model)
    finally:
        disable_sdpa_when_unhooked(model.bridge)


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()


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
    disable_sdpa_when_unhooked(model.bridge)
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
    assert sdpa_calls
    assert close(original, fused)[0]

    sdpa_calls.clear()
    grads = {}

    def keep(grad, hook):
        grads[hook.name] = grad

    with model.hooks(bwd_hooks=[("blocks.0.attn.hook_pattern", keep)]):
        enable_sdpa_when_unhooked(model.bridge)
        try:
            model(tokens)[0, -1].sum().backward()
        finally:
            disable_sdpa_when_unhooked(model.bridge)
    assert len(sdpa_calls) == model.cfg.n_layers - 1 and "blocks.0.attn.hook_pattern" in grads
    model.hf_model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_generate_is_unchanged(model):
    prompt = "the cat sat on"
    original, fused = both(model, lambda m: m.generate(prompt, max_new_tokens=6))
    assert fused == original
    kwargs = dict(max_new_tokens=6, do_sample=True, seed=3, temperature=1.5)
    original, fused = both(model, lambda m: m.generate(prompt, **kwargs))
    assert fused == original


@torch.no_grad()
def test_enable_disable_are_idempotent_and_per_instance(model, tiny_model):
    n = model.cfg.n_layers
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


def test_sdpa_while_restores_what_was_there(model):
    blocks = model.bridge.blocks
    with sdpa_while(model.bridge):
        assert all(sdpa_enabled(b.attn) for b in blocks)
    assert not any(sdpa_enabled(b.attn) for b in blocks)
    enable_sdpa_when_unhooked(model.bridge)
    try:
        with sdpa_while(model.bridge):
            pass
        assert all(sdpa_enabled(b.attn) for b in blocks)  # enabled before: stays enabled
    finally:
        disable_sdpa_when_unhooked(model.bridge)
    with pytest.raises(RuntimeError), sdpa_while(model.bridge):
        raise RuntimeError("boom")
    assert not any(sdpa_enabled(b.attn) for b in blocks)


@torch.no_grad()
def test_a_cache_holding_earlier_positions_falls_back(model, fast, sdpa_calls):
    from transformers import DynamicCache

    attn = model.bridge.blocks[0].attn
    cfg = model.hf_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    hidden = torch.randn(1, 1, cfg.hidden_size)
    cos, sin = torch.ones(1, 1, head_dim), torch.zeros(1, 1, head_dim)
    attn(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None, cache=DynamicCache())
    assert len(sdpa_calls) == 1  # an empty cache: the fused path
    cache = DynamicCache()
    cache.update(torch.randn(1, cfg.num_key_value_heads, 4, head_dim),
                 torch.randn(1, cfg.num_key_value_heads, 4, head_dim), 0)
    attn(hidden_states=hidden, position_embeddings=(cos, sin), attention_mask=None, cache=cache)
    assert len(sdpa_calls) == 1  # earlier positions cached: the original forward


@torch.no_grad()
def test_half_precision_and_training_fall_back(hf_folder, model, sdpa_calls):
    bf16 = wb.load_model(hf_folder[0], device="cpu", dtype="bfloat16")
    enable_sdpa_when_unhooked(bf16.bridge)
    bf16(TEXTS[0])
    assert not sdpa_calls
    enable_sdpa_when_unhooked(bf16.bridge, low_precision=True)
    bf16(TEXTS[0])
    assert len(sdpa_calls) == bf16.cfg.n_layers

    sdpa_calls.clear()
    enable_sdpa_when_unhooked(model.bridge)
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
        disable_sdpa_when_unhooked(model.bridge)
