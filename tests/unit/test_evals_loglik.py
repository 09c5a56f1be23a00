"""The log-likelihood scorer: lm-eval's tokenization conventions, agreement with a direct HF
forward, the shared-context KV path, and hooks applying during evals."""

import pytest
import torch
import torch.nn.functional as F

from workbench.evals.loglik import _pack_rows, encode_pair, loglikelihood

CTX = "q : what is the capital of france ? a :"
REQUESTS = [
    (CTX, " paris"), (CTX, " rome is red"), (CTX, " the cat sat on a mat"), (CTX, " berlin ."),
    ("", "the dog ran to the house"), ("", "a cat"), (CTX + " ", "berlin"), ("the cat", " sat"),
]


def direct_hf(model, context, continuation):
    """Oracle: one unbatched forward of model.hf_model on lm-eval's token ids."""
    enc = encode_pair(model.tokenizer, context, continuation, add_bos=model.tokenizer_adds_bos)
    ids = torch.tensor([list(enc.context + enc.continuation)])
    with torch.no_grad():
        logprobs = F.log_softmax(model.hf_model(ids).logits.float(), dim=-1)[0]
    n = len(enc.context)
    return sum(float(logprobs[n - 1 + j, t]) for j, t in enumerate(enc.continuation)), len(enc.continuation)


def test_encode_pair_follows_lm_eval(tiny_model):
    tok = tiny_model.tokenizer
    default = lambda s: tok(s)["input_ids"]  # noqa: E731  (this tokenizer prepends <s> by default)
    plain = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    enc = encode_pair(tok, "the cat", " sat on")
    # lm-eval 0.4.13 (add_bos_token=None): the context gets the tokenizer's default special tokens
    assert list(enc.context) == default("the cat") and enc.context[0] == tok.bos_token_id
    assert list(enc.continuation) == plain(" sat on")
    # ... but none are added to a text that already starts with the BOS string
    assert list(encode_pair(tok, "<s> the cat", " sat").context) == plain("<s> the cat")
    empty = encode_pair(tok, "", "the cat")
    assert empty.context == (tok.bos_token_id,) and list(empty.continuation) == plain("the cat")
    # trailing spaces of the context move to the continuation
    assert encode_pair(tok, "the cat ", "sat") == encode_pair(tok, "the cat", " sat")


@pytest.mark.parametrize("min_shared", [1, 10_000])  # shared-context KV path / plain batches
def test_agrees_with_direct_hf_forward(tiny_model, min_shared):
    got = loglikelihood(tiny_model, REQUESTS, min_shared_context=min_shared, min_saved_tokens=0,
                        batch_tokens=40, max_batch=3)
    for (context, continuation), (ll, n) in zip(REQUESTS, got, strict=True):
        want_ll, want_n = direct_hf(tiny_model, context, continuation)
        assert n == want_n
        assert ll == pytest.approx(want_ll, abs=1e-4), (context, continuation)


def test_order_is_kept_and_batching_does_not_matter(tiny_model):
    a = loglikelihood(tiny_model, REQUESTS, batch_tokens=16, max_batch=1)
    b = loglikelihood(tiny_model, REQUESTS[::-1], batch_tokens=4096, max_batch=64)[::-1]
    assert [n for _, n in a] == [n for _, n in b]
    assert [ll for ll, _ in a] == pytest.approx([ll for ll, _ in b], abs=1e-4)


def test_hooks_on_the_model_apply(tiny_model):
    before = loglikelihood(tiny_model, REQUESTS[:3], min_shared_context=1, min_saved_tokens=0)

    def scale(act, hook):
        return act * 0.5

    with tiny_model.hooks([("blocks.1.hook_resid_post", scale)]):
        during = loglikelihood(tiny_model, REQUESTS[:3], min_shared_context=1, min_saved_tokens=0)
        with torch.no_grad():
            enc = encode_pair(tiny_model.tokenizer, *REQUESTS[0])
            hooked_logits = tiny_model(torch.tensor([list(enc.context + enc.continuation)]))
    after = loglikelihood(tiny_model, REQUESTS[:3], min_shared_context=1, min_saved_tokens=0)
    assert all(abs(x[0] - y[0]) > 1e-3 for x, y in zip(before, during, strict=True))
    assert [x[0] for x in after] == pytest.approx([x[0] for x in before], abs=1e-5)
    # the hooked score is the hooked model's own forward, not the HF model's
    lp = F.log_softmax(hooked_logits.float(), -1)[0, len(enc.context) - 1, enc.continuation[0]]
    assert during[0][0] == pytest.approx(float(lp), abs=1e-4)


def test_scoring_uses_fused_attention_unless_the_pattern_is_hooked(tiny_model, monkeypatch):
    from workbench.models.fast_attention import sdpa_enabled

    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    before = [sdpa_enabled(b.attn) for b in tiny_model.bridge.blocks]
    fused = loglikelihood(tiny_model, REQUESTS)
    assert len(calls) > 0
    assert [sdpa_enabled(b.attn) for b in tiny_model.bridge.blocks] == before  # restored
    for (context, continuation), (ll, _) in zip(REQUESTS, fused, strict=True):
        assert ll == pytest.approx(direct_hf(tiny_model, context, continuation)[0], abs=1e-4)
    calls.clear()
    patterns = []
    with tiny_model.hooks([("blocks.0.attn.hook_pattern", lambda act, hook: patterns.append(act.shape))]):
        hooked = loglikelihood(tiny_model, REQUESTS)
    assert patterns  # a pattern hook still sees the pattern: that layer takes the original path
    assert len(calls) == (len(tiny_model.bridge.blocks) - 1) * len(patterns)  # the others: fused
    assert [ll for ll, _ in hooked] == pytest.approx([ll for ll, _ in fused], abs=1e-4)


def test_empty_continuation_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="empty continuation"):
        loglikelihood(tiny_model, [("the cat", "")])


def test_common_primer_is_computed_once_and_stays_exact(tiny_model):
    primer = "q : what is the capital of france ? a : paris . q : what is the capital of italy ? a : rome ."
    requests = [(primer + " q : is it red ? a :", " it is red"), (primer + " q : is it red ? a :", " no"),
                (primer + " q : what is blue ? a :", " the mat"), (primer + " q : what is blue ? a :", " a cat")]
    calls = []
    with tiny_model.hooks([("blocks.0.hook_resid_pre", lambda act, hook: calls.append(act.shape[1]))]):
        got = loglikelihood(tiny_model, requests, min_shared_context=1, min_saved_tokens=0)
    # the common token prefix once, then each question's own tokens, then its options
    a, b = (encode_pair(tiny_model.tokenizer, *requests[i]).context for i in (0, 2))
    common = next(k for k in range(len(a)) if a[k] != b[k])
    assert common > 25
    assert calls == [common, len(a) - common, 2, len(b) - common, 1]
    for (context, continuation), (ll, _) in zip(requests, got, strict=True):
        assert ll == pytest.approx(direct_hf(tiny_model, context, continuation)[0], abs=1e-4)


def test_shared_prefixes_run_once_in_one_packed_row(tiny_model):
    requests = [("the cat sat on a", " mat"), ("the cat sat on a", " house"), ("the cat sat on a", " dog"),
                ("is it red ?", " a")]
    widths = []
    with tiny_model.hooks([("blocks.0.hook_resid_pre", lambda act, hook: widths.append(tuple(act.shape[:2])))]):
        got = loglikelihood(tiny_model, requests, min_shared_context=1, min_saved_tokens=0)
    # one-token options all read the context's last logits: two distinct inputs, <s> + 5 and
    # <s> + 4 tokens, sharing <s>: 1 + 5 + 4 tree nodes in one row, one forward
    assert widths == [(1, 10)]
    for (context, continuation), (ll, _) in zip(requests, got, strict=True):
        assert ll == pytest.approx(direct_hf(tiny_model, context, continuation)[0], abs=1e-4)


@pytest.mark.parametrize("row_tokens", [1, 7, 256])
def test_sentence_pairs_packed_as_prefix_trees_agree_with_hf(tiny_model, row_tokens):
    """CrowS-Pairs style: empty context, sentences that differ in one word; any row size."""
    requests = [("", "the cat sat on the red mat"), ("", "the dog sat on the red mat"),
                ("", "the cat sat on a mat"), ("", "a dog ran"), ("", "the cat")]
    got = loglikelihood(tiny_model, requests, row_tokens=row_tokens, batch_tokens=20, max_batch=2)
    for (context, continuation), (ll, n) in zip(requests, got, strict=True):
        want_ll, want_n = direct_hf(tiny_model, context, continuation)
        assert n == want_n and ll == pytest.approx(want_ll, abs=1e-4), continuation


def test_pack_rows_builds_the_prefix_tree():
    inputs = sorted([(1, 2, 3), (1, 2, 4, 5), (1, 6), (7,), (1, 2)])
    (row,) = _pack_rows(inputs, row_tokens=100)
    # sorted: (1,2) (1,2,3) (1,2,4,5) (1,6) (7,): nodes 1 2 | 3 | 4 5 | 6 | 7
    assert row.tokens == [1, 2, 3, 4, 5, 6, 7]
    assert row.depth == [0, 1, 2, 2, 3, 1, 0]
    assert row.parent == [-1, 0, 1, 1, 3, 0, -1]
    assert dict(zip(row.seqs, row.paths, strict=True)) == {(1, 2): [0, 1], (1, 2, 3): [0, 1, 2], (1, 2, 4, 5): [0, 1, 3, 4],
                                              (1, 6): [0, 5], (7,): [6]}
    # a row budget of 3 nodes: the (1, 2, ...) tree splits into [1 2 3] and [1 2 4 5] (longer than
    # the budget: a row of its own); pieces fill rows largest first, so (1, 6) and (7,) share one
    rows = _pack_rows(inputs, row_tokens=3)
    assert [r.tokens for r in rows] == [[1, 2, 4, 5], [1, 2, 3], [1, 6, 7]]
    assert sorted(seq for r in rows for seq in r.seqs) == inputs


def test_encode_pair_follows_the_checkpoint_tokenizers_own_bos_default(tiny_model):
    # The bridge's tokenizer always prepends BOS; lm-eval, loading the model folder, follows the
    # folder tokenizer's default, which load_model records before the bridge changes it.
    tok = tiny_model.tokenizer
    assert tiny_model.tokenizer_adds_bos is True  # this tiny tokenizer's template prepends <s>
    plain = tok("the cat", add_special_tokens=False)["input_ids"]
    assert list(encode_pair(tok, "the cat", " sat", add_bos=False).context) == plain
    assert list(encode_pair(tok, "the cat", " sat", add_bos=True).context) == [tok.bos_token_id] + plain
    assert list(encode_pair(tok, "<s> the cat", " sat", add_bos=True).context) == tok("<s> the cat", add_special_tokens=False)["input_ids"]
