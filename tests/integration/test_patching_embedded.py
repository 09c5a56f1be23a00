"""Patching and steering on the embedded SmolLM2 model: an IOI prompt pair, the CLI, generation."""

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl_patching

import workbench as wb
from workbench.cli import main as cli_main

pytestmark = pytest.mark.integration
CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
LAYERS = [0, 14, 29]


def test_ioi_sweep_equals_transformer_lens_and_finds_the_name_positions(embedded):
    metric = wb.logit_diff(embedded, " Mary", " John")
    res = wb.patch_sweep(embedded, CLEAN, CORRUPT, metric, site="resid_pre", layers=LAYERS, progress=False)
    clean_tokens, corrupt_tokens = embedded.to_tokens(CLEAN), embedded.to_tokens(CORRUPT)
    n_pos = clean_tokens.shape[1]
    index = pd.DataFrame([(l, p) for l in LAYERS for p in range(n_pos)], columns=["layer", "pos"])
    with torch.no_grad():
        _, clean_cache = embedded.bridge.run_with_cache(clean_tokens)
        expected = tl_patching.get_act_patch_resid_pre(embedded.bridge, corrupt_tokens, clean_cache, metric,
                                                       index_df=index, index_axis_names=None)
    assert (res.raw.reshape(-1) - expected.cpu()).abs().max() <= 1e-4
    # The model prefers " Mary" after "John gave a drink to" and " John" after "Mary gave ...".
    assert res.clean_value > 1 and res.corrupt_value < -1
    changed = [p for p in range(n_pos) if res.clean_tokens[p] != res.corrupt_tokens[p]]
    assert res.clean_tokens[changed[0]] == " John"
    # At the first layer only the changed name carries the difference; by the last layer, only the
    # final position (where the answer is read) does.
    first, last = res.values[0], res.values[-1]
    assert first[changed].item() == pytest.approx(1.0, abs=0.05)
    assert last[-1].item() == pytest.approx(1.0, abs=0.05) and last[:-1].abs().max() < 0.05


def test_attribution_patching_tracks_the_exact_sweep_on_the_late_layers(embedded):
    metric = wb.logit_diff(embedded, " Mary", " John")
    approx = wb.attribution_patch(embedded, CLEAN, CORRUPT, metric, sites=["resid_pre"])["resid_pre"]
    exact = wb.patch_sweep(embedded, CLEAN, CORRUPT, metric, site="resid_pre", layers=[20, 29], progress=False)
    agreement = wb.attribution_agreement(approx, exact)
    assert agreement["n"] == exact.values.numel()
    assert agreement["pearson"] > 0.9, agreement


def test_patch_cli_writes_table_and_offline_heatmap(tmp_path):
    out = tmp_path / "ioi"
    code = cli_main(["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--wrong", " John",
                     "--site", "mlp_out", "--layers", "28", "29", "--out", str(out), "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 2 * 15 and set(table.columns) >= {"layer", "pos", "token", "value", "raw"}
    html = (out / "heatmap.html").read_text()
    assert "<script src=\"http" not in html and "Plotly" in html
    with pytest.raises(SystemExit):  # argparse names the valid sites
        cli_main(["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--site", "resid", "--out", str(out)])
    assert cli_main(["patch", "--clean", CLEAN, "--corrupt", CORRUPT, "--answer", " Mary", "--out", str(out)]) == 1


def test_steering_changes_generation_and_leaves_no_hook(embedded):
    prompt = "Q: What is the capital of France?\nA:"
    plain = embedded.generate(prompt, max_new_tokens=6)
    paris = embedded.to_tokens(" Paris", prepend_bos=False)[0, 0]
    # Steer against the unembedding direction of " Paris" at the last layer.
    vector = embedded.hf_model.lm_head.weight[paris].detach().clone()
    with embedded.steer(vector, layer=29, alpha=-200.0):
        steered = embedded.generate(prompt, max_new_tokens=6)
    assert "Paris" in plain and "Paris" not in steered
    assert embedded.active_hook_count() == 0 and embedded.active_interventions() == []
