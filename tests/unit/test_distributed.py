"""Caching on a local Ray cluster (2 CPU workers, loopback) equals a single-process run, byte for byte."""

import filecmp
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_hf import WORDS

import workbench as wb
from workbench.common.errors import WorkbenchError

pytest.importorskip("ray", reason="Ray is the optional `distributed` extra (installed by `make test`)")
from workbench.distributed import cache_activations_ray  # noqa: E402


def texts(n=37):
    words = [w for w in WORDS if w.isalpha()]
    return pd.DataFrame({"text": [" ".join(words[(i * 7 + j) % len(words)] for j in range(2 + i % 9)) for i in range(n)],
                         "label": [i % 3 for i in range(n)]})


def same_store(a, b):
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["config"] == mb["config"] and ma["shards"] == mb["shards"] and ma["complete"] and mb["complete"]
    pd.testing.assert_frame_equal(pd.read_parquet(a / "meta.parquet"), pd.read_parquet(b / "meta.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(a / "tokens.parquet"), pd.read_parquet(b / "tokens.parquet"))
    for shard in ma["shards"]:
        files = sorted(p.name for p in (a / "shards" / shard["name"]).iterdir())
        match, mismatch, errors = filecmp.cmpfiles(a / "shards" / shard["name"], b / "shards" / shard["name"],
                                                   files, shallow=False)
        assert not mismatch and not errors and match == files


def test_ray_cache_equals_single_process_and_retries_a_failed_shard(hf_folder, tmp_path, monkeypatch):
    folder = hf_folder[0]
    options = dict(hooks=["blocks.*.hook_resid_post", "blocks.1.attn.hook_z"], positions="all",
                   batch_size=4, shard_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each; float sums depend on it
    try:
        single = wb.cache_activations(wb.load_model(folder, device="cpu"), texts(), path=tmp_path / "single",
                                      progress=False, **options)
    finally:
        torch.set_num_threads(threads)
    # Shard 2 fails once after its folder is renamed into place, before the driver records it.
    monkeypatch.setenv("WORKBENCH_TEST_FAIL_SHARD", "2")
    store = cache_activations_ray(str(folder), texts(), path=tmp_path / "ray", workers=2, threads=1,
                                  device="cpu", progress=False, **options)
    assert (tmp_path / "ray" / ".failed-once-2").exists()  # the failure happened, and was retried
    assert len(store) == 37 and store.complete
    same_store(tmp_path / "single", tmp_path / "ray")
    assert store["blocks.2.hook_resid_post"].shape == single["blocks.2.hook_resid_post"].shape
    assert (store.meta["label"] == single.meta["label"]).all()

    # Rerunning the same call finds every shard done and changes nothing.
    before = (tmp_path / "ray" / "manifest.json").read_text()
    cache_activations_ray(str(folder), texts(), path=tmp_path / "ray", workers=2, device="cpu", progress=False,
                          **options)
    assert json.loads((tmp_path / "ray" / "manifest.json").read_text())["shards"] == json.loads(before)["shards"]


def test_without_ray_the_error_says_how_to_install(hf_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(WorkbenchError, match=r"pip install 'workbench\[distributed\]'"):
        cache_activations_ray(str(hf_folder[0]), texts(4), path=tmp_path / "x")


def test_cache_cli_on_ray(hf_folder, tmp_path):
    from workbench.cli import main

    data = tmp_path / "texts.csv"
    texts(12).to_csv(data, index=False)
    code = main(["cache", "--model", str(hf_folder[0]), "--data", str(data), "--hooks", "blocks.0.hook_resid_post",
                 "--out", str(tmp_path / "store"), "--shard-size", "5", "--ray", "local", "--workers", "2",
                 "--device", "cpu"])
    assert code == 0
    store = wb.ActivationStore.open(tmp_path / "store")
    assert len(store) == 12 and store.complete and len(json.loads((tmp_path / "store" / "manifest.json").read_text())["shards"]) == 3


def test_ray_eval_equals_single_process(hf_folder, tmp_path, monkeypatch):
    from workbench.distributed import run_suite_ray

    # No data directory: the quick group is its two built-in suites (the data suites are optional).
    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-data"))
    model = wb.load_model(hf_folder[0], device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = wb.run_suite(model, "quick", limit=30, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert single.results, "the quick group scored nothing"
    ray_run = run_suite_ray(str(hf_folder[0]), "quick", workers=2, chunk_size=7, device="cpu", model=model,
                            limit=30, progress=False, out=tmp_path / "quick")
    assert set(ray_run.results) == set(single.results)
    for name, res in single.results.items():
        other = ray_run.results[name]
        assert other.samples["example_id"].tolist() == res.samples["example_id"].tolist()
        assert other.samples["prediction"].tolist() == res.samples["prediction"].tolist()
        a = np.concatenate([np.asarray(x, dtype=float).ravel() for x in res.samples["loglik"]])
        b = np.concatenate([np.asarray(x, dtype=float).ravel() for x in other.samples["loglik"]])
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4)
        pd.testing.assert_frame_equal(other.metrics, res.metrics, atol=1e-6, check_exact=False)
    assert (tmp_path / "quick" / "suite.json").is_file()
    with model.steer(np.ones(64), layer=0, alpha=1.0), pytest.raises(WorkbenchError, match="steering"):
        run_suite_ray(str(hf_folder[0]), "quick", model=model, progress=False)


def test_eval_cli_on_ray(hf_folder, tmp_path, monkeypatch):
    from workbench.cli import main

    monkeypatch.setenv("WORKBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-data"))
    out = tmp_path / "run"
    assert main(["eval", "--model", str(hf_folder[0]), "--suite", "true_false_facts", "--out", str(out),
                 "--device", "cpu", "--ray", "local", "--workers", "2"]) == 0
    res = wb.evals.EvalResult.load(out / "true_false_facts")
    assert len(res.samples) > 0 and "acc" in set(res.metrics["metric"])
