"""00_quickstart in real JupyterLab, driven by headless Chromium.

Checks what only a browser shows: the widgets' JavaScript loads offline, the plotly SVG and the
widget controls are in the DOM, a control change reaches the kernel and comes back as a redrawn
figure, model text containing HTML renders as text, and neither the console nor any output shows
an error. Screenshots go to runs/test-artifacts/browser/ (gitignored); with
WORKBENCH_UPDATE_SCREENSHOTS=1 they also replace the README's docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from lab import jupyterlab  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "runs" / "test-artifacts" / "browser"
SCREENSHOTS = REPO / "docs" / "screenshots"
XSS = '<script>window.__wb_xss=1</script> <img src=x onerror="window.__wb_xss=2"> done'
# Text that means a cell or a widget failed, as it appears inside outputs (not in the console).
FAILURE_TEXT = ("Traceback (most recent call last)", "Error displaying widget", "Failed to load model class",
                "Model not found", "Error: ")


def _wait(predicate, timeout: float, what: str, page=None, step: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            if page is not None:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "timeout.png"), full_page=True)
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        if page is not None:
            page.wait_for_timeout(step * 1000)
        else:
            time.sleep(step)


def _prompts(page) -> list[str]:
    return page.locator(".jp-CodeCell .jp-InputArea-prompt").all_text_contents()


def _done(page) -> bool:
    # Every code cell shows "[n]:" (not "[ ]:" or "[*]:") once Run All has finished.
    prompts = _prompts(page)
    return bool(prompts) and all(re.fullmatch(r"\[\d+\]:", p.strip()) for p in prompts)


def _title(locator) -> str:
    return locator.locator(".gtitle").first.text_content() or ""


def _screenshot(page, widget, name: str) -> None:
    # The notebook panel scrolls, not the page: put the widget at its top so that JupyterLab's
    # menu and toolbar do not cover it (the viewport is tall enough for a whole widget).
    widget.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    widget.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian package 'chromium'; .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def test_quickstart_runs_in_jupyterlab(browser, tmp_path):
    notebook = REPO / "notebooks" / "00_quickstart.ipynb"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    console_errors: list[str] = []
    with jupyterlab(tmp_path, [notebook]) as lab:
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.on("console", lambda m: console_errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
        page.goto(f"{lab.url}/lab/tree/{notebook.name}?token={lab.token}")
        page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=60_000)
        # The toolbar says "idle" before the session exists; Run All sent earlier can be lost.
        _wait(lab.kernel_ready, 60, "the notebook's kernel (idle, with a connection)", page)
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        _wait(lambda: _done(page), 240, "Run All to finish", page, step=1)

        outputs = page.locator(".jp-OutputArea-output").all_text_contents()
        failures = [o for o in outputs if any(f in o for f in FAILURE_TEXT)]
        assert not failures, f"errors in outputs: {failures}"

        attention = page.locator(".wb-attention-viewer")
        lens = page.locator(".wb-logit-lens")
        explorer = page.locator(".wb-model-explorer")
        for widget, n_plots in ((attention, 2), (lens, 2), (explorer, 1)):
            _wait(lambda: widget.locator(".js-plotly-plot .main-svg").count() >= n_plots, 60,
                  f"{n_plots} plotly SVGs in {widget}", page)
        assert attention.locator(".widget-slider").count() >= 2  # layer, head
        assert attention.locator("input[type=text]").count() == 1  # the prompt
        assert lens.locator("input[type=text]").count() == 2  # prompt, target
        assert explorer.locator("select option").count() > 10  # the hook catalogue
        assert page.locator(".js-plotly-plot .main-svg").count() >= 6  # + the plain fig in cell 6
        assert _title(attention.locator(".js-plotly-plot").first).startswith("layer 5, head 0")
        heatmap_cells = attention.locator(".js-plotly-plot").first.locator(".hm image, .heatmaplayer image")
        assert heatmap_cells.count() >= 1
        for name, widget in (("attention_viewer", attention), ("logit_lens", lens), ("model_explorer", explorer)):
            _screenshot(page, widget, name)

        # A control change runs the model in the kernel and redraws: type a layer into the slider's readout.
        readout = attention.locator(".widget-slider").first.locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("7")
        page.keyboard.press("Enter")
        _wait(lambda: _title(attention.locator(".js-plotly-plot").first).startswith("layer 7, head 0"), 60,
              "the heatmap to redraw for layer 7", page)
        _wait(lambda: _title(attention.locator(".js-plotly-plot").nth(1)).startswith("layer 7"), 60,
              "the head grid to redraw for layer 7", page)

        # Text from the prompt renders as text: no element is created and nothing runs.
        prompt = attention.locator("input[type=text]")
        prompt.fill(XSS)
        prompt.press("Enter")
        ticks = attention.locator(".js-plotly-plot").first.locator(".xtick text")
        _wait(lambda: "done" in " ".join(ticks.all_text_contents()), 60, "the heatmap to show the new prompt", page)
        shown = "".join(re.sub(r"^\d+: ", "", t) for t in ticks.all_text_contents())
        assert "<script>window.__wb_xss=1</script>" in re.sub(r"\s", "", shown), shown
        assert 'onerror="window.__wb_xss=2">' in shown.replace(" ", ""), shown
        assert page.evaluate("() => window.__wb_xss") is None
        assert attention.locator(".js-plotly-plot img, .js-plotly-plot script").count() == 0
        _screenshot(page, attention, "attention_viewer_escaped")

        # The logit lens answers its target box the same way.
        target = lens.locator("input[type=text]").nth(1)
        target.fill(" London")
        target.press("Enter")
        _wait(lambda: "London" in _title(lens.locator(".js-plotly-plot").nth(1)), 60,
              "the target curve to redraw for ' London'", page)

        outputs = page.locator(".jp-OutputArea-output").all_text_contents()
        failures = [o for o in outputs if any(f in o for f in FAILURE_TEXT)]
        assert not failures, f"errors in outputs after interaction: {failures}"
        page.screenshot(path=str(ARTIFACTS / "notebook.png"), full_page=True)
        page.close()
    assert not console_errors, "JavaScript errors:\n" + "\n".join(console_errors)
    if os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in ("attention_viewer", "logit_lens", "model_explorer"):
            shutil.copy(ARTIFACTS / f"{name}.png", SCREENSHOTS / f"{name}.png")
