"""The seeded, KV-cached nucleus sampler (generic over generation suites), on tiny random models."""

import pytest
import torch

from workbench.evals import generation as gen


def test_sampling_is_seeded_within_the_nucleus_and_leaves_global_rng(tiny_model):
    sampling = gen.Sampling(k=4, max_new_tokens=6)
    state = torch.random.get_rng_state()
    a = gen.sample_continuations(tiny_model, "the cat sat on", sampling, seed=11)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a == gen.sample_continuations(tiny_model, "the cat sat on", sampling, seed=11)
    assert a != gen.sample_continuations(tiny_model, "the cat sat on", sampling, seed=12)
    assert len(a) == 4 and len(set(a)) > 1
    # oracle: every sampled token lies in the top-p nucleus of the HF model's distribution
    hf = tiny_model.hf_model
    prompt = tiny_model.to_tokens("the cat sat on")[0].tolist()
    rows = gen.sample_tokens(tiny_model, "the cat sat on", sampling, seed=11)
    assert a == [tiny_model.tokenizer.decode(r, skip_special_tokens=True) for r in rows]
    for row in rows:
        ids = prompt + row
        with torch.no_grad():
            probs = torch.softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
        for pos in range(len(prompt), len(ids)):
            ranked = torch.sort(probs[pos - 1], descending=True)
            rank = (ranked.indices == ids[pos]).nonzero().item()
            assert ranked.values[:rank].sum().item() < 0.9 + 1e-6  # inside the nucleus


def test_sampling_applies_open_hooks(tiny_model):
    """A hook pushing the final residual along one token's unembedding makes it the only choice."""
    tok = tiny_model.tokenizer.convert_tokens_to_ids("paris")
    direction = tiny_model.hf_model.lm_head.weight[tok].detach()
    last = tiny_model.cfg.n_layers - 1

    def push(resid, hook):
        return resid + 1e3 * direction

    with tiny_model.hooks([(f"blocks.{last}.hook_resid_post", push)]):
        texts = gen.sample_continuations(tiny_model, "the cat", gen.Sampling(k=3, max_new_tokens=4), seed=0)
    assert texts == ["paris paris paris paris"] * 3


def test_nucleus_sample_hand_computed():
    """p = [.5, .3, .15, .05], top_p .9: the nucleus is the first three (mass before the third
    is .8 < .9, before the fourth .95), sampled in proportion .5/.95, .3/.95, .15/.95."""
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(20000, 1)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(gen.nucleus_sample(logits, 0.9, 1.0, g), minlength=4).double() / 20000
    assert counts[3] == 0
    assert counts[:3].tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95], abs=0.015)
    # the top token alone when it already holds top_p; a temperature sharpens before the cut
    assert set(gen.nucleus_sample(torch.tensor([[3.0, 0.0, 0.0]]).repeat(500, 1), 0.9, 1.0, g).tolist()) == {0}
    assert set(gen.nucleus_sample(logits[:500], 0.9, 0.1, g).tolist()) == {0}


def test_nucleus_sample_wider_than_the_first_topk():
    """A flat distribution over 3,000 tokens needs 2,700 of them: the nucleus widens past 256."""
    logits = torch.zeros(12000, 3000)
    g = torch.Generator().manual_seed(1)
    picks = gen.nucleus_sample(logits, 0.9, 1.0, g)
    # 12,000 draws from 2,700 equally likely tokens hit about 2,668 of them (never more than
    # 2,700); topk of equal values leaves which 2,700 unspecified
    assert 2600 < len(set(picks.tolist())) <= 2700
    # the same generator state gives the same draws
    assert torch.equal(gen.nucleus_sample(logits[:50], 0.9, 1.0, torch.Generator().manual_seed(5)),
                       gen.nucleus_sample(logits[:50], 0.9, 1.0, torch.Generator().manual_seed(5)))
