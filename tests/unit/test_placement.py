"""A model split across devices (here: CPU and disk offload) behaves as the model on one device."""

import numpy as np
import pytest
import torch

from workbench.models.loading import load_model
from workbench.patching import logit_diff, patch_sweep
from workbench.store import cache_activations

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
         "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}
CLEAN, CORRUPT = "the cat sat on a mat and the dog ran to", "the dog sat on a mat and the cat ran to"


@pytest.fixture(scope="module")
def split_model(hf_folder, tmp_path_factory):
    return load_model(hf_folder[0], device_map=SPLIT, offload_folder=tmp_path_factory.mktemp("offload"))


def test_layers_are_where_the_map_says(split_model):
    assert split_model.hf_model.hf_device_map == SPLIT
    # Offloaded weights wait on the meta device until their layer runs.
    assert split_model.hf_model.model.layers[1].mlp.up_proj.weight.device.type == "meta"


def test_forward_cache_patching_steering_and_store_match_one_device(tiny_model, split_model):
    tokens = tiny_model.to_tokens(CLEAN)
    torch.testing.assert_close(split_model(tokens), tiny_model(tokens), rtol=0, atol=0)
    _, a = tiny_model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")
    _, b = split_model.run_with_cache(tokens, names_filter="blocks.*.hook_resid_post")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0)

    metric = logit_diff(tiny_model, " house", " mat")
    for site in ("resid_pre", "head_out"):
        exact = patch_sweep(tiny_model, CLEAN, CORRUPT, metric, site=site, progress=False)
        split = patch_sweep(split_model, CLEAN, CORRUPT, metric, site=site, progress=False)
        torch.testing.assert_close(split.raw, exact.raw, rtol=0, atol=1e-6)

    direction = np.random.default_rng(0).standard_normal(64)
    with tiny_model.steer(direction, layer=1, alpha=5.0), split_model.steer(direction, layer=1, alpha=5.0):
        assert split_model.generate("the cat", max_new_tokens=6) == tiny_model.generate("the cat", max_new_tokens=6)
        torch.testing.assert_close(split_model(tokens), tiny_model(tokens), rtol=0, atol=1e-6)

    texts = ["the cat sat", "a dog ran to the house", "red blue green"]
    one = cache_activations(tiny_model, texts, hooks="blocks.*.hook_resid_post", positions="all", progress=False)
    two = cache_activations(split_model, texts, hooks="blocks.*.hook_resid_post", positions="all", progress=False)
    for hook in one.hooks:
        np.testing.assert_array_equal(np.asarray(two[hook]), np.asarray(one[hook]))


def test_placement_arguments_are_checked(hf_folder):
    with pytest.raises(ValueError, match="either device= or device_map="):
        load_model(hf_folder[0], device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="only apply with device_map="):
        load_model(hf_folder[0], max_memory={"cpu": "1GiB"})
    model = load_model(hf_folder[0], device_map="auto", max_memory={"cpu": "1GiB"})
    assert set(model.hf_model.hf_device_map.values()) <= {"cpu", 0}
