"""The hooked model: catalogue, temporary hooks, tokens, generation."""

import pytest
import torch

import workbench as wb


def test_catalogue_lists_exactly_the_hooks_a_forward_pass_fires(tiny_model):
    catalogue = tiny_model.hook_catalogue()
    _, cache = tiny_model.run_with_cache("the cat sat on the mat")
    assert list(catalogue["name"]) == list(cache.keys())
    cfg = tiny_model.hf_model.config
    sizes = {"batch": 1, "pos": cache["hook_embed"].shape[1], "d_model": cfg.hidden_size,
             "d_mlp": cfg.intermediate_size, "d_vocab": cfg.vocab_size, "n_heads": cfg.num_attention_heads,
             "n_kv_heads": cfg.num_key_value_heads, "d_head": cfg.hidden_size // cfg.num_attention_heads, "1": 1}
    for row in catalogue.itertuples():
        dims = row.shape.strip("[]").split(", ")
        assert tuple(cache[row.name].shape) == tuple(sizes[d] for d in dims), row.name
        assert row.description
    per_layer = catalogue.dropna(subset=["layer"]).groupby("layer").size()
    assert list(per_layer.index) == [0, 1, 2] and per_layer.nunique() == 1  # every layer hooked alike


def test_catalogue_describes_canonical_hooks(tiny_model):
    catalogue = tiny_model.hook_catalogue().set_index("name")
    row = catalogue.loc["blocks.1.hook_resid_post"]
    assert row["shape"] == "[batch, pos, d_model]" and row["layer"] == 1
    assert "residual stream leaving block 1" in row["description"]
    assert catalogue.loc["blocks.0.attn.hook_pattern", "shape"] == "[batch, n_heads, pos, pos]"
    assert catalogue.loc["blocks.2.mlp.hook_post", "shape"] == "[batch, pos, d_mlp]"
    assert catalogue.loc["blocks.0.attn.hook_k", "shape"] == "[batch, pos, n_kv_heads, d_head]"


def test_names_filter_globs_lists_and_predicates(tiny_model):
    _, cache = tiny_model.run_with_cache("the cat", names_filter="blocks.*.hook_resid_post")
    assert sorted(cache.keys()) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    _, cache = tiny_model.run_with_cache("the cat", names_filter=["hook_embed", "blocks.1.attn.hook_?"])
    assert sorted(cache.keys()) == ["blocks.1.attn.hook_k", "blocks.1.attn.hook_q", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z", "hook_embed"]
    assert wb.select_hooks(tiny_model, lambda n: n.endswith("mlp_out")) == [f"blocks.{i}.hook_mlp_out" for i in range(3)]
    with pytest.raises(ValueError, match="matches no hook.*did you mean"):
        wb.select_hooks(tiny_model, "blocks.0.hook_resid_pst")


def test_resid_post_is_resid_pre_plus_attn_and_mlp(tiny_model):
    _, cache = tiny_model.run_with_cache("the cat sat on the mat")
    for i in range(3):
        recomposed = cache[f"blocks.{i}.hook_resid_pre"] + cache[f"blocks.{i}.hook_attn_out"] + cache[f"blocks.{i}.hook_mlp_out"]
        assert torch.allclose(recomposed, cache[f"blocks.{i}.hook_resid_post"], atol=1e-5)
        if i:
            assert torch.equal(cache[f"blocks.{i}.hook_resid_pre"], cache[f"blocks.{i-1}.hook_resid_post"])


def test_hooks_are_temporary_even_on_error(tiny_model):
    tokens = tiny_model.to_tokens("the cat sat")
    clean = tiny_model(tokens)

    def zero_mlp(act, hook):
        return torch.zeros_like(act)

    patched = tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_mlp_out", zero_mlp)])
    assert not torch.allclose(patched, clean)
    assert tiny_model.active_hook_count() == 0

    def broken(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        tiny_model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", broken)])
    assert tiny_model.active_hook_count() == 0
    with pytest.raises(RuntimeError, match="boom"):
        with tiny_model.hooks([("blocks.2.hook_resid_post", broken)]):
            tiny_model(tokens)
    assert tiny_model.active_hook_count() == 0
    with tiny_model.hooks([("blocks.0.hook_mlp_out", zero_mlp)]):
        assert tiny_model.active_hook_count() == 1
        assert torch.allclose(tiny_model(tokens), patched)
    assert torch.allclose(tiny_model(tokens), clean)
    with pytest.raises(AttributeError, match="temporary by default"):
        tiny_model.add_hook("hook_embed", zero_mlp)


def test_token_helpers_prepend_exactly_one_bos(tiny_model):
    tokens = tiny_model.to_tokens("the cat sat")
    bos = tiny_model.tokenizer.bos_token_id
    assert tokens[0, 0].item() == bos and (tokens[0, 1:] != bos).all()
    assert tiny_model.to_str_tokens("the cat sat") == ["<s>", "the", "cat", "sat"]
    assert tiny_model.to_string(tokens[0, 1:]) == "the cat sat"
    assert tiny_model.to_tokens("the cat", prepend_bos=False).tolist() == [tokens[0, 1:3].tolist()]


def test_generate_greedy_and_seeded_sampling(tiny_model):
    greedy = tiny_model.generate("the cat", max_new_tokens=6)
    assert greedy.startswith("the cat") and greedy == tiny_model.generate("the cat", max_new_tokens=6)
    # Greedy must follow the argmax of the model's own logits.
    first = tiny_model.to_string(tiny_model(tiny_model.to_tokens("the cat"))[0, -1].argmax())
    assert greedy.removeprefix("the cat").split()[0] == first.strip()
    state = torch.random.get_rng_state()
    a = tiny_model.generate("the cat", max_new_tokens=8, do_sample=True, seed=11, stop_at_eos=False)
    b = tiny_model.generate("the cat", max_new_tokens=8, do_sample=True, seed=11, stop_at_eos=False)
    assert a == b
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    others = {tiny_model.generate("the cat", max_new_tokens=8, do_sample=True, seed=s, stop_at_eos=False) for s in range(5)}
    assert len(others) > 1
    assert not tiny_model.generate("the cat", max_new_tokens=3, include_prompt=False).startswith("the cat")


def greedy_by_full_forwards(model, prompt, n):
    tokens = model.to_tokens(prompt)
    with torch.no_grad():
        for _ in range(n):
            next_token = model(tokens)[0, -1].argmax()
            tokens = torch.cat([tokens, next_token.view(1, 1)], dim=1)
    return tokens


def test_generate_uses_its_kv_cache_correctly(tiny_model):
    # Every decode step must attend to the whole prefix: a generate() whose KV cache stays
    # empty agrees with a full forward on the first token only.
    for prompt in ("the cat", "a dog sat on"):
        expected = greedy_by_full_forwards(tiny_model, prompt, 16)
        got = tiny_model.bridge.generate(
            prompt, max_new_tokens=16, do_sample=False, stop_at_eos=False, return_type="tokens", verbose=False
        )
        assert got.tolist() == expected.tolist()


def test_info_describes_the_model(tiny_model, hf_folder):
    info = tiny_model.info()
    assert info["format"] == "hf" and info["architecture"] == "LlamaForCausalLM"
    assert (info["n_layers"], info["d_model"], info["n_heads"], info["n_kv_heads"]) == (3, 64, 4, 2)
    assert info["n_params"] == sum(p.numel() for p in hf_folder[1].parameters())
    assert info["n_hooks"] == len(tiny_model.hook_catalogue())
    assert info["checksum_status"] == "no checklist" and len(info["fingerprint"]) == 64
    assert "HookedLlama" in repr(tiny_model)
