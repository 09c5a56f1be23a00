"""Probe explorer: the projection figure shows the sweep's out-of-fold scores; clicks pick layers."""

import numpy as np
import pandas as pd
import pytest
from plotly.callbacks import Points

import workbench as wb
from workbench.probing.concepts import Concept
from workbench.viz.probe_explorer import probe_projection_figure


def _concept(name, words_pos, words_neg, n_templates=6):
    rows = []
    for t in range(n_templates):
        for label, words in ((1, words_pos), (0, words_neg)):
            for word in words:
                rows.append({"text": f"the cat {t} was {word} <b>", "label": label, "group": f"t{t}", "word": word})
    return Concept(name=name, card=name, label_names=["neg <i>", "pos"], frame=pd.DataFrame(rows), source_hash="x" * 64)


@pytest.fixture(scope="module")
def sweeps(tiny_model):
    concepts = [_concept("colour", ["red", "blue"], ["dog", "cat"]), _concept("place", ["paris", "rome"], ["mat", "house"])]
    hooks = [f"blocks.{i}.hook_resid_post" for i in range(3)]
    results = [wb.probe_sweep(tiny_model, c, hooks=hooks, positions="last", cv=3, n_bootstrap=50, progress=False)
               for c in concepts]
    return results, concepts


def test_projection_figure_is_the_out_of_fold_scores(sweeps):
    (result, _), (concept, _) = sweeps
    fig = probe_projection_figure(result.predictions, "blocks.1.hook_resid_post", concept.label_names, concept.texts)
    rows = result.predictions.query("hook == 'blocks.1.hook_resid_post'")
    assert [t.name for t in fig.data] == ["neg &lt;i&gt;", "pos"]
    for label, trace in enumerate(fig.data):
        np.testing.assert_allclose(trace.x, rows.loc[rows["label"] == label, "score"])
        assert all("<b>" not in h and "&lt;b&gt;" in h for h in trace.text)
    with pytest.raises(ValueError, match="no predictions for hook"):
        probe_projection_figure(result.predictions, "blocks.9.hook_resid_post")
    many = pd.DataFrame({"example": range(5000), "hook": "h", "label": np.arange(5000) % 2, "score": np.arange(5000.0)})
    assert all(len(t.x) == 1000 for t in probe_projection_figure(many, "h", max_points=1000).data)


def test_probe_explorer_layers_concepts_and_clicks(sweeps):
    results, concepts = sweeps
    explorer = wb.viz.ProbeExplorer(results, concepts)
    first = results[0]
    assert explorer.layer.value == f"blocks.{first.best_layer()}.hook_resid_post"
    assert len(explorer.accuracy.data) == 2 * 2 * 3  # 2 concepts x (CI band + curve) x 3 metrics
    explorer.layer.value = "blocks.0.hook_resid_post"
    scores = first.predictions.query("hook == 'blocks.0.hook_resid_post' and label == 1")["score"]
    np.testing.assert_allclose(explorer.projection.data[1].x, scores)
    assert explorer.accuracy.layout.shapes[0].x0 == 0
    accuracy = first.frame.query("hook == 'blocks.0.hook_resid_post' and metric == 'accuracy'")["mean"].item()
    assert f"accuracy {accuracy:.3f}" in explorer.status.value
    curve = explorer.accuracy.data[1]
    curve._click_callbacks[0](curve, Points(point_inds=[2], xs=[2.0], ys=[0.5]), None)  # click layer 2
    assert explorer.layer.value == "blocks.2.hook_resid_post" and explorer.accuracy.layout.shapes[0].x0 == 2
    explorer.concept.value = "place"
    assert "#b00020" not in explorer.status.value, explorer.status.value  # no error shown
    assert explorer.projection.layout.title.text.startswith("place")
    np.testing.assert_allclose(explorer.projection.data[0].x, results[1].predictions.query(
        "hook == @explorer.layer.value and label == 0")["score"])
    with pytest.raises(ValueError, match="one per result"):
        wb.viz.ProbeExplorer(results, concepts[:1])
