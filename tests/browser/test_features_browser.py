"""The feature explorer in real JupyterLab, over a toy SAE trained in the fixture notebook.

Runs ``features_tour.ipynb`` (thin: it only calls the library) in headless Chromium, then does
what a user would: types a latent id, searches latents by a token and by an example text and
picks one from the results. Each step must reach the kernel and come back as redrawn contexts,
histogram and logit tables. The markup line of the store (``<b>``, ``<script>``) must show as
text, never as elements. Screenshots go to runs/test-artifacts/browser/ (gitignored); with
WORKBENCH_UPDATE_SCREENSHOTS=1 they also replace the README's docs/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from lab import (
    ARTIFACTS,
    clipped_parts,
    notebook_run,
    output_failures,
    plot_title,
    publish_screenshots,
    screenshot,
    wait_for,
)

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
TIMEOUT_SHOT = ARTIFACTS / "features_timeout.png"


def _wait(predicate, what: str, page, timeout: float = 60):
    return wait_for(predicate, timeout, what, page, on_timeout=TIMEOUT_SHOT)


def _enter(page, box, value: str) -> None:
    box.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def test_feature_explorer_runs_in_jupyterlab(browser, tmp_path):
    notebook = HERE / "features_tour.ipynb"
    with notebook_run(browser, tmp_path, notebook, TIMEOUT_SHOT) as (page, console_errors):
        printed = page.locator(".jp-OutputArea-output").all_text_contents()
        opened = re.search(r"opens on latent (\d+); latent (\d+) has a top context in the markup line", " ".join(printed))
        assert opened, printed
        first, marked = int(opened.group(1)), int(opened.group(2))
        explorer = page.locator(".wb-feature-explorer")
        histogram = explorer.locator(".js-plotly-plot").first
        contexts = explorer.locator(".wb-feature-contexts")
        _wait(lambda: contexts.locator("tr").count() > 1 and histogram.locator(".point, .bars path").count() > 0,
              "the first latent's contexts and histogram", page)
        assert f"latent {first}: nonzero activations (density" in plot_title(histogram)
        summary = explorer.locator(".widget-html").first.inner_text()
        assert re.search(r"density \d+\.\d{3}% \(\d+ of 6,?\d{3} rows\), max \d+\.\d{3} at blocks\.15\.hook_resid_post",
                         summary), summary
        assert 2 <= contexts.locator("tr").count() <= 1 + 8  # header + at most top=8 contexts
        assert contexts.locator("span[style*='background']").count() > 0  # tokens shaded by activation
        logits = explorer.locator("b", has_text="promoted")
        assert logits.count() == 1 and explorer.locator("b", has_text="suppressed").count() == 1

        # Typing a latent id redraws everything for it; the markup shows as text.
        latent_box = explorer.locator("input[type=number]").first
        _enter(page, latent_box, str(marked))
        _wait(lambda: f"latent {marked}:" in plot_title(histogram), "the typed latent's histogram", page)
        _wait(lambda: re.search(r"</?(b|i|script)>", contexts.inner_text()), "the markup line among the typed latent's "
              "contexts", page)
        assert explorer.locator("script").count() == 0
        assert contexts.locator("b, i").count() == 0, "markup from the store was rendered as HTML"
        page.mouse.move(0, 0)
        assert not clipped_parts(explorer), clipped_parts(explorer)
        screenshot(page, explorer, ARTIFACTS / "feature_explorer.png")

        # Search by token: results fill the dropdown; choosing one switches the explorer.
        token_box, text_box = explorer.locator("input[type=text]").nth(0), explorer.locator("input[type=text]").nth(1)
        buttons = explorer.locator("button", has_text="find")
        status = explorer.locator(".widget-html").nth(1)
        found = explorer.locator("select")
        token_box.fill("the")
        buttons.nth(0).click()
        _wait(lambda: "found for token 'the'" in explorer.inner_text(), "the token search", page)
        assert re.search(r"\d+ latents found for token 'the'", explorer.inner_text()), status.inner_text()
        labels = [lab.replace("\xa0", " ") for lab in found.locator("option").all_inner_texts()]  # ipywidgets: nbsp
        matches = [m for lab in labels if (m := re.match(r"(\d+) \((contexts|logit) \d", lab))]
        assert len(matches) >= 2 and "logit" in {m.group(2) for m in matches}, labels
        chosen = int(matches[1].group(1))
        found.select_option(index=labels.index(matches[1].string))
        if chosen != marked:
            _wait(lambda: f"latent {chosen}:" in plot_title(histogram), "the chosen latent's histogram", page)
        assert latent_box.input_value() == str(chosen)

        # Search by an example text.
        text_box.fill("The velocity of light in a vacuum is constant.")
        buttons.nth(1).click()
        _wait(lambda: "latents found in the text" in explorer.inner_text(), "the text search", page)
        labels = [lab.replace("\xa0", " ") for lab in found.locator("option").all_inner_texts()]
        assert len(labels) >= 2 and all(re.match(r"\d+ \(\d", lab) for lab in labels if lab.strip()), labels

        assert not output_failures(page), f"errors in outputs after interaction: {output_failures(page)}"
        page.close()
    assert not console_errors, "JavaScript errors:\n" + "\n".join(console_errors)
    publish_screenshots(["feature_explorer"])
