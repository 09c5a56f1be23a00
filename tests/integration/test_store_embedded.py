"""The activation store on the embedded model and real data."""

import numpy as np
import pandas as pd
import pytest

import workbench as wb

pytestmark = pytest.mark.integration


def test_store_matches_run_with_cache_on_crows_pairs(embedded, data_dir, tmp_path):
    frame = pd.read_csv(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv").head(12)
    hooks = ["blocks.5.hook_resid_post", "blocks.10.attn.hook_z", "blocks.29.hook_resid_post"]
    store = wb.cache_activations(embedded, frame[["sent_more", "bias_type"]], text_column="sent_more",
                                 hooks=hooks, positions="all", path=tmp_path / "acts", dtype="float32",
                                 batch_size=4, shard_size=5, progress=False)
    assert len(store) == 12 and store.meta["bias_type"].tolist() == frame["bias_type"].tolist()
    assert store["blocks.10.attn.hook_z"].shape == (store.meta["n_tokens"].sum(), 9, 64)
    for i in (0, 7, 11):
        _, cache = embedded.run_with_cache(frame["sent_more"][i], names_filter=hooks)
        for hook in hooks:
            reference = cache[hook][0].numpy()
            scale = np.abs(reference).max()
            assert np.abs(store.example(hook, i) - reference).max() <= 1e-4 * max(scale, 1.0), hook
        assert store.tokens(i) == embedded.to_str_tokens(frame["sent_more"][i])
