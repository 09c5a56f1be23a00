"""Two-way widgets: ipywidgets controls composing plotly ``FigureWidget``s, running in the kernel.

A control change runs new model work in the kernel and patches the figures in place; nothing is
fetched from a CDN (the plotly and widget JavaScript comes from the installed lab extensions and
``anywidget``). Each widget is an ``ipywidgets.VBox``: display it as the last expression of a
cell. Its controls and figures are attributes, so a test (or a script) can drive it from Python:
``viewer.layer.value = 3`` redraws exactly as dragging the slider would.

Errors from model work (an empty prompt, a target that does not tokenize) are shown in the
widget's ``status`` line instead of disappearing into the browser's log console.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ipywidgets as w
import numpy as np
import plotly.graph_objects as go

from workbench.viz._common import escape, guarded, n_pages, refresh, set_status, token_label
from workbench.viz.attention import attention_head_grid, attention_heatmap, attention_patterns
from workbench.viz.logit_lens import lens_from_residuals, logit_lens_figure, residual_stack, target_probability_figure
from workbench.viz.model_explorer import activation_figure, info_html, search_catalogue

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama

# Prompts up to this many tokens get every layer's attention in one forward pass; longer ones
# compute a layer when it is shown (all layers of 2,048 tokens would be gigabytes).
_PREFETCH_TOKENS = 256


def _tokens(model: HookedLlama, prompt: str, chat: bool):
    """A widget's prompt as token ids: as one user message through the chat template if ``chat``."""
    return model.chat_tokens(prompt) if chat else model.to_tokens(prompt)


class AttentionViewer(w.VBox):
    """Attention patterns per layer and head: an editable prompt, a heatmap, the layer's head grid.

    Args:
        model: the hooked model.
        prompt: the initial prompt (editable in the widget; press Enter to rerun).
        layer, head: the initial selection.
        page_size: positions shown at once; longer prompts get a ``window`` slider that pages
            through them (the head grid pools the whole prompt into bins).
        chat: the prompt is a user message, shown to the model through its chat template with an
            open assistant turn (``model.chat_tokens``), system prompt and special tokens included.

    Clicking a panel of the head grid selects that head.

    >>> viewer = wb.viz.AttentionViewer(model, "When Mary and John went to the store, John gave a drink to")  # doctest: +SKIP
    >>> viewer.layer.value = 5                                                  # doctest: +SKIP
    """

    def __init__(self, model: HookedLlama, prompt: str = "The quick brown fox jumps over the lazy dog.",
                 layer: int = 0, head: int = 0, page_size: int = 64, chat: bool = False):
        self.model = model
        self.chat = bool(chat)
        self.page_size = int(page_size)
        cfg = model.cfg
        self.prompt = w.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=w.Layout(width="98%"))
        self.layer = w.IntSlider(value=layer, min=0, max=cfg.n_layers - 1, description="layer", continuous_update=False)
        self.head = w.IntSlider(value=head, min=0, max=cfg.n_heads - 1, description="head", continuous_update=False)
        self.window = w.IntSlider(value=0, min=0, max=0, description="window", continuous_update=False,
                                  layout=w.Layout(display="none"))
        self.status = w.HTML()
        self.heatmap = go.FigureWidget()
        self.grid = go.FigureWidget()
        self.tokens: list[str] = []
        self._patterns: dict[int, np.ndarray] = {}
        self.prompt.observe(lambda _: guarded(self.status, self._load), names="value")
        self.layer.observe(lambda _: guarded(self.status, self._draw), names="value")
        self.head.observe(lambda _: guarded(self.status, self._draw_head), names="value")
        self.window.observe(lambda _: guarded(self.status, self._draw_head), names="value")
        super().__init__([self.prompt, w.HBox([self.layer, self.head, self.window]), self.status,
                          self.heatmap, self.grid])
        self.add_class("wb-attention-viewer")
        guarded(self.status, self._load)

    def _layer_patterns(self, layer: int) -> np.ndarray:
        if layer not in self._patterns:
            if len(self.tokens) > _PREFETCH_TOKENS:
                self._patterns.clear()  # one layer of 2,048 tokens is 150 MB: keep only the one shown
            patterns, _ = attention_patterns(self.model, self._token_ids, layers=[layer])
            self._patterns.update(patterns)
        return self._patterns[layer]

    def _load(self) -> None:
        if not self.prompt.value.strip():
            raise ValueError("the prompt is empty")
        set_status(self.status, "running the model…")
        self._token_ids = _tokens(self.model, self.prompt.value, self.chat)
        n = self._token_ids.shape[1]
        layers = None if n <= _PREFETCH_TOKENS else [self.layer.value]
        self._patterns, self.tokens = attention_patterns(self.model, self._token_ids, layers=layers)
        pages = n_pages(n, self.page_size)
        self.window.max = pages - 1
        self.window.value = min(self.window.value, pages - 1)
        self.window.layout.display = "flex" if pages > 1 else "none"
        self._draw()

    def _draw(self) -> None:
        self._draw_head()
        layer = self.layer.value
        fig = attention_head_grid(self._layer_patterns(layer), self.tokens, title=f"layer {layer}: all heads",
                                  selected=self.head.value)
        refresh(self.grid, fig)
        for h, trace in enumerate(self.grid.data):
            trace.on_click(lambda *_, h=h: setattr(self.head, "value", h))

    def _draw_head(self) -> None:
        layer, head, n = self.layer.value, self.head.value, len(self.tokens)
        start = self.window.value * self.page_size
        window = (start, min(n, start + self.page_size))
        where = f", positions {window[0]}-{window[1] - 1} of {n}" if n > self.page_size else ""
        fig = attention_heatmap(self._layer_patterns(layer)[head], self.tokens,
                                title=f"layer {layer}, head {head}{where}", window=window)
        refresh(self.heatmap, fig)
        if self.grid.data:  # mark the selected head in the grid's panel titles
            with self.grid.batch_update():
                for h, annotation in enumerate(self.grid.layout.annotations):  # subplot titles, head order
                    annotation.text = f"<b>head {h} ◀</b>" if h == head else f"head {h}"
        set_status(self.status, f"{n} tokens")


class LogitLensViewer(w.VBox):
    """The logit lens: top token per layer and position, and a target token's probability by layer.

    Clicking a cell of the heatmap shows the target curve at that cell's position.

    Args:
        model: the hooked model.
        prompt: the initial prompt (editable; press Enter to rerun).
        target: the token whose probability is followed (text: its first token).
        k: top tokens listed in the hover text.
        page_size: positions decoded and shown at once; longer prompts get a ``window`` slider.
        chat: the prompt is a user message, rendered with the model's chat template (as in
            :class:`AttentionViewer`).

    >>> viewer = wb.viz.LogitLensViewer(model, "The capital of France is", target=" Paris")  # doctest: +SKIP
    """

    def __init__(self, model: HookedLlama, prompt: str = "The capital of France is", target: str = " Paris",
                 k: int = 5, page_size: int = 24, chat: bool = False):
        self.model = model
        self.chat = bool(chat)
        self.k = int(k)
        self.page_size = int(page_size)
        self.prompt = w.Text(value=prompt, description="prompt", continuous_update=False,
                             layout=w.Layout(width="98%"))
        self.target = w.Text(value=target, description="target", continuous_update=False)
        self.position = w.IntSlider(value=0, min=0, max=0, description="position", continuous_update=False)
        self.window = w.IntSlider(value=0, min=0, max=0, description="window", continuous_update=False,
                                  layout=w.Layout(display="none"))
        self.status = w.HTML()
        self.lens_figure = go.FigureWidget()
        self.target_figure = go.FigureWidget()
        self.lens = None
        self._moving = False
        self.prompt.observe(lambda _: guarded(self.status, self._load), names="value")
        self.target.observe(lambda _: guarded(self.status, self._decode), names="value")
        self.window.observe(lambda _: guarded(self.status, self._decode), names="value")
        self.position.observe(lambda _: guarded(self.status, self._draw_target), names="value")
        super().__init__([self.prompt, w.HBox([self.target, self.position, self.window]), self.status,
                          self.lens_figure, self.target_figure])
        self.add_class("wb-logit-lens")
        guarded(self.status, self._load)

    def _load(self) -> None:
        if not self.prompt.value.strip():
            raise ValueError("the prompt is empty")
        set_status(self.status, "running the model…")
        self._resid, self.tokens = residual_stack(self.model, _tokens(self.model, self.prompt.value, self.chat))
        n = len(self.tokens)
        pages = n_pages(n, self.page_size)
        with self.window.hold_trait_notifications(), self.position.hold_trait_notifications():
            self.window.max = pages - 1
            self.window.value = pages - 1  # the end of the prompt: where the next token is predicted
            self.window.layout.display = "flex" if pages > 1 else "none"
        self._decode()

    def _decode(self) -> None:
        n = len(self.tokens)
        start = self.window.value * self.page_size
        positions = list(range(start, min(n, start + self.page_size)))
        target = self.target.value if self.target.value.strip() else None
        self.lens = lens_from_residuals(self.model, self._resid, self.tokens, positions, target=target, k=self.k)
        where = f", positions {positions[0]}-{positions[-1]} of {n}" if n > self.page_size else ""
        refresh(self.lens_figure, logit_lens_figure(self.lens, title=f"logit lens: top token by layer{where}"))
        self.lens_figure.data[0].on_click(self._clicked)
        self._moving = True  # the position slider's new range must not redraw with the old lens
        try:
            self.position.max = max(self.position.max, positions[-1])
            self.position.min = positions[0]
            self.position.max = positions[-1]
            self.position.value = positions[-1]
        finally:
            self._moving = False
        self._draw_target()

    def _clicked(self, trace, points, state) -> None:
        # A click on a cell follows that column's position in the target curve.
        if points is not None and points.xs:
            self.position.value = self.lens.positions[int(points.xs[0])]

    def _draw_target(self) -> None:
        if self._moving:
            return
        refresh(self.target_figure, target_probability_figure(self.lens, position=self.position.value))
        note = ""
        if self.lens.target_token is not None:
            note = f"; target token: '{token_label(self.lens.target_token)}'"
        self.status.value = f"<span style='color:#555'>{len(self.tokens)} tokens{note}</span>"


class ModelExplorer(w.VBox):
    """Architecture summary and the hook catalogue, searchable; a hook's shape and sample activation.

    Type words (``attention pattern``) or a glob (``blocks.*.hook_resid_post``) in ``search``;
    selecting a hook runs ``sample`` through the model and shows that hook's activation.

    >>> explorer = wb.viz.ModelExplorer(model)                                     # doctest: +SKIP
    >>> explorer.search.value = "resid_post"; explorer.hooks.value = "blocks.3.hook_resid_post"  # doctest: +SKIP
    """

    def __init__(self, model: HookedLlama, sample: str = "The capital of France is Paris."):
        self.model = model
        self.catalogue = model.hook_catalogue()
        self.summary = w.HTML(info_html(model.info()))
        self.search = w.Text(value="", placeholder="search hooks: words or a glob", description="search")
        self.hooks = w.Select(options=[], rows=14, description="hooks", layout=w.Layout(width="98%"))
        self.count = w.HTML()
        self.sample = w.Text(value=sample, description="sample", continuous_update=False, layout=w.Layout(width="98%"))
        self.detail = w.HTML()
        self.status = w.HTML()
        self.figure = go.FigureWidget()
        self.search.observe(lambda _: guarded(self.status, self._filter), names="value")
        self.hooks.observe(lambda _: guarded(self.status, self._show), names="value")
        self.sample.observe(lambda _: guarded(self.status, self._show), names="value")
        left = w.VBox([self.search, self.count, self.hooks], layout=w.Layout(width="50%"))
        super().__init__([w.HBox([w.VBox([self.summary], layout=w.Layout(width="50%")), left]),
                          self.sample, self.detail, self.status, self.figure])
        self.add_class("wb-model-explorer")
        guarded(self.status, self._filter)

    def _filter(self) -> None:
        found = search_catalogue(self.catalogue, self.search.value)
        self.count.value = f"<i>{len(found)} of {len(self.catalogue)} hooks</i>"
        names = found["name"].tolist()
        keep = self.hooks.value if self.hooks.value in names else (names[0] if names else None)
        self.hooks.options = names
        self.hooks.value = keep

    def _show(self) -> None:
        name = self.hooks.value
        if name is None:
            self.detail.value = ""
            return
        if not self.sample.value.strip():
            raise ValueError("the sample prompt is empty")
        row = self.catalogue.set_index("name").loc[name]
        _, cache = self.model.run_with_cache(self.sample.value, names_filter=[name])
        act = cache[name][0].float().cpu().numpy()
        axes = row["shape"].strip("[]").split(", ")[1:]
        self.detail.value = (
            f"<b>{escape(name)}</b>: {escape(row['description'])}<br>shape <code>{escape(row['shape'])}</code>; "
            f"on the sample: <code>{escape(list(cache[name].shape))}</code>"
        )
        tokens = self.model.to_str_tokens(self.sample.value)
        refresh(self.figure, activation_figure(act, name, axes=axes, tokens=tokens))
        set_status(self.status)
