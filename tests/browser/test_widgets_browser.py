"""The experiment widgets (patching explorer, steering generator, eval dashboard) in real JupyterLab.

Runs the fixture notebook ``widgets_tour.ipynb`` (thin: it only calls the library) in headless
Chromium, then does in the browser what a user would: presses the patching explorer's
**Run sweep** and clicks a heatmap cell, types a new steering strength, and filters the
dashboard to one category. Each step must reach the kernel and come back as redrawn SVG or
text; neither the console nor any output may show an error. Screenshots go to
runs/test-artifacts/browser/ (gitignored); with WORKBENCH_UPDATE_SCREENSHOTS=1 they also replace
the README's docs/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lab import (
    ARTIFACTS,
    click_heatmap_cell,
    clipped_parts,
    notebook_run,
    output_failures,
    plot_title,
    publish_screenshots,
    screenshot,
    set_slider_readout,
    wait_for,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TIMEOUT_SHOT = ARTIFACTS / "widgets_timeout.png"
SHOTS = ("patching_explorer", "steering_generator", "eval_dashboard")
# What the notebook builds (kept in step with widgets_tour.ipynb).
LAYERS = [0, 10, 20, 21, 22, 24, 29]
N_TOKENS = 15  # "<|im_start|>When Mary and John went to the store, John gave a drink to"


def _ticks(plot, axis: str) -> list[str]:
    """Tick labels in reading order (left to right, top to bottom), whitespace runs as one space."""
    ticks = plot.locator(f".{axis}tick text").evaluate_all(
        "ts => ts.map(t => { const b = t.getBoundingClientRect(); return [b.x, b.y, t.textContent]; })")
    ticks.sort(key=lambda t: t[0] if axis == "x" else t[1])
    return [" ".join(text.split()) for _, _, text in ticks]


def _wait(predicate, what: str, page, timeout: float = 60):
    return wait_for(predicate, timeout, what, page, on_timeout=TIMEOUT_SHOT)


def test_experiment_widgets_run_in_jupyterlab(browser, tmp_path):
    notebook = HERE / "widgets_tour.ipynb"
    with notebook_run(browser, tmp_path, notebook, TIMEOUT_SHOT) as (page, console_errors):

        # --- Patching explorer: nothing is computed until Run sweep is pressed in the page.
        patching = page.locator(".wb-patching-explorer")
        _wait(lambda: patching.locator("input[type=text]").count() == 4, "the patching explorer's controls", page)
        assert patching.locator("select option").count() >= 6  # the patching sites
        assert patching.locator(".hm image, .heatmaplayer image").count() == 0
        patching.locator("button", has_text="Run sweep").click()
        n_cells = len(LAYERS) * N_TOKENS
        _wait(lambda: f"{n_cells} cells" in patching.inner_text(), "the sweep to finish", page, timeout=240)
        assert re.search(r"clean 5\.\d+, corrupted -5\.\d+", patching.inner_text()), patching.inner_text()
        heatmap = patching.locator(".js-plotly-plot").first
        _wait(lambda: heatmap.locator(".hm image, .heatmaplayer image").count() >= 1, "the sweep heatmap", page)
        assert _ticks(heatmap, "y") == [f"L{layer}" for layer in LAYERS]
        x_ticks = _ticks(heatmap, "x")
        assert len(x_ticks) == N_TOKENS and x_ticks[10] == "10: John" and x_ticks[14] == "14: to", x_ticks
        assert "resid_pre" in plot_title(heatmap)
        # The last position at layer 22, half-way through the hand-over of the name.
        detail = patching.locator(".widget-html").last
        click_heatmap_cell(heatmap, row=LAYERS.index(22), column=14, n_rows=len(LAYERS), n_columns=N_TOKENS)
        _wait(lambda: "layer 22, position 14" in detail.inner_text(), "the clicked cell's patched prediction", page)
        text = detail.inner_text()
        assert "patched: resid_pre" in text and "from the clean run" in text, text
        assert re.search(r"logit_diff\(' Mary' - ' John'\) = -?\d+\.\d{3}", text), text
        rows = detail.locator("tr")
        assert rows.count() == 1 + 5  # header + k next tokens
        assert re.fullmatch(r"'.*'", rows.nth(1).locator("td").nth(1).inner_text().strip())
        assert not clipped_parts(patching), clipped_parts(patching)
        page.mouse.move(0, 0)  # no hover label or mode bar in the picture
        screenshot(page, patching, ARTIFACTS / "patching_explorer.png")

        # --- Steering generator: both continuations and their scores are there after Run All.
        steering = page.locator(".wb-steering-generator")
        cards = steering.locator(".widget-html").filter(has_text="toxicity (")
        _wait(lambda: cards.count() == 2, "the two continuations", page)
        unsteered, steered = cards.nth(0), cards.nth(1)
        assert unsteered.inner_text().startswith("unsteered")
        match = re.match(r"steered: sentiment \(probe\), layer 15, strength (-\d+)\b", steered.inner_text())
        assert match, steered.inner_text()
        assert steering.locator(".widget-slider").count() == 2  # layer, strength
        for card in (unsteered, steered):
            assert re.search(r"toxicity \(profanity-check\): \d\.\d{3}", card.inner_text()), card.inner_text()
            assert card.inner_text().count("I watched the movie last night and") == 1
        plain_text, steered_text = unsteered.inner_text(), steered.inner_text().split("\n", 1)[1]
        assert plain_text.split("\n", 1)[1] != steered_text  # the steering changed the sample
        screenshot(page, steering, ARTIFACTS / "steering_generator.png")
        # Typing the opposite strength generates again; the unsteered sample (same seed) is kept.
        strength = -int(match.group(1))
        set_slider_readout(page, steering.locator(".widget-slider").nth(1), str(strength))
        _wait(lambda: f"strength +{strength}" in steered.inner_text(), "the steered text for the new strength", page)
        assert unsteered.inner_text() == plain_text
        assert steered.inner_text().split("\n", 1)[1] != steered_text

        # --- Eval dashboard: two runs side by side; the category filter redraws figure and table.
        dashboard = page.locator(".wb-eval-dashboard")
        plots = dashboard.locator(".js-plotly-plot")
        _wait(lambda: plots.count() == 2 and plots.nth(1).locator(".point").count() >= 8, "the dashboard figures",
              page)
        legend = " ".join(plots.nth(0).locator(".legendtext").all_text_contents())
        assert "unsteered" in legend and re.search(r"sentiment -\d+ at layer 15", legend), legend
        overview = _ticks(plots.nth(0), "x")
        assert "occupation_pronoun: male_share" in overview and "true_false_facts: acc" in overview, overview
        assert _ticks(plots.nth(1), "x") == ["all", "because", "said_that", "was_a"]
        selects = dashboard.locator("select")
        assert selects.count() == 3  # suite, metric, category
        table = dashboard.locator(".wb-drilldown table")
        assert table.locator("tr").count() > 1
        paired = dashboard.locator(".wb-paired table")  # the two runs, example by example
        _wait(lambda: paired.locator("tr").count() > 1, "the paired comparison table", page)
        assert "p (BH)" in paired.text_content()
        selects.nth(2).select_option("said_that")
        _wait(lambda: _ticks(plots.nth(1), "x") == ["all", "said_that"], "the category figure to redraw", page)
        categories = [r.locator("td").nth(1).inner_text() for r in table.locator("tr").all()[1:]]
        assert categories and set(categories) == {"said_that"}, categories
        assert plots.nth(1).locator(".point").count() == 4  # two runs x (all, said_that)
        assert "most stereotyped" not in dashboard.inner_text() and "wrong" not in dashboard.inner_text()
        assert "strongest preference" in dashboard.inner_text()  # occupation_pronoun has no correct answer
        assert not clipped_parts(dashboard), clipped_parts(dashboard)
        page.mouse.move(0, 0)
        screenshot(page, dashboard, ARTIFACTS / "eval_dashboard.png")
        # Another suite: its metric and categories replace the first suite's.
        selects.nth(0).select_option("true_false_facts")
        _wait(lambda: "true_false_facts: acc" in plot_title(plots.nth(1)), "the dashboard to switch suite", page)
        assert _ticks(plots.nth(1), "x") == ["all", "arithmetic", "geography", "history", "nature", "science"]
        assert "most confidently wrong" in dashboard.inner_text()  # true/false facts do have a correct answer

        assert not output_failures(page), f"errors in outputs after interaction: {output_failures(page)}"
        page.screenshot(path=str(ARTIFACTS / "widgets_notebook.png"), full_page=True)
        page.close()
    assert not console_errors, "JavaScript errors:\n" + "\n".join(console_errors)
    publish_screenshots(SHOTS)
