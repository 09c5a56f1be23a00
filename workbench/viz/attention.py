"""Attention patterns: computing them, one head as a heatmap, all heads of a layer as a grid.

Long prompts stay cheap to draw: a figure never holds more than ``max_tokens`` positions per
axis. Longer windows are pooled into contiguous bins (queries averaged, keys summed, so each
pooled row is still a distribution over key bins) and labelled with the token range they cover.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from workbench.viz._common import bin_labels, bins, pool, token_labels

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama


def attention_patterns(
    model: HookedLlama, prompt: str | list[dict] | torch.Tensor, layers: Iterable[int] | None = None
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Attention patterns of ``prompt`` for the chosen layers, and its tokens.

    Args:
        model: the hooked model.
        prompt: text (BOS is prepended), a conversation (a list of ``{"role", "content"}`` dicts,
            rendered with the model's chat template and an open assistant turn) or a ``[1, pos]``
            token tensor.
        layers: block indices; ``None`` means every layer.

    Returns:
        ``({layer: pattern [n_heads, query, key] float32}, str_tokens)``; each query row sums to 1.

    >>> patterns, tokens = attention_patterns(model, "The cat sat", layers=[0])   # doctest: +SKIP
    >>> patterns[0].shape                                                          # doctest: +SKIP
    (9, 4, 4)
    >>> patterns, tokens = attention_patterns(model, [{"role": "user", "content": "Hi"}])  # doctest: +SKIP
    """
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [int(i) for i in layers]
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range: the model has {n_layers} layers (0-{n_layers - 1})")
    # Anything but a tensor goes through to_tokens: text, or a conversation (chat template).
    tokens = prompt if isinstance(prompt, torch.Tensor) else model.to_tokens(prompt)
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError("prompt must be one text, one conversation or a [1, pos] token tensor, got shape "
                         f"{tuple(tokens.shape)}")
    names = {f"blocks.{i}.attn.hook_pattern": i for i in layers}
    patterns: dict[int, np.ndarray] = {}

    def capturer(layer: int):
        # One closure per layer: hook.name may be an alias of the name asked for.
        def capture(act, hook):
            patterns[layer] = act[0].detach().float().cpu().numpy()
            if len(patterns) == len(names):
                raise _AllCaptured  # the blocks after the last requested layer are not needed

        return capture

    try:
        with torch.no_grad():
            model.run_with_hooks(tokens, fwd_hooks=[(n, capturer(i)) for n, i in names.items()], return_type=None)
    except _AllCaptured:
        pass
    return {i: patterns[i] for i in layers}, model.to_str_tokens(tokens[0])


class _AllCaptured(Exception):
    """Raised by the last pattern hook to fire, ending the forward pass early."""


def _window(n: int, window: tuple[int, int] | None) -> tuple[int, int]:
    start, stop = (0, n) if window is None else (int(window[0]), int(window[1]))
    if not 0 <= start < stop <= n:
        raise ValueError(f"window {window} must satisfy 0 <= start < stop <= {n} (the number of tokens)")
    return start, stop


def attention_heatmap(
    pattern: np.ndarray,
    tokens: Sequence[str],
    title: str = "attention",
    window: tuple[int, int] | None = None,
    max_tokens: int = 96,
) -> go.Figure:
    """One head's pattern as a query x key heatmap with token labels and hover values.

    Args:
        pattern: ``[query, key]`` attention probabilities.
        tokens: the prompt's tokens (one per position; escaped here).
        title: figure title (escaped by the caller if it holds data).
        window: ``(start, stop)``: show only positions ``start..stop-1`` on both axes.
        max_tokens: positions per axis above which the window is pooled into bins.

    >>> fig = attention_heatmap(patterns[0][3], tokens, title="layer 0, head 3")  # doctest: +SKIP
    """
    pattern = np.asarray(pattern, dtype=np.float32)
    if pattern.ndim != 2 or pattern.shape[0] != pattern.shape[1] or pattern.shape[0] != len(tokens):
        raise ValueError(f"pattern must be [query, key] with one row per token: got {pattern.shape} for {len(tokens)} tokens")
    start, stop = _window(len(tokens), window)
    labels = token_labels(tokens)[start:stop]
    edges = bins(stop - start, max_tokens)
    z = pool(pattern[start:stop, start:stop], edges, edges, col_reduce="sum")
    shown = bin_labels([f"{start + i}: {t}" for i, t in enumerate(labels)], edges)
    grid = np.array(shown, dtype=object)
    fig = go.Figure(
        go.Heatmap(
            z=z, x=list(range(len(shown))), y=list(range(len(shown))), zmin=0, zmax=1,
            colorscale="Blues", customdata=np.stack(np.broadcast_arrays(grid[:, None], grid[None, :]), axis=-1),
            hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{z:.3f}<extra></extra>",
            colorbar={"title": "attn"},
        )
    )
    ticks = {"tickmode": "array", "tickvals": list(range(len(shown))), "ticktext": shown}
    fig.update_xaxes(title="key", tickangle=-60, **ticks)
    fig.update_yaxes(title="query", autorange="reversed", **ticks)
    # Tall enough for one readable tick label per row, within one screen.
    height = int(np.clip(14 * len(shown) + 240, 420, 1000))
    fig.update_layout(title=title, template="plotly_white", height=height, margin={"l": 110, "b": 110})
    return fig


def attention_head_grid(
    patterns: np.ndarray,
    tokens: Sequence[str],
    title: str = "all heads",
    selected: int | None = None,
    max_tokens: int = 24,
    columns: int = 3,
) -> go.Figure:
    """Every head of one layer as a grid of small heatmaps sharing one colour scale.

    Args:
        patterns: ``[n_heads, query, key]``.
        tokens: the prompt's tokens.
        selected: a head whose panel title is marked (the head shown in the large heatmap).
        max_tokens: positions per panel axis above which the pattern is pooled into bins.
        columns: panels per row.

    >>> fig = attention_head_grid(patterns[0], tokens, title="layer 0")          # doctest: +SKIP
    """
    patterns = np.asarray(patterns, dtype=np.float32)
    if patterns.ndim != 3 or patterns.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"patterns must be [n_heads, query, key] with {len(tokens)} tokens, got {patterns.shape}")
    n_heads = patterns.shape[0]
    rows = -(-n_heads // columns)
    names = [f"<b>head {h} ◀</b>" if h == selected else f"head {h}" for h in range(n_heads)]
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=names, horizontal_spacing=0.04, vertical_spacing=0.08)
    edges = bins(len(tokens), max_tokens)
    shown = np.array(bin_labels(token_labels(tokens), edges), dtype=object)
    custom = np.stack(np.broadcast_arrays(shown[:, None], shown[None, :]), axis=-1)
    for h in range(n_heads):
        fig.add_trace(
            go.Heatmap(
                z=pool(patterns[h], edges, edges, col_reduce="sum"), coloraxis="coloraxis", customdata=custom,
                name=f"head {h}",
                hovertemplate=f"head {h}<br>query %{{customdata[0]}}<br>key %{{customdata[1]}}<br>"
                "attention %{z:.3f}<extra></extra>",
            ),
            row=h // columns + 1, col=h % columns + 1,
        )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, autorange="reversed")
    fig.update_layout(title=title, template="plotly_white", height=170 * rows + 80,
                      coloraxis={"colorscale": "Blues", "cmin": 0, "cmax": 1}, margin={"t": 80})
    return fig
