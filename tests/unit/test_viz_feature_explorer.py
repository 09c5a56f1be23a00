"""Feature explorer: the index, contexts, histogram, logit effects and search against independent
computations on a tiny store; the widget's HTML and figure state; escaping."""

import numpy as np
import pytest
import torch

from workbench.features import SparseAutoencoder
from workbench.store import cache_activations
from workbench.viz.feature_explorer import (
    HISTOGRAM_EDGES,
    FeatureExplorer,
    context_html,
    feature_density,
    feature_histogram_figure,
    feature_index,
    feature_values,
    features_for_token,
    features_in_text,
    index_histogram,
    logit_effects,
    row_locations,
    top_contexts,
)

HOOK = "blocks.1.hook_resid_post"
TEXTS = ["the cat sat on a mat", "paris is the capital of france", "the dog ran to the house",
         "red blue green", "rome is the capital of italy and berlin of germany", "what is it ?"]


@pytest.fixture(scope="module")
def sae():
    sae = SparseAutoencoder(64, 256, 8, HOOK, seed=0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
    return sae


@pytest.fixture(scope="module")
def store(tiny_model):
    return cache_activations(tiny_model, TEXTS, hooks=[HOOK], positions="all", progress=False)


@pytest.fixture(scope="module")
def latents(sae, store):
    with torch.no_grad():
        return sae.encode(torch.from_numpy(np.asarray(store[HOOK][:]))).numpy()  # [rows, d_sae]


def test_index_is_numpy_top_k_and_density(sae, store, latents):
    index = feature_index(sae, store, top=5, chunk_rows=7)  # chunks split texts: the merge must be exact
    assert index.n_rows == len(latents)
    np.testing.assert_array_equal(index.counts, (latents > 0).sum(0))
    np.testing.assert_allclose(feature_density(index), (latents > 0).mean(0))
    assert feature_density(index, 3) == pytest.approx((latents[:, 3] > 0).mean())
    expected = -np.sort(-latents, axis=0)[:5]
    np.testing.assert_allclose(index.top_values, expected, rtol=1e-6)
    for f in range(latents.shape[1]):
        nonzero = index.top_values[:, f] > 0
        np.testing.assert_allclose(latents[index.top_rows[nonzero, f], f], index.top_values[nonzero, f], rtol=1e-6)
    values = feature_values(sae, store, 3, chunk_rows=5)
    np.testing.assert_allclose(np.sort(values), np.sort(latents[latents[:, 3] > 0, 3]), rtol=1e-6)
    # the index's histograms: numpy's on the same log-spaced edges, values beyond them in the end bins
    edges = HISTOGRAM_EDGES
    for f in range(latents.shape[1]):
        nonzero = latents[latents[:, f] > 0, f]
        expected, _ = np.histogram(np.clip(nonzero, edges[0], edges[-1]), bins=edges)
        np.testing.assert_array_equal(index.histogram[f], expected)
    counts, trimmed = index_histogram(index, 3)
    assert counts.sum() == (latents[:, 3] > 0).sum() and counts[0] > 0 and counts[-1] > 0
    assert len(trimmed) == len(counts) + 1 and trimmed[0] <= values.min() and values.max() < trimmed[-1]


def test_contexts_are_the_stored_tokens_with_the_latents_of_their_neighbours(sae, store, latents):
    index = feature_index(sae, store, top=4)
    feature = int(latents.max(0).argmax())
    contexts = top_contexts(sae, store, index, feature, window=2)
    assert len(contexts) == min(4, int((latents[:, feature] > 0).sum()))
    np.testing.assert_allclose(contexts["activation"], -np.sort(-latents[:, feature])[: len(contexts)], rtol=1e-6)
    starts = store.meta["row_start"].to_numpy()
    for c in contexts.itertuples():
        assert c.position == c.row - starts[c.example]  # positions="all": row i of a text is token i
        tokens = store.tokens(c.example)
        lo = max(0, c.position - 2)
        assert list(c.tokens) == tokens[lo : c.position + 3] and c.token == tokens[c.position]
        np.testing.assert_allclose(c.acts, latents[starts[c.example] + lo : starts[c.example] + lo + len(c.tokens), feature],
                                   rtol=1e-5, atol=1e-6)
        assert c.acts[c.centre] == pytest.approx(c.activation, rel=1e-5)
    examples, positions = row_locations(store, [0, starts[2] + 1])
    assert examples.tolist() == [0, 2] and positions.tolist() == [0, 1]


def test_one_row_per_text_shows_that_token_only(tiny_model, sae):
    last = cache_activations(tiny_model, TEXTS, hooks=[HOOK], positions="last", progress=False)
    index = feature_index(sae, last, top=3)
    feature = int(index.max_activation.argmax())
    contexts = top_contexts(sae, last, index, feature, window=4)
    for c in contexts.itertuples():
        assert list(c.tokens) == [last.tokens(c.example)[-1]] and c.acts[0] == c.activation
    explorer = FeatureExplorer(tiny_model, sae, last)
    assert "one row per text" in explorer.contexts.value
    mean = cache_activations(tiny_model, TEXTS, hooks=[HOOK], positions="mean", progress=False)
    explorer = FeatureExplorer(tiny_model, sae, mean, window=2)
    assert "mean over its tokens" in explorer.contexts.value and "rgba(255,102,0,0.00)" in explorer.contexts.value
    assert "rgba(255,102,0,1.00)" not in explorer.contexts.value  # no token stands for a mean


def test_logit_effects_are_the_unembedded_decoder_row(tiny_model, sae):
    effects = logit_effects(tiny_model, sae, 11, k=4)
    bridge = tiny_model.bridge
    w_norm = bridge.ln_final.original_component.weight.detach().float()
    manual = (sae.W_dec[11].detach() * w_norm) @ bridge.W_U.detach().float()  # [d_vocab]
    order = np.argsort(-manual.numpy())
    promoted, suppressed = effects[effects.kind == "promoted"], effects[effects.kind == "suppressed"]
    assert promoted["token_id"].tolist() == order[:4].tolist()
    assert suppressed["token_id"].tolist() == order[::-1][:4].tolist()
    np.testing.assert_allclose(promoted["effect"], manual.numpy()[order[:4]], rtol=1e-5)
    assert promoted["token"].tolist() == [tiny_model.tokenizer.decode([int(i)]) for i in order[:4]]


def test_search_by_token_and_by_text(tiny_model, sae, store, latents):
    index = feature_index(sae, store, top=3)
    feature = int(latents.max(0).argmax())
    peak = top_contexts(sae, store, index, feature).token.iloc[0]
    found = features_for_token(tiny_model, sae, store, index, peak.strip().upper(), k=256)
    by_context = found[found.match == "contexts"]
    assert feature in by_context.feature.tolist() and (by_context.score > 0).all()
    for f, score in zip(by_context.feature, by_context.score, strict=True):  # share of its top contexts
        peaks = top_contexts(sae, store, index, f).token.str.strip().str.lower()
        assert score == pytest.approx((peaks == peak.strip().lower()).mean())
    assert "logit" not in found.match.tolist()  # the upper-case word is not in the vocabulary
    found = features_for_token(tiny_model, sae, store, index, peak.strip(), k=256)
    token_id = tiny_model.tokenizer.encode(peak.strip(), add_special_tokens=False)[0]
    w_norm = tiny_model.bridge.ln_final.original_component.weight.detach().float()
    column = (sae.W_dec.detach() * w_norm) @ tiny_model.bridge.W_U.detach().float()[:, token_id]
    assert found[found.match == "logit"].feature.tolist()[:3] == torch.argsort(column, descending=True)[:3].tolist()

    in_text = features_in_text(tiny_model, sae, TEXTS[1], k=5)
    starts = store.meta["row_start"].to_numpy()
    rows = latents[starts[1] : store.meta["row_stop"].iloc[1]]  # the same text's stored latents
    np.testing.assert_array_equal(in_text.feature, np.argsort(-rows.max(0), kind="stable")[:5])
    np.testing.assert_allclose(in_text.activation, np.sort(rows.max(0))[::-1][:5], rtol=1e-5)


def test_escaping_of_tokens_from_data():
    html = context_html(["<script>alert(1)</script>", " cat\n"], np.array([1.0, np.nan]), 0, high=2.0)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "rgba(255,102,0,0.50)" in html and "title='not stored'" in html and "\\n" in html


def test_widget_state_and_search(tiny_model, sae, latents):
    store = cache_activations(tiny_model, TEXTS, hooks=[HOOK], positions="all", progress=False)
    table = store.token_table  # poison one token, as a dataset or a tokenizer could
    table.at[0, "str_tokens"] = ["<script>x</script>", *list(table.at[0, "str_tokens"])[1:]]
    explorer = FeatureExplorer(tiny_model, sae, store, top=5, window=3)
    default = int(latents.max(0).argmax())
    assert explorer.feature.value == default and "#b00020" not in explorer.status.value, explorer.status.value
    assert explorer.contexts.value.count("<tr>") == 1 + min(5, int((latents[:, default] > 0).sum()))
    bars = explorer.histogram.data[0]
    assert sum(bars.y) == int((latents[:, default] > 0).sum())
    assert f"{(latents[:, default] > 0).mean():.3%}" in explorer.histogram.layout.title.text
    assert "promoted" in explorer.logits.value and "suppressed" in explorer.logits.value
    # A latent that fires on the poisoned BOS shows it escaped.
    index = explorer.index
    bos_feature = next(f for f in np.argsort(-latents[0]) if 0 in index.top_rows[index.top_values[:, f] > 0, f])
    explorer.feature.value = int(bos_feature)
    assert "#b00020" not in explorer.status.value, explorer.status.value
    assert "<script>" not in explorer.contexts.value and "&lt;script&gt;x&lt;/script&gt;" in explorer.contexts.value
    explorer.text_query.value = TEXTS[2]
    explorer.search_text()
    assert explorer.found.options and "latents found in the text" in explorer.status.value
    explorer.found.value = explorer.found.options[-1][1]
    assert explorer.feature.value == explorer.found.options[-1][1]
    explorer.token_query.value = "capital"
    explorer.search_token()
    assert "#b00020" not in explorer.status.value, explorer.status.value
    with pytest.raises(KeyError, match="SAE's hook"):
        FeatureExplorer(tiny_model, SparseAutoencoder(64, 32, 4, "blocks.0.hook_resid_post"), store)


def test_histogram_figure_bins_the_values():
    fig = feature_histogram_figure(np.array([0.5, 1.0, 1.0, 2.0]), 0.25, 3, bins=3)
    assert list(fig.data[0].y) == [1, 2, 1] and "density 25.000%" in fig.layout.title.text
    assert len(feature_histogram_figure(np.zeros(0), 0.0, 3).data[0].y) == 0


def test_tokens_inside_a_multibyte_character_show_their_bytes():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from workbench.viz._common import token_pieces

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # a byte-level BPE with no merges: a token per byte
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend)
    ids = tokenizer.encode("a日", add_special_tokens=False)
    assert len(ids) == 4 and tokenizer.decode(ids) == "a日"
    assert tokenizer.batch_decode([[i] for i in ids])[1:] == ["\ufffd"] * 3  # what a plain decode shows
    assert token_pieces(tokenizer, ids) == ["a"] + [f"\\x{b:02x}" for b in "日".encode()]
