"""Probe sweeps: folds, control task, CIs, agreement with scikit-learn, directions, bad input."""

import numpy as np
import pandas as pd
import pytest
import torch
from meta_checkpoint import write_meta_checkpoint

import workbench as wb
from workbench.probing.concepts import Concept
from workbench.probing.sweep import _out_of_fold, control_labels, grouped_folds


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A tiny random LLaMA with a real SentencePiece tokenizer (any text tokenizes)."""
    folder = tmp_path_factory.mktemp("meta") / "tiny"
    write_meta_checkpoint(folder, llama2=True, seed=1)
    return wb.load_model(folder, device="cpu")


def _word_concept(n_templates=10):
    """Label carried by the last word; groups are templates, so words recur across folds."""
    positive, negative = ["good", "great", "fine", "nice"], ["bad", "awful", "poor", "sad"]
    rows = []
    for t in range(n_templates):
        for label, words in ((1, positive), (0, negative)):
            for word in words:
                rows.append({"text": f"Template number {t} says it was {word}", "label": label,
                             "group": f"t{t}", "word": word})
    frame = pd.DataFrame(rows)
    return Concept(name="toy", card="toy", label_names=["neg", "pos"], frame=frame, source_hash="x" * 64)


def test_grouped_folds_keep_groups_whole_and_balance_classes():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(20)], 6)
    y = np.tile([0, 1, 0, 1, 0, 1], 20)
    fold = grouped_folds(y, groups, 5, seed=3)
    assert set(fold) == set(range(5))
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1
    for k in range(5):
        assert 0.3 < y[fold == k].mean() < 0.7
    assert np.array_equal(fold, grouped_folds(y, groups, 5, seed=3))
    with pytest.raises(ValueError, match="3 groups .* fewer than cv=5"):
        grouped_folds(y[:18], groups[:18], 5, seed=0)
    del rng


def test_control_labels_are_consistent_per_word_and_mixed():
    words = np.array(list("abcdefghij") * 5)
    y = np.arange(50) % 2
    control = control_labels(words, y, seed=0)
    for w in np.unique(words):
        assert len(set(control[words == w])) == 1
    assert 0 < control.mean() < 1
    assert np.array_equal(control, control_labels(words, y, seed=0))


def test_out_of_fold_accuracy_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    n, d = 300, 20
    X = rng.standard_normal((2, n, d))
    y = (X[1, :, 0] + 0.8 * rng.standard_normal(n) > 0).astype(int)
    groups = np.repeat(np.arange(30), 10)
    folds = grouped_folds(y, groups, 5, seed=0)
    ours = (_out_of_fold(torch.from_numpy(X).float(), y, folds, "logistic", 1.0, 1.0) > 0) == y
    for layer in range(2):
        theirs = np.zeros(n, dtype=bool)
        for k in range(5):
            train, test = folds != k, folds == k
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0)).fit(X[layer, train], y[train])
            theirs[test] = clf.predict(X[layer, test]) == y[test]
        assert abs(ours[layer].mean() - theirs.mean()) <= 0.01
    assert ours[1].mean() > 0.75 and ours[0].mean() < 0.65


def test_sweep_end_to_end_with_control_task(sp_model, tmp_path):
    result = wb.probe_sweep(sp_model, _word_concept(), hooks="blocks.*.hook_resid_post", cv=5,
                            n_bootstrap=200, progress=False)
    table = result.frame.pivot(index="layer", columns="metric", values="mean")
    assert list(table.index) == [0, 1]
    # A random network still tells word types apart, so both the real task and the control task
    # (random labels per word) are learned by memorising words: selectivity is near zero.
    assert (table["accuracy"] >= 0.95).all()
    assert (table["control_accuracy"] >= 0.9).all()
    assert (table["selectivity"].abs() <= 0.1).all()
    for _, row in result.frame.iterrows():
        assert row["ci_low"] <= row["mean"] + 1e-12 and row["mean"] <= row["ci_high"] + 1e-12
    direction = result.direction(1)
    assert direction.hook == "blocks.1.hook_resid_post" and abs(np.linalg.norm(direction.vector) - 1) < 1e-5
    assert direction.provenance["data_hash"] == "x" * 64 and direction.provenance["cv_accuracy"] >= 0.95
    # The direction separates the classes on the training data.
    store = wb.cache_activations(sp_model, _word_concept().frame, hooks="blocks.1.hook_resid_post", progress=False)
    projection = direction.project(np.asarray(store["blocks.1.hook_resid_post"]))
    labels = store.meta["label"].to_numpy()
    assert projection[labels == 1].mean() > projection[labels == 0].mean()
    result.save(tmp_path / "probe")
    loaded = wb.load_directions(tmp_path / "probe" / "directions.safetensors")
    assert np.allclose(loaded["blocks.1.hook_resid_post"].vector, direction.vector, atol=1e-7)  # renormalised on load
    assert loaded["blocks.1.hook_resid_post"].concept == "toy"
    assert pd.read_parquet(tmp_path / "probe" / "frame.parquet").shape == result.frame.shape
    figure = result.plot()
    assert {t.name for t in figure.data if t.name} >= {"probe accuracy", "control task (Hewitt & Liang)"}


@pytest.mark.parametrize("method", ["mass_mean", "ridge"])
def test_other_methods(sp_model, method):
    result = wb.probe_sweep(sp_model, _word_concept(), hooks="blocks.1.hook_resid_post", method=method,
                            cv=5, n_bootstrap=100, progress=False)
    metric = "r2" if method == "ridge" else "accuracy"
    assert set(result.frame["metric"]) == ({"r2"} if method == "ridge" else
                                           {"accuracy", "control_accuracy", "selectivity", "random_direction_accuracy"})
    value = result.frame.loc[result.frame["metric"] == metric, "mean"].item()
    assert value > (0.5 if method == "ridge" else 0.8)  # mass-mean is weaker than logistic here


def test_named_concept_with_limit(sp_model):
    result = wb.probe_sweep(sp_model, "sentiment", hooks="blocks.0.hook_resid_post", limit=64, cv=4,
                            n_bootstrap=50, progress=False)
    assert result.provenance["n_examples"] == 64 and result.concept == "sentiment"


def test_bad_input(sp_model):
    concept = _word_concept()
    one_class = Concept("one", "", ["a", "b"], concept.frame.assign(label=1), "x")
    with pytest.raises(ValueError, match="exactly 2 label values"):
        wb.probe_sweep(sp_model, one_class, progress=False)
    with pytest.raises(ValueError, match="10 groups .* fewer than cv=20"):
        wb.probe_sweep(sp_model, concept, cv=20, progress=False)
    with pytest.raises(ValueError, match="one activation row per example"):
        wb.probe_sweep(sp_model, concept, positions="all", progress=False)
    with pytest.raises(ValueError, match="method="):
        wb.probe_sweep(sp_model, concept, method="svm", progress=False)
    with pytest.raises(ValueError, match="Unknown concept|unknown concept"):
        wb.probe_sweep(sp_model, "no-such-concept", progress=False)


def test_nan_activations_are_refused(sp_model):
    def poison(act, hook):
        act[0, -1, 0] = float("nan")
        return act

    with sp_model.hooks([("blocks.0.hook_resid_post", poison)]):
        with pytest.raises(ValueError, match="NaN/inf for examples"):
            wb.probe_sweep(sp_model, _word_concept(), hooks="blocks.1.hook_resid_post", progress=False)


def test_direction_random_baseline_and_errors():
    d = wb.Direction(np.ones(8), "blocks.0.hook_resid_post", 0, "c", "m")
    r = d.random_like(seed=1)
    assert r.concept == "random" and abs(np.linalg.norm(r.vector) - 1) < 1e-6
    assert not np.allclose(r.vector, d.vector)
    with pytest.raises(ValueError, match="norm"):
        wb.Direction(np.zeros(4), "h", 0, "c", "m")


def test_cli_probe(sp_model, tmp_path, capsys):
    from workbench.cli import main

    folder = sp_model.source.path
    assert main(["probe", "--model", folder, "--concept", "sentiment", "--limit", "48", "--cv", "3",
                 "--hooks", "blocks.*.hook_resid_post", "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "selectivity" in out and "best layer" in out
    for name in ("frame.parquet", "predictions.parquet", "directions.safetensors", "manifest.json", "plot.html"):
        assert (tmp_path / "p" / name).is_file(), name
    html = (tmp_path / "p" / "plot.html").read_text()
    import re

    assert not re.search(r'<script[^>]*src="https?://', html)  # plotly.js inlined: opens offline
    assert "Plotly.newPlot" in html
