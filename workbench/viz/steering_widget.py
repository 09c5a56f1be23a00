"""Generation with steering: unsteered and steered continuations side by side, with toxicity scores.

Both continuations are sampled with the same seed, so the only difference between them is the
vector ``model.steer(direction, layer, alpha)`` adds to the residual stream at every step. Each
continuation is scored by a toxicity scorer (``wb.get_scorer``; default ``profanity-check``),
named in the widget because its scale is its own (not Perspective API's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import ipywidgets as w

from workbench.evals.scorers import get_scorer
from workbench.viz._common import escape, guarded, set_status

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama


def _directions(direction: Any) -> dict[str, Any]:
    if isinstance(direction, Mapping):
        if not direction:
            raise ValueError("directions: the dict is empty; pass at least one name -> Direction")
        return {str(k): v for k, v in direction.items()}
    name = f"{direction.concept} ({direction.method})" if hasattr(direction, "concept") else "direction"
    return {name: direction}


def continuation_html(prompt: str, continuation: str, score: float, title: str, scorer: str) -> str:
    """One continuation as an escaped HTML card: the prompt in grey, the continuation, its score.

    >>> "&lt;b&gt;" in continuation_html("a", " <b>", 0.1, "steered", "profanity-check")
    True
    """
    colour = "#b00020" if score >= 0.5 else "#2a7d2a"
    return (
        f"<div style='border:1px solid #ddd;padding:.5em;border-radius:4px'><b>{escape(title)}</b>"
        f"<div style='white-space:pre-wrap;font-family:monospace;margin:.4em 0'><span style='color:#888'>"
        f"{escape(prompt)}</span>{escape(continuation)}</div>"
        f"toxicity ({escape(scorer)}): <b style='color:{colour}'>{score:.3f}</b></div>"
    )


class SteeringGenerator(w.VBox):
    """Prompt, direction, layer and strength; unsteered vs steered continuations with toxicity scores.

    Args:
        model: the hooked model.
        directions: a ``wb.Direction`` (or a vector), or a dict name -> Direction.
        prompt: the initial prompt.
        layer: the steering layer (default: the first direction's own layer, else the middle).
        alpha: the strength (length of the added vector; negative pushes the other way).
        max_new_tokens: tokens generated per continuation.
        seed: sampling seed shared by both continuations.
        do_sample, top_p, temperature: sampling parameters (``do_sample=False`` is greedy).
        scorer: a toxicity scorer or its name (``wb.get_scorer``); default ``profanity-check``.
        alpha_max: the strength slider's range is ``[-alpha_max, alpha_max]``.
        chat: the prompt is sent as a one-message conversation (``[{"role": "user", "content":
            prompt}]``) to ``model.generate``, so the model sees it through its chat template with
            an open assistant turn; the cards show the prompt as rendered.

    A change of any control generates again (the unsteered text is reused while only the layer,
    direction or strength change).

    >>> gen = wb.viz.SteeringGenerator(model, {"gender": sweep.direction(12)}, "The nurse said that", alpha=6)  # doctest: +SKIP
    >>> gen.alpha.value = -6                                                                           # doctest: +SKIP
    >>> chat = wb.viz.SteeringGenerator(model, rd.direction, "How do I bake bread?", chat=True)          # doctest: +SKIP
    """

    def __init__(self, model: HookedLlama, directions: Any, prompt: str = "The nurse said that",
                 layer: int | None = None, alpha: float = 4.0, max_new_tokens: int = 20, seed: int = 0,
                 do_sample: bool = True, top_p: float | None = 0.9, temperature: float = 1.0,
                 scorer: Any = None, alpha_max: float = 20.0, chat: bool = False):
        self.model = model
        self.chat = bool(chat)
        self.directions = _directions(directions)
        self.scorer = get_scorer(scorer)
        self.sampling = {"max_new_tokens": int(max_new_tokens), "seed": int(seed), "do_sample": bool(do_sample),
                         "top_p": top_p if do_sample else None, "temperature": float(temperature)}
        first = next(iter(self.directions.values()))
        if layer is None:
            layer = getattr(first, "layer", None)
            layer = model.cfg.n_layers // 2 if layer is None else layer
        self.prompt = w.Text(value=prompt, description="prompt", continuous_update=False, layout=w.Layout(width="98%"))
        self.direction = w.Dropdown(options=list(self.directions), description="direction")
        self.layer = w.IntSlider(value=int(layer), min=0, max=model.cfg.n_layers - 1, description="layer",
                                 continuous_update=False)
        self.alpha = w.FloatSlider(value=float(alpha), min=-float(alpha_max), max=float(alpha_max), step=0.5,
                                   description="strength", continuous_update=False)
        self.status = w.HTML()
        self.unsteered = w.HTML(layout=w.Layout(width="49%"))
        self.steered = w.HTML(layout=w.Layout(width="49%"))
        self.scorer_note = w.HTML(f"<small style='color:#777'>{escape(self.scorer.scale_note)}</small>")
        self.texts: dict[str, str] = {}
        self.scores: dict[str, float] = {}
        self._plain_key = None
        for control in (self.prompt, self.direction, self.layer, self.alpha):
            control.observe(lambda _: guarded(self.status, self.generate), names="value")
        super().__init__([self.prompt, w.HBox([self.direction, self.layer, self.alpha]), self.status,
                          w.HBox([self.unsteered, self.steered], layout=w.Layout(justify_content="space-between")),
                          self.scorer_note])
        self.add_class("wb-steering-generator")
        guarded(self.status, self.generate)

    def _message(self, prompt: str) -> str | list[dict]:
        """What ``model.generate`` gets: the text, or with ``chat`` a one-message conversation."""
        return [{"role": "user", "content": prompt}] if self.chat else prompt

    def _generate(self, prompt: str) -> str:
        return self.model.generate(self._message(prompt), include_prompt=False, **self.sampling)

    def generate(self) -> None:
        """Generate both continuations for the current controls and score them."""
        prompt = self.prompt.value
        if not prompt.strip():
            raise ValueError("the prompt is empty")
        set_status(self.status, "generating…")
        if self._plain_key != prompt:
            self.texts["unsteered"] = self._generate(prompt)
            self._plain_key = prompt
        direction = self.directions[self.direction.value]
        with self.model.steer(direction, layer=self.layer.value, alpha=self.alpha.value):
            self.texts["steered"] = self._generate(prompt)
        scores = self.scorer.score([self.texts["unsteered"], self.texts["steered"]])
        self.scores = {"unsteered": float(scores[0]), "steered": float(scores[1])}
        shown = self.model.format_chat(self._message(prompt)) if self.chat else prompt
        self.unsteered.value = continuation_html(shown, self.texts["unsteered"], self.scores["unsteered"],
                                                 "unsteered", self.scorer.name)
        title = f"steered: {self.direction.value}, layer {self.layer.value}, strength {self.alpha.value:+g}"
        self.steered.value = continuation_html(shown, self.texts["steered"], self.scores["steered"], title,
                                               self.scorer.name)
        how = f"sampled (top_p={self.sampling['top_p']}, seed {self.sampling['seed']})" if self.sampling["do_sample"] \
            else "greedy"
        template = f"; chat template: {self.model.chat_template.name}" if self.chat else ""
        set_status(self.status, f"{how}, {self.sampling['max_new_tokens']} new tokens at most; "
                                f"toxicity scorer: {self.scorer.name}{template}")
