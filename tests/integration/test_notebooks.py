"""Every notebook in notebooks/ runs top to bottom on the embedded model (quick size)."""

from pathlib import Path

import nbformat
import pytest
import torch
from nbclient import NotebookClient

pytestmark = pytest.mark.integration
NOTEBOOKS = sorted((Path(__file__).parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Run capped, with their own checks, not a second time here: test_notebooks_studies.py (01-04),
# test_notebook_misuse.py (05), test_notebook_features.py (06), test_notebook_finetuning.py (07).
STUDIES = {"01_bias_study", "02_activation_patching", "03_truthfulness", "04_safety_eval_suite",
           "05_misuse_and_refusal", "06_features", "07_finetuning_and_safety"}
OTHERS = [p for p in NOTEBOOKS if p.stem not in STUDIES]


def _quick(nb) -> None:
    """Set the parameter cell (tagged ``parameters``) to the quick size, whatever was committed."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert cells, "a notebook needs a cell tagged 'parameters' that selects quick vs full size"
    cells[0].source += '\nSIZE = "quick"'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_outputs_committed(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs committed"


@pytest.mark.parametrize("path", OTHERS, ids=[p.stem for p in OTHERS])
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    _quick(nb)
    # Fails on the first cell that raises, naming it; the notebook runs in a scratch folder.
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Traceback" not in text


def test_quickstart_is_there():
    assert "00_quickstart" in [p.stem for p in NOTEBOOKS]


def test_logit_lens_on_the_embedded_model(embedded):
    """What the README's logit-lens screenshot shows: ' Paris' only emerges in the last layers."""
    import workbench as wb

    lens = wb.viz.logit_lens(embedded, "The capital of France is", target=" Paris", positions=[-1])
    curve = lens.target.set_index("layer")["prob"]
    last = embedded.cfg.n_layers - 1
    with torch.no_grad():
        p_model = embedded("The capital of France is")[0, -1].softmax(-1)
    assert curve[last] == pytest.approx(p_model[lens.target["token_id"].iloc[0]].item(), abs=1e-5)
    assert lens.top.query("layer == @last and rank == 1")["token"].item() == " Paris"
    assert curve[last] > 0.5 and curve.loc[: last - 4].max() < 0.05
