"""00_quickstart in real JupyterLab, driven by headless Chromium.

Checks what only a browser shows: the widgets' JavaScript loads offline, the plotly SVG and the
widget controls are in the DOM, a control change reaches the kernel and comes back as a redrawn
figure, model text containing HTML renders as text, and neither the console nor any output shows
an error. Screenshots go to runs/test-artifacts/browser/ (gitignored); with
WORKBENCH_UPDATE_SCREENSHOTS=1 they also replace the README's docs/screenshots/.
"""

from __future__ import annotations

import re

import pytest
from lab import ARTIFACTS, REPO, notebook_run, output_failures, plot_title, publish_screenshots, screenshot, wait_for

pytestmark = pytest.mark.integration

TIMEOUT_SHOT = ARTIFACTS / "timeout.png"
WIDGETS = {"attention_viewer": ".wb-attention-viewer", "logit_lens": ".wb-logit-lens",
           "model_explorer": ".wb-model-explorer", "probe_explorer": ".wb-probe-explorer"}
XSS = '<script>window.__wb_xss=1</script> <img src=x onerror="window.__wb_xss=2"> done'


def test_quickstart_runs_in_jupyterlab(browser, tmp_path):
    notebook = REPO / "notebooks" / "00_quickstart.ipynb"
    with notebook_run(browser, tmp_path, notebook, TIMEOUT_SHOT) as (page, console_errors):

        attention = page.locator(".wb-attention-viewer")
        lens = page.locator(".wb-logit-lens")
        explorer = page.locator(".wb-model-explorer")
        probes = page.locator(".wb-probe-explorer")
        for widget, n_plots in ((attention, 2), (lens, 2), (explorer, 1), (probes, 2)):
            wait_for(lambda w=widget, n=n_plots: w.locator(".js-plotly-plot .main-svg").count() >= n, 60,
                     f"{n_plots} plotly SVGs in {widget}", page, on_timeout=TIMEOUT_SHOT)
        assert attention.locator(".widget-slider").count() >= 2  # layer, head
        assert attention.locator("input[type=text]").count() == 1  # the prompt
        assert lens.locator("input[type=text]").count() == 2  # prompt, target
        assert explorer.locator("select option").count() > 10  # the hook catalogue
        assert page.locator(".js-plotly-plot .main-svg").count() >= 6  # + the plain fig in cell 6
        assert plot_title(attention.locator(".js-plotly-plot").first).startswith("layer 5, head 0")
        heatmap_cells = attention.locator(".js-plotly-plot").first.locator(".hm image, .heatmaplayer image")
        assert heatmap_cells.count() >= 1
        for name, widget in WIDGETS.items():
            widget = page.locator(widget)
            screenshot(page, widget, ARTIFACTS / f"{name}.png")

        # A control change runs the model in the kernel and redraws: type a layer into the slider's readout.
        readout = attention.locator(".widget-slider").first.locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("7")
        page.keyboard.press("Enter")
        wait_for(lambda: plot_title(attention.locator(".js-plotly-plot").first).startswith("layer 7, head 0"), 60,
                 "the heatmap to redraw for layer 7", page, on_timeout=TIMEOUT_SHOT)
        wait_for(lambda: plot_title(attention.locator(".js-plotly-plot").nth(1)).startswith("layer 7"), 60,
                 "the head grid to redraw for layer 7", page, on_timeout=TIMEOUT_SHOT)

        # Text from the prompt renders as text: no element is created and nothing runs.
        prompt = attention.locator("input[type=text]")
        prompt.fill(XSS)
        prompt.press("Enter")
        ticks = attention.locator(".js-plotly-plot").first.locator(".xtick text")
        wait_for(lambda: "done" in " ".join(ticks.all_text_contents()), 60, "the heatmap to show the new prompt",
                 page, on_timeout=TIMEOUT_SHOT)
        shown = "".join(re.sub(r"^\d+: ", "", t) for t in ticks.all_text_contents())
        assert "<script>window.__wb_xss=1</script>" in re.sub(r"\s", "", shown), shown
        assert 'onerror="window.__wb_xss=2">' in shown.replace(" ", ""), shown
        assert page.evaluate("() => window.__wb_xss") is None
        assert attention.locator(".js-plotly-plot img, .js-plotly-plot script").count() == 0
        screenshot(page, attention, ARTIFACTS / "attention_viewer_escaped.png")

        # The logit lens answers its target box the same way.
        target = lens.locator("input[type=text]").nth(1)
        target.fill(" London")
        target.press("Enter")
        wait_for(lambda: "London" in plot_title(lens.locator(".js-plotly-plot").nth(1)), 60,
                 "the target curve to redraw for ' London'", page, on_timeout=TIMEOUT_SHOT)

        # The explorer's search narrows the catalogue and the first match's activation is drawn.
        search = explorer.locator("input[type=text]").first
        search.fill("attention pattern")
        search.press("Enter")
        wait_for(lambda: plot_title(explorer.locator(".js-plotly-plot").first).startswith("blocks.0.attn.hook_pattern"),
                 60, "the explorer to show blocks.0.attn.hook_pattern", page, on_timeout=TIMEOUT_SHOT)
        assert explorer.locator("select option").count() == 30  # one pattern hook per layer

        # The probe explorer's layer picker redraws the projection for that layer.
        probes.locator("select").nth(1).select_option("blocks.5.hook_resid_post")
        wait_for(lambda: "blocks.5.hook_resid_post" in plot_title(probes.locator(".js-plotly-plot").nth(1)), 60,
                 "the probe projection to redraw for layer 5", page, on_timeout=TIMEOUT_SHOT)

        assert not output_failures(page), f"errors in outputs after interaction: {output_failures(page)}"
        page.screenshot(path=str(ARTIFACTS / "notebook.png"), full_page=True)
        page.close()
    assert not console_errors, "JavaScript errors:\n" + "\n".join(console_errors)
    publish_screenshots(WIDGETS)
