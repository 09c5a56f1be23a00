"""Widgets driven from Python: set a control, check the figure shows what the library computes."""

import sys
from pathlib import Path

import numpy as np
import pytest
from plotly.callbacks import Points

import workbench as wb
from workbench.viz.attention import attention_patterns

sys.path.insert(0, str(Path(__file__).parent))
from tiny_hf import write_hf_folder  # noqa: E402

XSS = '<script>alert(1)</script> <img src=x onerror="alert(2)">'
LONG = "the cat sat on a mat . " * 292  # 2,044 words + BOS = 2,045 tokens with the word-level tokenizer


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """The tiny model with room for a 2,048-token prompt."""
    folder = tmp_path_factory.mktemp("long") / "tiny"
    write_hf_folder(folder, max_position_embeddings=2048)
    return wb.load_model(folder, device="cpu")


def _z(fig, i=0):
    return np.asarray(fig.data[i].z, dtype=float)


def test_attention_viewer_follows_its_controls(tiny_model):
    viewer = wb.viz.AttentionViewer(tiny_model, "the cat sat on a mat", layer=0, head=0)
    patterns, tokens = attention_patterns(tiny_model, "the cat sat on a mat")
    np.testing.assert_allclose(_z(viewer.heatmap), patterns[0][0], atol=1e-6)
    viewer.layer.value = 2
    np.testing.assert_allclose(_z(viewer.heatmap), patterns[2][0], atol=1e-6)
    assert viewer.heatmap.layout.title.text == "layer 2, head 0"
    assert viewer.grid.layout.title.text.startswith("layer 2")
    np.testing.assert_allclose(_z(viewer.grid, 3), patterns[2][3], atol=1e-6)
    viewer.head.value = 3
    np.testing.assert_allclose(_z(viewer.heatmap), patterns[2][3], atol=1e-6)
    assert viewer.grid.layout.annotations[3].text.startswith("<b>head 3")
    assert viewer.grid.layout.annotations[0].text == "head 0"
    viewer.grid.data[1]._click_callbacks[0](viewer.grid.data[1], None, None)  # a click on head 1's panel
    assert viewer.head.value == 1
    assert "7 tokens" in viewer.status.value


def test_attention_viewer_escapes_and_reports_errors(tiny_model):
    viewer = wb.viz.AttentionViewer(tiny_model, "the cat")
    viewer.prompt.value = "the " + XSS
    labels = list(viewer.heatmap.layout.xaxis.ticktext) + list(np.asarray(viewer.grid.data[0].customdata).ravel())
    assert all("<" not in label and '"' not in label for label in labels)
    assert any("&lt;" in label for label in labels)
    before = _z(viewer.heatmap)
    viewer.prompt.value = "   "
    assert "the prompt is empty" in viewer.status.value and "#b00020" in viewer.status.value
    np.testing.assert_array_equal(_z(viewer.heatmap), before)  # the last good figure stays


def test_attention_viewer_pages_a_2048_token_prompt(long_model):
    viewer = wb.viz.AttentionViewer(long_model, LONG, layer=1, page_size=64)
    n = len(viewer.tokens)
    assert n == 2045 and viewer.window.max == 31 and viewer.window.layout.display == "flex"
    assert set(viewer._patterns) == {1}  # long prompts compute only the layer on screen
    assert _z(viewer.heatmap).shape == (64, 64)
    assert all(_z(viewer.grid, h).shape == (24, 24) for h in range(4))
    full, _ = attention_patterns(long_model, long_model.to_tokens(LONG), layers=[1])
    viewer.window.value = 3
    np.testing.assert_allclose(_z(viewer.heatmap), full[1][0][192:256, 192:256], atol=1e-6)
    assert "positions 192-255 of 2045" in viewer.heatmap.layout.title.text
    viewer.layer.value = 2
    assert set(viewer._patterns) == {2}  # memory stays at one layer's patterns
    assert len(viewer.heatmap.to_json()) + len(viewer.grid.to_json()) < 1_000_000


def test_logit_lens_viewer_follows_its_controls(tiny_model):
    viewer = wb.viz.LogitLensViewer(tiny_model, "the cat sat on a", target=" mat")
    lens = wb.viz.logit_lens(tiny_model, "the cat sat on a", target=" mat")
    curve = lens.target.query("position == 5").sort_values("layer")["prob"].to_numpy()
    np.testing.assert_allclose(viewer.target_figure.data[0].y, curve, atol=1e-6)
    assert viewer.position.value == 5 and "'mat'" in viewer.status.value
    viewer.target.value = "dog"
    dog = wb.viz.logit_lens(tiny_model, "the cat sat on a", target="dog").target
    np.testing.assert_allclose(viewer.target_figure.data[0].y,
                               dog.query("position == 5").sort_values("layer")["prob"], atol=1e-6)
    viewer.position.value = 2
    np.testing.assert_allclose(viewer.target_figure.data[0].y,
                               dog.query("position == 2").sort_values("layer")["prob"], atol=1e-6)
    assert "position 2" in viewer.target_figure.layout.title.text
    trace = viewer.lens_figure.data[0]
    trace._click_callbacks[0](trace, Points(point_inds=[[0, 4]], xs=[4], ys=[0]), None)  # column 4
    assert viewer.position.value == 4 and "position 4" in viewer.target_figure.layout.title.text
    viewer.prompt.value = XSS
    assert all("<" not in t for t in viewer.lens_figure.layout.xaxis.ticktext)
    hover = np.asarray(viewer.lens_figure.data[0].customdata).ravel().tolist() + list(viewer.lens_figure.data[0].text.ravel())
    assert all("<" not in h.replace("<br>", "") for h in hover)
    viewer.target.value = "<script>"
    assert "&lt;" in viewer.status.value and "<script" not in viewer.status.value
    assert "<" not in viewer.target_figure.layout.title.text
    viewer.target.value = ""
    assert viewer.target_figure.layout.title.text == "no target token chosen" and not viewer.target_figure.data
    viewer.target.value = "dog"  # traces come back after a figure that had none
    assert len(viewer.target_figure.data) == 1 and "p('dog')" in viewer.target_figure.layout.title.text


def test_logit_lens_viewer_pages_a_long_prompt(long_model):
    viewer = wb.viz.LogitLensViewer(long_model, LONG, target="mat", page_size=24)
    n = len(viewer.tokens)
    assert viewer.window.value == viewer.window.max == (n - 1) // 24  # opens at the end of the prompt
    assert viewer.lens.positions == list(range(viewer.window.max * 24, n))
    assert _z(viewer.lens_figure).shape == (4, len(viewer.lens.positions))
    viewer.window.value = 10
    assert viewer.lens.positions == list(range(240, 264)) and viewer.position.value == 263
    assert _z(viewer.lens_figure).shape == (4, 24)
    assert len(viewer.lens_figure.to_json()) < 500_000


def test_model_explorer_search_and_selection(tiny_model):
    explorer = wb.viz.ModelExplorer(tiny_model, sample="the cat sat")
    n_hooks = len(tiny_model.hook_catalogue())
    assert len(explorer.hooks.options) == n_hooks and f"{n_hooks} of {n_hooks}" in explorer.count.value
    explorer.search.value = "blocks.*.hook_resid_post"
    assert explorer.hooks.options == tuple(f"blocks.{i}.hook_resid_post" for i in range(3))
    assert explorer.hooks.value == "blocks.0.hook_resid_post"
    explorer.hooks.value = "blocks.2.hook_resid_post"
    _, cache = tiny_model.run_with_cache("the cat sat", names_filter=["blocks.2.hook_resid_post"])
    act = cache["blocks.2.hook_resid_post"][0].numpy()
    assert "[1, 4, 64]" in explorer.detail.value and "[batch, pos, d_model]" in explorer.detail.value
    assert explorer.figure.layout.title.text.startswith("blocks.2.hook_resid_post")
    assert sum(explorer.figure.data[1].y) == act.size
    assert np.asarray(explorer.figure.data[0].z)[0].mean() == pytest.approx(act[0].mean(), rel=1e-4, abs=1e-6)
    explorer.search.value = "attention pattern"
    assert explorer.hooks.value == "blocks.0.attn.hook_pattern"
    assert "shape [4, 4, 4]" in explorer.figure.layout.title.text
    explorer.sample.value = XSS
    assert all("<" not in t for t in explorer.figure.layout.yaxis.ticktext)
    explorer.sample.value = ""
    assert "sample prompt is empty" in explorer.status.value
    explorer.search.value = "nothing matches this"
    assert explorer.hooks.options == () and explorer.detail.value == ""
