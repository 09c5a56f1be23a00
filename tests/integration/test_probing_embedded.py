"""Probe sweeps on the embedded model for every built-in concept (small samples)."""

import pytest

import workbench as wb

pytestmark = pytest.mark.integration
HOOKS = [f"blocks.{i}.hook_resid_post" for i in (0, 8, 16, 24, 29)]


@pytest.mark.parametrize("concept", ["sentiment", "gender", "truth", "toxicity"])
def test_sweep_on_embedded_model(embedded, data_dir, concept):
    limit = 320 if concept == "truth" else 96  # truth is the weakest signal in this small model
    result = wb.probe_sweep(embedded, concept, hooks=HOOKS, limit=limit, cv=4, n_bootstrap=200,
                            data_dir=data_dir, progress=False)
    table = result.frame.pivot(index="layer", columns="metric", values="mean")
    assert list(table.index) == [0, 8, 16, 24, 29]
    best = table["accuracy"].max()
    # Measured on SmolLM2-135M (see the issue notes); thresholds leave room for sampling noise.
    floor = {"sentiment": 0.9, "gender": 0.8, "truth": 0.62, "toxicity": 0.7}[concept]
    assert best >= floor, table
    assert table["accuracy"].idxmax() != 0 or concept == "gender"  # readable beyond the embeddings
    assert (table["random_direction_accuracy"] <= best).all()
    assert result.direction(16).provenance["model"] == "SmolLM2-135M-Instruct"
