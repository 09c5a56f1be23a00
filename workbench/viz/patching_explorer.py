"""Patching explorer: run an activation-patching sweep from a widget, click a cell to see its prediction.

The heatmap is :func:`~workbench.viz.patching.patch_figure` of the :func:`~workbench.patch_sweep`
result the widget computed. Clicking a cell runs one more forward pass with only that cell
patched (:func:`~workbench.patching.patched_logits`, with the sweep's own in-place hook), so the
side panel shows what the model predicts then: its top next tokens, their probabilities, and the
metric, which equals the heatmap cell's raw value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as w
import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.models.sites import SITES, get_site
from workbench.patching.metrics import evaluate_metric, logit_diff
from workbench.patching.sweep import paired_tokens, patch_sweep, patched_logits
from workbench.viz._common import escape, guarded, refresh, set_status, token_label
from workbench.viz.patching import patch_figure

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama
    from workbench.patching import PatchResult


def patched_prediction(model: HookedLlama, result: PatchResult, clean, corrupt, metric, layer: int,
                       column: int, k: int = 5) -> tuple[pd.DataFrame, float]:
    """Top-``k`` next tokens when only one cell of a sweep is patched, and the metric then.

    Args:
        model: the model the sweep ran on.
        result: the sweep's :class:`~workbench.patching.PatchResult` (site, mode, cell indices).
        clean, corrupt: the prompts the sweep ran on.
        metric: the sweep's metric.
        layer: the cell's layer (a value of ``result.layers``).
        column: the cell's position (``pos`` sites) or head (``head_out``); for
            ``head_out_by_pos`` the position, patching every head there at once (what the
            heatmap's per-position total shows).
        k: next tokens listed.

    Returns:
        ``(frame, value)``: one row per token of the first prompt's next-token distribution at
        the last position (``rank``, ``token``, ``prob``, ``unpatched_prob``), and the metric.

    >>> top, value = patched_prediction(model, res, clean, corrupt, metric, layer=3, column=5)  # doctest: +SKIP
    """
    site = get_site(result.site)
    # head_out_by_pos: every head at the position at once (the heatmap shows their total).
    cells = [(column, h) for h in range(model.cfg.n_heads)] if site.axes == ("pos", "head") else [(column,)]
    logits = patched_logits(model, clean, corrupt, result.site, layer, cells, mode=result.mode)
    clean_tokens, corrupt_tokens = paired_tokens(model, clean, corrupt)
    with torch.no_grad():
        plain = model(corrupt_tokens if result.mode == "denoise" else clean_tokens)
    value = evaluate_metric(metric, logits)
    probs = logits[0, -1].float().softmax(-1)
    before = plain[0, -1].float().softmax(-1)
    top = probs.topk(k)
    frame = pd.DataFrame({
        "rank": range(1, k + 1),
        "token": [model.to_string(torch.tensor([i])) for i in top.indices.tolist()],
        "prob": top.values.tolist(),
        "unpatched_prob": before[top.indices].tolist(),
    })
    return frame, value


class PatchingExplorer(w.VBox):
    """Clean/corrupt prompts, a logit-difference metric and a site; a sweep heatmap to click.

    The metric is ``logit[answer] - logit[wrong]`` at the last position (``wb.logit_diff``).
    ``Run`` runs :func:`~workbench.patch_sweep` with its progress bar in the widget; clicking a
    heatmap cell shows the model's prediction with only that cell patched.

    Args:
        model: the hooked model.
        clean, corrupt: the prompt pair (same number of tokens).
        answer, wrong: single tokens; note the leading space (``" Mary"``).
        site: a patching site (``wb.patching.SITES``).
        layers: restrict the sweep to these layers (default: all).
        k: next tokens shown for a clicked cell.
        max_positions: a prompt longer than this is swept over a window of this many positions
            (by default the last ones, where the answer is read; ``from pos`` pages through the
            rest), so a 2,048-token prompt stays responsive. ``head_out`` covers all positions.
        run: run the sweep at once (otherwise on ``Run``).
        result: a sweep already computed for these prompts, answer and wrong tokens (shown
            without running it again; ``Run`` recomputes).

    >>> explorer = wb.viz.PatchingExplorer(model, "When Mary and John went to the store, John gave a drink to",
    ...                                "When Mary and John went to the store, Mary gave a drink to",
    ...                                answer=" Mary", wrong=" John")               # doctest: +SKIP
    >>> explorer.site.value = "attn_out"; explorer.run_button.click()             # doctest: +SKIP
    """

    def __init__(self, model: HookedLlama, clean: str = "", corrupt: str = "", answer: str = "", wrong: str = "",
                 site: str = "resid_pre", layers=None, k: int = 5, max_positions: int = 96,
                 run: bool = True, result: PatchResult | None = None):
        self.model = model
        self.layers = None if layers is None else list(layers)
        self.k = int(k)
        self.max_positions = int(max_positions)
        wide = w.Layout(width="98%")
        self.clean = w.Text(value=clean, description="clean", layout=wide)
        self.corrupt = w.Text(value=corrupt, description="corrupt", layout=wide)
        self.answer = w.Text(value=answer, description="answer")
        self.wrong = w.Text(value=wrong, description="wrong")
        self.site = w.Dropdown(options=list(SITES), value=site, description="site")
        self.run_button = w.Button(description="Run sweep", button_style="primary", icon="play")
        # First position of the swept window; shown only for prompts longer than max_positions.
        self.window = w.BoundedIntText(value=0, min=0, max=0, description="from pos",
                                       layout=w.Layout(width="160px", display="none"))
        self._window_for: str | None = None  # the prompt the window was last placed for
        self.progress = w.Output()  # tqdm.auto draws its bar here (an ipywidgets bar in a notebook)
        self.status = w.HTML()
        self.heatmap = go.FigureWidget()
        # The heatmap keeps plotly's own width (a FigureWidget does not shrink to its box, so a
        # narrower box cut off its right side: the colour bar and the title); the side panel takes
        # what is left, and goes below the heatmap when too little is.
        self.detail = w.HTML(layout=w.Layout(flex="1 1 260px", min_width="260px", padding="2em 0 0 1em"))
        self.result: PatchResult | None = None
        self.selected: dict | None = None  # the last clicked cell: layer, column, value, top
        self._run_inputs = None
        self.run_button.on_click(lambda _: guarded(self.status, self.run))
        body = w.HBox([self.heatmap, self.detail], layout=w.Layout(flex_flow="row wrap", align_items="flex-start"))
        super().__init__([self.clean, self.corrupt, w.HBox([self.answer, self.wrong, self.site, self.window, self.run_button]),
                          self.progress, self.status, body])
        self.add_class("wb-patching-explorer")
        if result is not None:
            self._adopt(result)
        elif run and clean and corrupt and answer and wrong:
            guarded(self.status, self.run)

    def _adopt(self, result: PatchResult) -> None:
        # A result from other prompts or another metric would make clicked cells disagree with the heatmap.
        metric = logit_diff(self.model, self.answer.value, self.wrong.value)
        if result.metric_name != metric.__name__:
            raise ValueError(f"result: its metric is {result.metric_name}, but answer/wrong give {metric.__name__}")
        for name, prompt, tokens in (("clean", self.clean.value, result.clean_tokens),
                                     ("corrupt", self.corrupt.value, result.corrupt_tokens)):
            if self.model.to_str_tokens(prompt) != list(tokens):
                raise ValueError(f"result: it was computed for another {name} prompt ({''.join(tokens)!r})")
        self.site.value = result.site
        self._show(result, (self.clean.value, self.corrupt.value, metric))

    def run(self) -> None:
        """Run the sweep with the current controls and redraw the heatmap."""
        clean, corrupt = self.clean.value, self.corrupt.value
        if not clean.strip() or not corrupt.strip():
            raise ValueError("enter both a clean and a corrupted prompt")
        metric = logit_diff(self.model, self.answer.value, self.wrong.value)
        positions, n_tokens = self._positions(clean)
        set_status(self.status, f"patching {self.site.value}…")
        self.progress.clear_output()
        with self.progress:
            result = patch_sweep(self.model, clean, corrupt, metric, site=self.site.value, layers=self.layers,
                                 positions=positions, progress=True)
        note = "" if positions is None else (f"; positions {positions[0]}–{positions[-1]} of {n_tokens} "
                                             "(set 'from pos' and run again for others)")
        self._show(result, (clean, corrupt, metric), note)

    def _positions(self, clean: str) -> tuple[list[int] | None, int]:
        """The window of positions to sweep (``None``: all) and the prompt's token count."""
        n = int(self.model.to_tokens(clean).shape[1])
        if n <= self.max_positions or "pos" not in get_site(self.site.value).axes:
            self.window.layout.display = "none"
            return None, n
        self.window.layout.display = None
        self.window.max = n - 1
        if self._window_for != clean:  # a new prompt: the window that ends where the answer is read
            self.window.value = n - self.max_positions
            self._window_for = clean
        start = self.window.value
        return list(range(start, min(start + self.max_positions, n))), n

    def _show(self, result: PatchResult, inputs: tuple, note: str = "") -> None:
        self.result = result
        self._run_inputs = inputs
        # Two title lines: on one, the metric's name and values run past plotly's default width.
        title = (f"{result.method} patching ({result.mode}) of {escape(result.site)}<br><sup>"
                 f"{escape(result.metric_name)}: clean {result.clean_value:.3f}, corrupted {result.corrupt_value:.3f}"
                 "</sup>")
        refresh(self.heatmap, patch_figure(result, title=title))
        self.heatmap.data[0].on_click(self._clicked)
        self.detail.value = "<i>click a cell to see the prediction with only that cell patched</i>"
        set_status(self.status, f"{result.metric_name}: clean {result.clean_value:.3f}, "
                                f"corrupted {result.corrupt_value:.3f}; {result.values.numel()} cells{note}")

    def _clicked(self, trace, points, state) -> None:
        if points is None or not points.xs:
            return
        x, y = list(trace.x), list(trace.y)
        guarded(self.status, lambda: self.select(y.index(points.ys[0]), x.index(points.xs[0])))

    def select(self, row: int, column: int) -> pd.DataFrame:
        """Show the prediction with the cell at heatmap ``row`` (layer) and ``column`` patched."""
        if self.result is None:
            raise ValueError("run the sweep first")
        res = self.result
        clean, corrupt, metric = self._run_inputs
        layer = res.layers[row]
        index = res.heads[column] if res.axes == ("head",) else res.positions[column]
        top, value = patched_prediction(self.model, res, clean, corrupt, metric, layer, index, k=self.k)
        if res.axes == ("head",):
            where = f"layer {layer}, head {index} (all positions)"
        else:
            heads = ", all heads" if res.axes == ("pos", "head") else ""
            where = (f"layer {layer}, position {index} "
                     f"('{token_label(res.clean_tokens[index])}' / '{token_label(res.corrupt_tokens[index])}'{heads})")
        patched_from = "clean" if res.mode == "denoise" else "corrupted"
        rows = "".join(f"<tr><td>{r.rank}</td><td><code>'{token_label(r.token)}'</code></td>"
                       f"<td style='text-align:right'>{r.prob:.3f}</td>"
                       f"<td style='text-align:right;color:#777'>{r.unpatched_prob:.3f}</td></tr>"
                       for r in top.itertuples())
        self.detail.value = (
            f"<b>patched: {escape(res.site)}</b> at {where}, from the {patched_from} run<br>"
            f"{escape(res.metric_name)} = <b>{value:.3f}</b> (clean {res.clean_value:.3f}, "
            f"corrupted {res.corrupt_value:.3f})<br>"
            "<table><tr><th>#</th><th>next token</th><th>p patched</th><th>p before</th></tr>"
            f"{rows}</table>"
        )
        self.selected = {"layer": layer, "column": index, "value": value, "top": top}
        return top
