"""Patching explorer: the heatmap is patch_sweep's table; a click shows that one cell's patched run."""

import numpy as np
import pytest
import torch
from plotly.callbacks import Points

import workbench as wb
from workbench.models.sites import SITES

CLEAN = "the cat sat on a mat and the dog ran to"
CORRUPT = "the dog sat on a mat and the cat ran to"


def _click(explorer, row, column):
    trace = explorer.heatmap.data[0]
    points = Points(point_inds=[(row, column)], xs=[trace.x[column]], ys=[trace.y[row]])
    trace._click_callbacks[0](trace, points, None)


@pytest.mark.parametrize("site", ["resid_pre", "resid_mid", "head_out"])
def test_heatmap_is_the_sweep_and_a_click_patches_one_cell(tiny_model, site):
    explorer = wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" house", wrong=" mat", site=site)
    assert "#b00020" not in explorer.status.value, explorer.status.value
    metric = wb.logit_diff(tiny_model, " house", " mat")
    expected = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, progress=False)
    np.testing.assert_allclose(np.asarray(explorer.heatmap.data[0].z, dtype=float), expected.values.numpy(),
                               rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(explorer.heatmap.data[0].customdata, dtype=float), expected.raw.numpy(),
                               rtol=0, atol=1e-5)

    _click(explorer, row=1, column=2)
    chosen = explorer.selected
    assert chosen["layer"] == 1 and chosen["column"] == 2
    # The patched run's metric is the sweep's raw value for that cell (the oracle: TL-equal sweep).
    assert chosen["value"] == pytest.approx(expected.raw[1, 2].item(), abs=1e-4)
    # And its top tokens are those of a hand-made forward pass with that one activation copied.
    name = SITES[site].hook_name(1)
    _, clean_cache = tiny_model.run_with_cache(CLEAN, names_filter=[name])

    def copy(act, hook):
        if site == "head_out":
            act[:, :, 2] = clean_cache[name][:, :, 2]
        else:
            act[:, 2] = clean_cache[name][:, 2]
        return act

    with torch.no_grad(), tiny_model.hooks([(name, copy)]):
        probs = tiny_model(CORRUPT)[0, -1].softmax(-1)
    top = probs.topk(5)
    assert chosen["top"]["token"].tolist() == [tiny_model.to_string(torch.tensor([i])) for i in top.indices.tolist()]
    np.testing.assert_allclose(chosen["top"]["prob"], top.values.numpy(), atol=1e-5)
    assert f"{chosen['value']:.3f}" in explorer.detail.value


def test_changing_the_site_and_rerunning(tiny_model):
    explorer = wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" house", wrong=" mat", layers=[0, 2])
    assert [y for y in explorer.heatmap.data[0].y] == ["L0", "L2"]
    # Two title lines: the metric and its values on one line ran past the figure's width in the browser.
    title = explorer.heatmap.layout.title.text
    assert title.startswith("exact patching (denoise) of resid_pre<br>"), title
    assert "logit_diff(&#39; house&#39; - &#39; mat&#39;): clean " in title
    explorer.site.value = "mlp_out"
    explorer.run_button.click()
    assert explorer.result.site == "mlp_out" and "mlp_out" in explorer.heatmap.layout.title.text
    _click(explorer, row=1, column=0)
    assert explorer.selected["layer"] == 2
    # head_out_by_pos: the heatmap sums heads per position; a click patches all heads there.
    explorer.site.value = "head_out_by_pos"
    explorer.run_button.click()
    _click(explorer, row=0, column=3)
    metric = wb.logit_diff(tiny_model, " house", " mat")
    whole = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="attn_out", layers=[0], progress=False)
    # All heads' z at one position together are the attention output at that position.
    assert explorer.selected["value"] == pytest.approx(whole.raw[0, 3].item(), abs=1e-4)


def test_bad_input_is_shown_in_the_status_line(tiny_model):
    explorer = wb.viz.PatchingExplorer(tiny_model, CLEAN, "the dog sat", answer=" house", wrong=" mat")
    assert "#b00020" in explorer.status.value and "same number" in explorer.status.value
    explorer.corrupt.value = CORRUPT
    explorer.answer.value = " house mat"
    explorer.run_button.click()
    assert "not one" in explorer.status.value and explorer.result is None
    with pytest.raises(ValueError, match="run the sweep first"):
        explorer.select(0, 0)


def test_prompt_text_is_escaped(tiny_model):
    explorer = wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" house", wrong=" mat")
    explorer.clean.value = "<x> on a mat and the dog ran to"  # '<', 'x', '>': three <unk> tokens
    explorer.run_button.click()
    assert "#b00020" not in explorer.status.value, explorer.status.value
    labels = " ".join(explorer.heatmap.data[0].x)
    assert "<unk>" not in labels and "&lt;unk&gt;" in labels
    _click(explorer, row=0, column=1)
    assert "<unk>" not in explorer.detail.value


def test_a_precomputed_sweep_is_shown_as_is(tiny_model):
    metric = wb.logit_diff(tiny_model, " house", " mat")
    res = wb.patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site="mlp_out", layers=[1, 2], progress=False)
    explorer = wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" house", wrong=" mat", result=res)
    assert explorer.result is res and explorer.site.value == "mlp_out"
    _click(explorer, row=0, column=4)
    assert explorer.selected["value"] == pytest.approx(res.raw[0, 4].item(), abs=1e-4)
    with pytest.raises(ValueError, match="metric"):
        wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" mat", wrong=" house", result=res)
    with pytest.raises(ValueError, match="another clean prompt"):
        wb.viz.PatchingExplorer(tiny_model, CORRUPT, CLEAN, answer=" house", wrong=" mat", result=res)


def test_a_long_prompt_is_swept_one_window_of_positions_at_a_time(tiny_model):
    clean = " ".join([CLEAN] * 6)
    corrupt = " ".join([CLEAN] * 5 + [CORRUPT])
    n = tiny_model.to_tokens(clean).shape[1]
    assert n > 40
    explorer = wb.viz.PatchingExplorer(tiny_model, clean, corrupt, answer=" house", wrong=" mat", layers=[0, 1],
                                   max_positions=16)
    assert "#b00020" not in explorer.status.value, explorer.status.value
    # the window that ends at the last position, where the metric reads the answer
    assert explorer.result.positions == list(range(n - 16, n))
    assert explorer.window.layout.display != "none" and explorer.window.value == n - 16
    assert f"positions {n - 16}–{n - 1} of {n}" in explorer.status.value
    assert len(explorer.heatmap.data[0].x) == 16
    # the window's cells are the full sweep's cells at those positions
    metric = wb.logit_diff(tiny_model, " house", " mat")
    full = wb.patch_sweep(tiny_model, clean, corrupt, metric, layers=[0, 1], progress=False)
    np.testing.assert_allclose(np.asarray(explorer.heatmap.data[0].z, dtype=float), full.values[:, n - 16:].numpy(),
                               rtol=0, atol=1e-5)
    # paging: another window, and its clicked cell is a cell of that window
    explorer.window.value = 3
    explorer.run_button.click()
    assert explorer.result.positions == list(range(3, 19))
    _click(explorer, row=1, column=0)
    assert explorer.selected["column"] == 3
    # head_out covers all positions (layer x head): no window
    explorer.site.value = "head_out"
    explorer.run_button.click()
    assert explorer.window.layout.display == "none" and explorer.result.axes == ("head",)
    # a short prompt: no window either
    short = wb.viz.PatchingExplorer(tiny_model, CLEAN, CORRUPT, answer=" house", wrong=" mat", layers=[0])
    assert short.window.layout.display == "none" and "positions" not in short.status.value
