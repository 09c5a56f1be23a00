"""The logit lens: what each layer's residual stream would predict if the model stopped there.

The residual stream after each block is decoded exactly as the model decodes its last one:
through the final RMSNorm (``ln_final``) and the unembedding. At the last layer this *is* the
model's output, which the tests use as the oracle (nostalgebraist, "interpreting GPT: the logit
lens", 2020).

Only the top ``k`` tokens and the target's probability are kept per (layer, position): the full
``[layers, positions, d_vocab]`` tensor of a 2,048-token prompt would not fit in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.viz._common import token_label, token_labels

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama


@dataclass
class LogitLens:
    """Logit-lens result for one prompt.

    Attributes:
        tokens: the prompt's tokens (all positions).
        positions: the positions that were decoded.
        layers: ``-1`` for the embeddings (``blocks.0.hook_resid_pre``), then block indices whose
            ``hook_resid_post`` was decoded.
        top: tidy table, one row per (layer, position, rank): ``token_id``, ``token``, ``prob``.
        target: the target token's ``prob`` and ``rank`` (1 = top) per (layer, position); empty
            without a target.
        target_token: the target as a token string (``None`` without a target).
    """

    tokens: list[str]
    positions: list[int]
    layers: list[int]
    top: pd.DataFrame
    target: pd.DataFrame = field(default_factory=pd.DataFrame)
    target_token: str | None = None

    def layer_label(self, layer: int) -> str:
        """``"embed"`` for layer -1, else the block index as text."""
        return "embed" if layer < 0 else str(layer)


def residual_stack(model: HookedLlama, prompt: str | list[dict] | torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """The residual stream at every layer: ``[1 + n_layers, pos, d_model]`` and the tokens.

    Row 0 is ``blocks.0.hook_resid_pre`` (the embeddings); row ``i + 1`` is
    ``blocks.{i}.hook_resid_post``. ``prompt``: text (BOS prepended), a conversation (rendered
    with the chat template and an open assistant turn) or a ``[1, pos]`` token tensor.

    >>> resid, tokens = residual_stack(model, "The capital of France is")      # doctest: +SKIP
    """
    # Anything but a tensor goes through to_tokens: text, or a conversation (chat template).
    tokens = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError("prompt must be one text, one conversation or a [1, pos] token tensor, got shape "
                         f"{tuple(tokens.shape)}")
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return torch.stack([cache[n][0] for n in names]), model.to_str_tokens(tokens[0])


def decode_residual(model: HookedLlama, resid: torch.Tensor) -> torch.Tensor:
    """Residual stream ``[..., pos, d_model]`` -> logits through the final norm and unembedding.

    >>> logits = decode_residual(model, cache["blocks.12.hook_resid_post"])       # doctest: +SKIP
    """
    with torch.no_grad():
        shaped = resid if resid.ndim == 3 else resid.reshape(-1, *resid.shape[-2:])
        logits = model.bridge.unembed(model.bridge.ln_final(shaped))
    return logits.reshape(*resid.shape[:-1], logits.shape[-1])


def target_token_id(model: HookedLlama, target: str | int) -> tuple[int, str]:
    """A target given as text or id -> ``(token_id, token string)``.

    Text that tokenizes into several tokens uses its first token that is not blank (the one
    the model must predict next): SentencePiece tokenizers encode ``" Paris"`` with a leading
    bare ``"▁"`` token, which is not what a user asking about Paris means. An empty text or an
    id outside the vocabulary raises ``ValueError``.

    >>> target_token_id(model, " Paris")                                          # doctest: +SKIP
    (7042, ' Paris')
    """
    if isinstance(target, (int, np.integer)):
        d_vocab = model.cfg.d_vocab
        if not 0 <= int(target) < d_vocab:
            raise ValueError(f"target id {target} is outside the vocabulary (0-{d_vocab - 1})")
        token_id = int(target)
    else:
        ids = model.to_tokens(str(target), prepend_bos=False)[0].tolist()
        if not ids:
            raise ValueError(f"target {target!r} tokenizes to no token")
        strs = model.to_str_tokens(torch.tensor(ids))
        token_id = int(next((i for i, s in zip(ids, strs, strict=True) if s.strip()), ids[0]))
    return token_id, model.to_str_tokens(torch.tensor([token_id]))[0]


def lens_from_residuals(
    model: HookedLlama,
    resid: torch.Tensor,
    tokens: Sequence[str],
    positions: Sequence[int],
    target: str | int | None = None,
    k: int = 5,
) -> LogitLens:
    """Decode chosen positions of a :func:`residual_stack` (the widget pages through a long prompt).

    >>> resid, tokens = residual_stack(model, "The capital of France is")       # doctest: +SKIP
    >>> lens = lens_from_residuals(model, resid, tokens, positions=[5], target=" Paris")  # doctest: +SKIP
    """
    n = len(tokens)
    positions = [int(p) + n if int(p) < 0 else int(p) for p in positions]
    bad = [p for p in positions if not 0 <= p < n]
    if bad or not positions:
        raise ValueError(f"positions {list(positions)} must be non-empty and within the prompt's {n} tokens")
    target_id, target_str = target_token_id(model, target) if target is not None else (None, None)
    layers = list(range(-1, resid.shape[0] - 1))
    top_rows, target_rows = [], []
    for row, layer in enumerate(layers):
        logits = decode_residual(model, resid[row, positions][None])[0].float()  # [p, d_vocab]
        probs = torch.softmax(logits, dim=-1)
        values, ids = probs.topk(min(k, probs.shape[-1]), dim=-1)
        values, ids = values.tolist(), ids.tolist()
        if target_id is not None:  # whole-page tensor ops: a per-position loop was 10x slower
            p_target = probs[:, target_id]
            ranks = ((probs > p_target[:, None]).sum(-1) + 1).tolist()
            p_target = p_target.tolist()
        for j, pos in enumerate(positions):
            strs = model.to_str_tokens(torch.tensor(ids[j]))
            for rank, (tid, tok, p) in enumerate(zip(ids[j], strs, values[j], strict=True), start=1):
                top_rows.append((layer, pos, rank, tid, tok, p))
            if target_id is not None:
                target_rows.append((layer, pos, target_id, target_str, p_target[j], ranks[j]))
    top = pd.DataFrame(top_rows, columns=["layer", "position", "rank", "token_id", "token", "prob"])
    target_frame = pd.DataFrame(target_rows, columns=["layer", "position", "token_id", "token", "prob", "rank"])
    return LogitLens(list(tokens), positions, layers, top, target_frame, target_str)


def logit_lens(
    model: HookedLlama,
    prompt: str | list[dict] | torch.Tensor,
    target: str | int | None = None,
    k: int = 5,
    positions: Sequence[int] | None = None,
) -> LogitLens:
    """Top-``k`` next-token predictions of every layer, and the target token's probability.

    Args:
        model: the hooked model.
        prompt: text (BOS prepended), a conversation (a list of ``{"role", "content"}`` dicts,
            rendered with the chat template and an open assistant turn) or a ``[1, pos]`` token tensor.
        target: a token (text: its first token is used; or an id) whose probability to follow.
        k: top tokens kept per layer and position.
        positions: positions to decode (negative counts from the end); default: every position
            of prompts up to 64 tokens, the last 64 otherwise.

    >>> lens = wb.viz.logit_lens(model, "The capital of France is", target=" Paris")   # doctest: +SKIP
    >>> lens.target.query("position == 5")[["layer", "prob"]].tail(2)           # doctest: +SKIP
    """
    resid, tokens = residual_stack(model, prompt)
    if positions is None:
        positions = range(max(0, len(tokens) - 64), len(tokens))
    return lens_from_residuals(model, resid, tokens, positions, target=target, k=k)


def logit_lens_figure(lens: LogitLens, title: str = "logit lens: top token by layer") -> go.Figure:
    """Layers x positions heatmap: colour = top-1 probability, text = top-1 token, hover = top k.

    >>> fig = logit_lens_figure(wb.viz.logit_lens(model, "The capital of France is"))  # doctest: +SKIP
    """
    top = lens.top
    first = top[top["rank"] == 1].pivot(index="layer", columns="position", values="prob")
    first = first.reindex(index=lens.layers, columns=lens.positions)
    best = top[top["rank"] == 1].pivot(index="layer", columns="position", values="token")
    best = best.reindex(index=lens.layers, columns=lens.positions)
    ranked = top.sort_values("rank").assign(line=lambda d: [f"{token_label(t)} {p:.3f}" for t, p in zip(d.token, d.prob, strict=True)])
    lists = ranked.groupby(["layer", "position"])["line"].agg("<br>".join)
    hover = np.array([[lists.get((layer, pos), "") for pos in lens.positions] for layer in lens.layers], dtype=object)
    text = np.vectorize(token_label, otypes=[object])(best.to_numpy(dtype=object))
    inputs = token_labels(lens.tokens)
    x_labels = [f"{p}: {inputs[p]}" for p in lens.positions]
    y_labels = [lens.layer_label(layer) for layer in lens.layers]
    fig = go.Figure(
        go.Heatmap(
            z=first.to_numpy(dtype=float), x=list(range(len(x_labels))), y=list(range(len(y_labels))),
            text=text, texttemplate="%{text}", textfont={"size": 9}, zmin=0, zmax=1, colorscale="Viridis",
            customdata=hover, colorbar={"title": "p(top 1)"},
            hovertemplate="%{customdata}<extra></extra>",
        )
    )
    fig.update_xaxes(title="input position (predicting the next token)", tickmode="array",
                     tickvals=list(range(len(x_labels))), ticktext=x_labels, tickangle=-60)
    fig.update_yaxes(title="layer (residual after block)", tickmode="array",
                     tickvals=list(range(len(y_labels))), ticktext=y_labels)
    fig.update_layout(title=title, template="plotly_white", height=max(420, 18 * len(y_labels) + 160),
                      margin={"l": 70, "b": 120})
    return fig


def target_probability_figure(lens: LogitLens, position: int = -1) -> go.Figure:
    """Probability (and rank) of the target token at one position, across layers.

    >>> fig = target_probability_figure(wb.viz.logit_lens(model, "The capital of France is", target=" Paris"))  # doctest: +SKIP
    """
    if lens.target.empty:
        fig = go.Figure()
        fig.update_layout(title="no target token chosen", template="plotly_white", height=320)
        return fig
    pos = position + len(lens.tokens) if position < 0 else position
    if pos not in lens.positions:
        raise ValueError(f"position {position} was not decoded (decoded: {lens.positions[0]}..{lens.positions[-1]})")
    rows = lens.target[lens.target["position"] == pos].sort_values("layer")
    labels = [lens.layer_label(layer) for layer in rows["layer"]]
    fig = go.Figure(
        go.Scatter(
            x=list(range(len(labels))), y=rows["prob"], mode="lines+markers", name="p(target)",
            customdata=np.stack([np.array(labels, dtype=object), rows["rank"].to_numpy()], axis=-1),
            hovertemplate="layer %{customdata[0]}: p = %{y:.4f}, rank %{customdata[1]}<extra></extra>",
        )
    )
    target = token_label(lens.target_token)
    after = token_label(lens.tokens[pos])
    fig.update_xaxes(title="layer", tickmode="array", tickvals=list(range(len(labels))), ticktext=labels)
    fig.update_yaxes(title="probability", rangemode="tozero")
    fig.update_layout(title=f"p('{target}') after position {pos} ('{after}') by layer",
                      template="plotly_white", height=320)
    return fig
