"""05_misuse_and_refusal in real JupyterLab, driven by headless Chromium.

Every cell runs without an error in any output, on the shared data (skipped without it); the
judge's agreement line, the refusal direction's layer, the two plots and the drill-down dashboard
(prompt as rendered by the chat template, completion, verdict, reason) are in the page.
Screenshots go to runs/test-artifacts/browser/; with WORKBENCH_UPDATE_SCREENSHOTS=1 the README's
docs/screenshots/ get the benign ones only (the judge table and the two plots: never a harmful
prompt or completion).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from lab import (
    ARTIFACTS,
    REPO,
    cell_timings,
    jupyterlab,
    open_notebook,
    output_failures,
    plot_title,
    publish_screenshots,
    run_all,
    screenshot,
    wait_for,
)

pytestmark = pytest.mark.integration

NOTEBOOK = REPO / "notebooks" / "05_misuse_and_refusal.ipynb"
TIMEOUT_SHOT = ARTIFACTS / "misuse_timeout.png"
SCREENSHOTS = ("misuse_judge_agreement", "refusal_direction_layers", "refusal_bypass_induce")
LIMIT = "6"  # prompts per suite (WORKBENCH_NOTEBOOK_LIMIT): the page, not the statistics, is under test


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    folder = Path(os.environ.get("WORKBENCH_DATA") or REPO.parent / "shared" / "data")
    if not (folder / "MANIFEST.json").is_file():
        pytest.skip(f"benchmark data not found at {folder} (set WORKBENCH_DATA)")
    # The kernel inherits the server's environment.
    monkeypatch.setenv("WORKBENCH_DATA", str(folder))
    monkeypatch.setenv("WORKBENCH_NOTEBOOK_LIMIT", os.environ.get("WORKBENCH_NOTEBOOK_LIMIT", LIMIT))
    return folder


def output_with(page, text: str):
    """The one cell output whose text contains ``text``."""
    found = page.locator(".jp-OutputArea-output").filter(has_text=text)
    wait_for(lambda: found.count() >= 1, 60, f"an output containing {text!r}", page, on_timeout=TIMEOUT_SHOT)
    return found.first


def test_misuse_notebook_runs_in_jupyterlab(browser, tmp_path, shared_data):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with jupyterlab(tmp_path, [NOTEBOOK]) as lab:
        page, console_errors = open_notebook(browser, lab, NOTEBOOK.name)
        try:
            run_all(page, lab, timeout=1500, on_timeout=TIMEOUT_SHOT)
        finally:
            (ARTIFACTS / "misuse_cell_times.json").write_text(json.dumps(cell_timings(page), indent=1))
        assert not output_failures(page), f"errors in outputs: {output_failures(page)}"

        text = " ".join(page.locator(".jp-OutputArea-output").all_text_contents())
        assert "chat template: " in text
        assert re.search(r"keyword:\S+ agrees with XSTest human labels: accuracy 0\.\d\d \[", text), text[:2000]
        layer = re.search(r"refusal direction: layer (\d+), position (-\d)", text)
        assert layer, "the refusal direction's layer is not printed"

        judges = output_with(page, "judge (vs XSTest human labels)")
        assert judges.locator("table tbody tr").count() >= 2 and "◀\u00a0default" in judges.text_content()

        plots = page.locator(".jp-OutputArea-output .js-plotly-plot")
        wait_for(lambda: plots.count() >= 2, 60, "the two plotly figures", page, on_timeout=TIMEOUT_SHOT)
        titles = [plot_title(plots.nth(i)) for i in range(plots.count())]
        by_layer = next((i for i, t in enumerate(titles) if t.startswith("refusal direction by layer")), None)
        effects = next((i for i, t in enumerate(titles) if t.startswith("refusal rate: direction removed (bypass)")), None)
        assert by_layer is not None and effects is not None, titles
        layer_plot = plots.nth(by_layer)
        assert f"chosen: layer {layer.group(1)}" in layer_plot.text_content()
        assert layer_plot.locator(".scatterlayer .trace").count() == 3  # ablation, induce, KL
        effect_plot = plots.nth(effects)
        bars = effect_plot.locator(".barlayer .point")
        assert bars.count() == 6  # none / direction / placebo, for bypass and for induce
        shown = effect_plot.text_content()
        assert all(name in shown for name in ("placebo bypass", "placebo induce", "harmful_requests", "over_refusal"))

        # The drill-down: the prompt as the template rendered it (special tokens shown as text),
        # the completion, the verdict and its reason; the judge's agreement in the status line.
        dashboard = page.locator(".wb-eval-dashboard")
        drilldown = dashboard.locator(".wb-drilldown table")
        wait_for(lambda: drilldown.locator("th").count() >= 7, 120, "the dashboard's drill-down table", page,
                 on_timeout=TIMEOUT_SHOT)
        headers = drilldown.locator("th").all_text_contents()
        assert ["prompt as rendered", "completion", "verdict", "reason"] == headers[3:7], headers
        assert "<|im_start|>user" in drilldown.text_content()
        # the two runs (no intervention, bypass) on the same prompts: the paired rows with McNemar
        assert "mcnemar_exact" in dashboard.locator(".wb-paired table").text_content()
        assert "agrees with XSTest human labels" in dashboard.text_content()
        cosines = output_with(page, "cosine similarity")  # per-topic directions against the refusal direction
        assert cosines.locator("table tbody tr").count() >= 3

        screenshot(page, judges, ARTIFACTS / "misuse_judge_agreement.png")
        screenshot(page, layer_plot, ARTIFACTS / "refusal_direction_layers.png")
        screenshot(page, effect_plot, ARTIFACTS / "refusal_bypass_induce.png")
        assert not output_failures(page), f"errors in outputs: {output_failures(page)}"
        page.close()
    assert not console_errors, "JavaScript errors:\n" + "\n".join(console_errors)
    publish_screenshots(SCREENSHOTS)
