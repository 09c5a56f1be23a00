"""Plot functions and the logit lens against oracles: HF forward passes, hand-pooled arrays."""

import html

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from workbench.viz import _common
from workbench.viz.attention import attention_head_grid, attention_heatmap, attention_patterns
from workbench.viz.logit_lens import (
    decode_residual,
    lens_from_residuals,
    logit_lens_figure,
    residual_stack,
    target_probability_figure,
)
from workbench.viz.model_explorer import activation_figure, info_html, search_catalogue

XSS = ["<script>alert(1)</script>", '<img src=x onerror="alert(2)">', "a & b", "new\nline"]


def _random_pattern(n, heads=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, n) if heads is None else (heads, n, n)
    scores = rng.normal(size=shape) + np.triu(np.full((n, n), -np.inf), 1)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _no_raw_markup(strings):
    return all("<" not in s and ">" not in s and '"' not in s for s in strings)


def test_escape_round_trips_and_leaves_no_markup():
    for text in XSS:
        assert "<" not in _common.escape(text) and '"' not in _common.escape(text)
        assert html.unescape(_common.escape(text)) == text
    assert _common.token_labels(["new\nline"]) == ["new\\nline"]


def test_bins_and_pool_match_a_manual_loop():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(11, 7))
    rows, cols = _common.bins(11, 4), _common.bins(7, 3)
    assert rows[0] == 0 and rows[-1] == 11 and len(rows) == 5 and np.all(np.diff(rows) > 0)
    expected = np.array([[m[a:b, c:d].mean() for c, d in zip(cols[:-1], cols[1:], strict=True)] for a, b in zip(rows[:-1], rows[1:], strict=True)])
    np.testing.assert_allclose(_common.pool(m, rows, cols), expected)
    summed = np.array([[m[a:b, c:d].sum(1).mean() for c, d in zip(cols[:-1], cols[1:], strict=True)] for a, b in zip(rows[:-1], rows[1:], strict=True)])
    np.testing.assert_allclose(_common.pool(m, rows, cols, col_reduce="sum"), summed)
    assert _common.bins(3, 10).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="max_bins"):
        _common.bins(3, 0)


def test_attention_heatmap_labels_escaped_and_values_exact():
    tokens = ["<s>"] + XSS + ["the", "the"]
    pattern = _random_pattern(len(tokens))
    fig = attention_heatmap(pattern, tokens, title="t")
    heat = fig.data[0]
    np.testing.assert_allclose(np.asarray(heat.z), pattern, rtol=1e-6)
    ticks = list(fig.layout.xaxis.ticktext)
    assert len(ticks) == len(tokens)  # repeated tokens keep their own positions
    assert _no_raw_markup(ticks) and _no_raw_markup(np.asarray(heat.customdata).ravel())
    assert [html.unescape(t.split(": ", 1)[1]) for t in ticks][1:3] == XSS[:2]
    window = attention_heatmap(pattern, tokens, window=(2, 5))
    np.testing.assert_allclose(np.asarray(window.data[0].z), pattern[2:5, 2:5], rtol=1e-6)
    with pytest.raises(ValueError, match="window"):
        attention_heatmap(pattern, tokens, window=(3, 99))
    with pytest.raises(ValueError, match="one row per token"):
        attention_heatmap(pattern, tokens[:-1])


def test_long_sequences_stay_bounded():
    n = 2048
    tokens = [f"t{i}" for i in range(n)]
    pattern = _random_pattern(n)
    fig = attention_heatmap(pattern, tokens, max_tokens=96)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (96, 96) and len(fig.layout.xaxis.ticktext) == 96
    # Keys are summed within a bin, so each pooled row is still a distribution.
    np.testing.assert_allclose(z.sum(1), 1.0, rtol=1e-5)
    assert len(fig.to_json()) < 1_500_000
    grid = attention_head_grid(np.stack([pattern] * 3), tokens, max_tokens=24)
    assert len(grid.data) == 3 and all(np.asarray(t.z).shape == (24, 24) for t in grid.data)
    assert len(grid.to_json()) < 500_000


def test_head_grid_marks_the_selected_head():
    tokens = ["a", "b", "<c>"]
    grid = attention_head_grid(_random_pattern(3, heads=4), tokens, selected=2, columns=2)
    titles = [a.text for a in grid.layout.annotations]
    assert titles[2].startswith("<b>head 2") and titles[0] == "head 0"
    assert _no_raw_markup(np.asarray(grid.data[0].customdata).ravel())


def test_attention_patterns_match_hf_eager_attention(tiny_model, hf_folder):
    _, hf_model = hf_folder
    patterns, tokens = attention_patterns(tiny_model, "the cat sat on a mat", layers=[0, 2])
    ids = tiny_model.to_tokens("the cat sat on a mat")
    with torch.no_grad():
        expected = hf_model(ids, output_attentions=True).attentions
    assert set(patterns) == {0, 2} and tokens[1:3] == ["the", "cat"]
    for layer in (0, 2):
        np.testing.assert_allclose(patterns[layer], expected[layer][0].numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="out of range"):
        attention_patterns(tiny_model, "the cat", layers=[3])


def test_attention_patterns_stop_after_the_last_requested_layer(tiny_model):
    fired = []
    with tiny_model.hooks([("blocks.1.hook_resid_post", lambda act, hook: fired.append(1))]):
        attention_patterns(tiny_model, "the cat", layers=[0])
        assert fired == []
        attention_patterns(tiny_model, "the cat", layers=[2, 0])
        assert fired == [1]
    assert tiny_model.active_hook_count() == 0


def _hf_lens_probs(hf_model, ids):
    """Oracle: HF hidden states through HF's own final norm and lm_head."""
    with torch.no_grad():
        out = hf_model(ids, output_hidden_states=True)
        # hidden_states[0] = embeddings, [i + 1] = after layer i; HF's last one is already normed.
        states = list(out.hidden_states[:-1])
        probs = [torch.softmax(hf_model.lm_head(hf_model.model.norm(h)), -1) for h in states]
        probs.append(torch.softmax(out.logits, -1))
    return torch.stack(probs)[:, 0]  # [1 + n_layers, pos, vocab]


def test_logit_lens_last_layer_is_the_models_output(tiny_model):
    ids = tiny_model.to_tokens("the cat sat on the")
    resid, _ = residual_stack(tiny_model, ids)
    with torch.no_grad():
        logits = tiny_model(ids)
    assert resid.shape[0] == tiny_model.cfg.n_layers + 1
    torch.testing.assert_close(decode_residual(tiny_model, resid[-1]), logits[0], atol=1e-5, rtol=1e-5)


def test_logit_lens_matches_hf_hidden_states(tiny_model, hf_folder):
    _, hf_model = hf_folder
    prompt = "the cat sat on the"
    ids = tiny_model.to_tokens(prompt)
    expected = _hf_lens_probs(hf_model, ids)
    lens = wb.viz.logit_lens(tiny_model, prompt, target=" mat", k=3)
    mat = tiny_model.to_tokens(" mat", prepend_bos=False)[0, 0].item()
    assert lens.layers == [-1, 0, 1, 2] and lens.positions == list(range(ids.shape[1]))
    assert lens.target_token == "mat"
    for row, layer in enumerate(lens.layers):
        for pos in lens.positions:
            p = expected[row, pos]
            top = lens.top[(lens.top.layer == layer) & (lens.top.position == pos)].sort_values("rank")
            np.testing.assert_allclose(top["prob"], p.topk(3).values.numpy(), atol=1e-5)
            assert top["token_id"].tolist() == p.topk(3).indices.tolist()
            got = lens.target[(lens.target.layer == layer) & (lens.target.position == pos)].iloc[0]
            assert got["prob"] == pytest.approx(p[mat].item(), abs=1e-6)
            assert got["rank"] == int((p > p[mat]).sum()) + 1


def test_logit_lens_arguments(tiny_model):
    lens = wb.viz.logit_lens(tiny_model, "the cat sat", positions=[-1], target=5)
    assert lens.positions == [3] and set(lens.target["token_id"]) == {5}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        wb.viz.logit_lens(tiny_model, "the cat", target=10_000)
    with pytest.raises(ValueError, match="within the prompt"):
        wb.viz.logit_lens(tiny_model, "the cat", positions=[7])
    assert wb.viz.logit_lens(tiny_model, "the cat", target="red blue").target_token == "red"  # first token


def test_logit_lens_figures(tiny_model):
    resid, tokens = residual_stack(tiny_model, "the cat sat on a mat")
    tokens = tokens[:1] + XSS[:2] + tokens[3:]  # labels come from data: must be escaped
    lens = lens_from_residuals(tiny_model, resid, tokens, positions=[1, 2, 3], target="mat")
    fig = logit_lens_figure(lens)
    heat = fig.data[0]
    assert np.asarray(heat.z).shape == (4, 3)
    first = lens.top[lens.top["rank"] == 1].set_index(["layer", "position"])["prob"]
    assert np.asarray(heat.z)[0, 1] == pytest.approx(first[(-1, 2)])
    assert list(fig.layout.yaxis.ticktext) == ["embed", "0", "1", "2"]
    assert _no_raw_markup(fig.layout.xaxis.ticktext) and "&lt;script&gt;" in fig.layout.xaxis.ticktext[0]
    curve = target_probability_figure(lens, position=2)
    np.testing.assert_allclose(curve.data[0].y, lens.target.query("position == 2").sort_values("layer")["prob"])
    assert "&lt;img" in curve.layout.title.text and "<img" not in curve.layout.title.text
    with pytest.raises(ValueError, match="not decoded"):
        target_probability_figure(lens, position=5)


def test_activation_figure_and_catalogue_search(tiny_model):
    values = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    fig = activation_figure(values, "blocks.0.hook_x", axes=["pos", "d_model"], tokens=list("ab<cde"), max_rows=3, max_cols=5)
    z = np.asarray(fig.data[0].z)
    assert z.shape == (3, 5) and z[0, 0] == pytest.approx(values[:2, :2].mean())
    assert sum(fig.data[1].y) == values.size
    assert "mean 29.5" in fig.layout.title.text
    assert _no_raw_markup(fig.layout.yaxis.ticktext)
    cat = tiny_model.hook_catalogue()
    found = search_catalogue(cat, "attention pattern")
    assert found["name"].tolist() == [f"blocks.{i}.attn.hook_pattern" for i in range(3)]
    assert search_catalogue(cat, "blocks.1.hook_resid_*")["name"].tolist() == ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post"]
    assert len(search_catalogue(cat, "  ")) == len(cat)
    assert search_catalogue(cat, "no such words").empty
    table = info_html({"name": "<img src=x onerror=alert(1)>", "n_layers": 3})
    assert "<img" not in table and "&lt;img" in table


def test_catalogue_search_with_a_missing_component():
    cat = pd.DataFrame({"name": ["a.hook_x"], "component": [None], "description": ["x"]})
    assert search_catalogue(cat, "x")["name"].tolist() == ["a.hook_x"]


def test_target_skips_sentencepiece_blank_pieces(tmp_path):
    from meta_checkpoint import write_meta_checkpoint

    from workbench.viz.logit_lens import target_token_id

    write_meta_checkpoint(tmp_path / "meta")
    model = wb.load_model(tmp_path / "meta", device="cpu")
    assert model.to_str_tokens(model.to_tokens(" the", prepend_bos=False)[0])[0] == ""  # the bare "▁" piece
    the = model.to_tokens("the cat", prepend_bos=False)[0, 0].item()
    assert target_token_id(model, " the") == (the, "the")
    assert target_token_id(model, "the") == (the, "the")
