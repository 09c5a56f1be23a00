"""Stores and eval runs saved by an older workbench (tests/data/legacy-c80fc33) still open."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

LEGACY = Path(__file__).parents[1] / "data" / "legacy-c80fc33"
TEXTS = ["The nurse said she was tired.", "The doctor said he was late.",
         "Paris is the capital of France.", "Rome is the capital of Spain."]


def test_an_old_store_opens_and_holds_what_the_model_computes_today(tiny_model, tmp_path):
    from workbench.store import ActivationStore, cache_activations

    old = ActivationStore.open(LEGACY / "store")
    assert old.meta["text"].tolist() == TEXTS
    assert old.meta["label"].tolist() == [0, 1, 1, 0]
    data = pd.DataFrame({"text": TEXTS, "label": [0, 1, 1, 0]})
    new = cache_activations(tiny_model, data, hooks=["blocks.0.hook_resid_post", "blocks.1.attn.hook_z"],
                            positions="all", path=tmp_path / "new", dtype="float16", shard_size=2,
                            progress=False)
    for hook in ("blocks.0.hook_resid_post", "blocks.1.attn.hook_z"):
        assert old[hook].shape == new[hook].shape
        np.testing.assert_allclose(np.asarray(old[hook][:], dtype=np.float32),
                                   np.asarray(new[hook][:], dtype=np.float32), atol=2e-3)
    assert old.tokens(2) == new.tokens(2)


def test_an_old_suite_run_opens_and_reports(tmp_path):
    import workbench as wb
    from workbench.evals import EvalResult, SuiteResult

    run = wb.load_run(LEGACY / "quick-run")
    assert isinstance(run, SuiteResult)
    assert sorted(run.results) == ["occupation_pronoun", "true_false_facts"]
    for name, result in run.results.items():
        assert isinstance(result, EvalResult)
        saved = pd.read_parquet(LEGACY / "quick-run" / name / "metrics.parquet")
        pd.testing.assert_frame_equal(result.metrics.reset_index(drop=True), saved, check_dtype=False)
        assert len(result.samples) == len(pd.read_parquet(LEGACY / "quick-run" / name / "samples.parquet"))
    single = wb.load_run(LEGACY / "quick-run" / "true_false_facts")
    assert isinstance(single, EvalResult)
    html = wb.write_report(LEGACY / "quick-run", tmp_path / "report.html").read_text()
    assert '<h2 id="true_false_facts">' in html and '<h2 id="occupation_pronoun">' in html


@pytest.mark.parametrize("missing", ["manifest.json", "metrics.parquet"])
def test_a_damaged_old_run_names_the_file(tmp_path, missing):
    import shutil

    import workbench as wb
    from workbench.common.errors import WorkbenchError

    folder = tmp_path / "run"
    shutil.copytree(LEGACY / "quick-run" / "true_false_facts", folder)
    (folder / missing).unlink()
    with pytest.raises((WorkbenchError, FileNotFoundError), match=missing.split(".")[0]):
        wb.load_run(folder)
