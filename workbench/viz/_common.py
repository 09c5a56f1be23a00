"""Helpers every view shares: escaping text from data or the model, bounding figure size.

Plotly draws tick labels, cell text and hover text as SVG after parsing a small subset of HTML
(``<b>``, ``<br>``, ``<a href>`` ...) and decoding entities. A prompt that contains ``<script>``
or ``<img onerror=...>`` must show up as those characters, so every string that comes from a
prompt, a dataset row or the tokenizer goes through :func:`escape` before it reaches a figure or
an ``HTML`` widget.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

# Whitespace a token may carry that would otherwise be invisible (or break a tick label).
_VISIBLE = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


# Plotly decodes numeric entities and only a few named ones (``&lt;``, ``&gt;``, ``&amp;`` ...,
# not ``&quot;``): quotes become numeric entities so they show as quotes in figures too.
_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2 byte-level BPE's character for each byte, inverted: printable Latin-1 bytes stand for
    themselves, the other 68 are mapped in byte order to the characters from U+0100 on."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}


_BYTE_LEVEL = _byte_level_alphabet()


def token_pieces(tokenizer: Any, ids: Iterable[int]) -> list[str]:
    """Each token id decoded alone; a token that is part of a multi-byte character (it decodes to
    U+FFFD) is shown by its bytes instead, ``\\xe2\\x80`` (byte-level BPE) or its vocabulary
    entry such as ``<0xE2>`` (SentencePiece byte fallback).
    """
    ids = [int(i) for i in ids]
    pieces = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    for n, (token_id, piece) in enumerate(zip(ids, pieces, strict=True)):
        if "\ufffd" in piece:
            raw = tokenizer.convert_ids_to_tokens(token_id)
            if raw and all(ch in _BYTE_LEVEL for ch in raw):
                raw = bytes(_BYTE_LEVEL[ch] for ch in raw).decode("utf-8", errors="backslashreplace")
            pieces[n] = raw or piece
    return pieces


def escape(text: object) -> str:
    """Text from data or a model, made safe to show in plotly text and ``HTML`` widgets.

    >>> escape('<img src=x onerror="alert(1)">')
    '&lt;img src=x onerror=&#34;alert(1)&#34;&gt;'
    """
    return str(text).translate(_ENTITIES)


def token_label(token: str) -> str:
    """One token as a label: escaped, with newlines and tabs written out.

    >>> token_label("<s>"), token_label("\\n")
    ('&lt;s&gt;', '\\\\n')
    """
    for raw, shown in _VISIBLE.items():
        token = token.replace(raw, shown)
    return escape(token)


def token_labels(tokens: Iterable[str]) -> list[str]:
    """Escaped labels for a sequence of tokens (positions stay distinct even when tokens repeat).

    Figures put tokens on numeric axes with these labels as ``ticktext``: a categorical axis
    would merge the two positions of a repeated token such as ``" the"``.

    >>> token_labels(["a", "<b>"])
    ['a', '&lt;b&gt;']
    """
    return [token_label(t) for t in tokens]


def bins(n: int, max_bins: int) -> np.ndarray:
    """Edges splitting ``range(n)`` into at most ``max_bins`` contiguous, near-equal bins.

    >>> bins(10, 4).tolist()
    [0, 2, 5, 8, 10]
    """
    if n <= 0:
        raise ValueError(f"cannot bin an empty axis (n={n})")
    if max_bins < 1:
        raise ValueError(f"max_bins must be at least 1, got {max_bins}")
    k = min(n, max_bins)
    return np.linspace(0, n, k + 1).round().astype(int)


def pool(matrix: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray, col_reduce: str = "mean") -> np.ndarray:
    """Average ``matrix`` over row bins, and average or sum over column bins.

    Attention is pooled with ``col_reduce="sum"``: a query bin's pooled row is then still a
    probability distribution over the key bins.

    >>> pool(np.arange(16.0).reshape(4, 4), np.array([0, 2, 4]), np.array([0, 2, 4])).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if col_reduce not in ("mean", "sum"):
        raise ValueError(f"col_reduce must be 'mean' or 'sum', got {col_reduce!r}")
    rows = np.add.reduceat(matrix, row_edges[:-1], axis=0) / np.diff(row_edges)[:, None]
    cols = np.add.reduceat(rows, col_edges[:-1], axis=1)
    return cols / np.diff(col_edges)[None, :] if col_reduce == "mean" else cols


def bin_labels(labels: Sequence[str], edges: np.ndarray) -> list[str]:
    """A label per bin: the token itself for a one-token bin, else ``"i-j: first…last"``.

    >>> bin_labels(["a", "b", "c"], np.array([0, 1, 3]))
    ['a', '1-2: b…c']
    """
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        out.append(labels[lo] if hi - lo == 1 else f"{lo}-{hi - 1}: {labels[lo]}…{labels[hi - 1]}")
    return out


def refresh(widget: go.FigureWidget, figure: go.Figure) -> None:
    """Make a ``FigureWidget`` show ``figure``, in one message to the browser.

    Traces are updated in place when the new figure has the same trace types (the common case:
    a new layer or prompt), so the browser patches the plot instead of redrawing it from scratch.

    >>> widget = go.FigureWidget()                                               # doctest: +SKIP
    >>> refresh(widget, go.Figure(go.Bar(y=[1, 2]))); widget.data[0].y          # doctest: +SKIP
    (1, 2)
    """
    same = len(widget.data) == len(figure.data) and all(
        a.type == b.type for a, b in zip(widget.data, figure.data, strict=True)
    )
    if not same:
        widget.data = ()
        widget.add_traces(list(figure.data))
    with widget.batch_update():
        if same:
            for old, new in zip(widget.data, figure.data, strict=True):
                old.update(new.to_plotly_json(), overwrite=True)
        widget.layout = figure.layout


def n_pages(n: int, size: int) -> int:
    """Pages of ``size`` positions needed for ``n`` positions (at least one).

    >>> n_pages(2048, 64), n_pages(5, 64)
    (32, 1)
    """
    return max(1, -(-n // size))


def set_status(widget: Any, message: str = "", error: bool = False) -> None:
    """Show ``message`` (escaped) in a widget's ``HTML`` status line; red when ``error``.

    >>> class Line: value = ""
    >>> line = Line(); set_status(line, "bad <input>", error=True); line.value
    "<span style='color:#b00020'>bad &lt;input&gt;</span>"
    """
    colour = "#b00020" if error else "#555"
    widget.value = f"<span style='color:{colour}'>{escape(message)}</span>" if message else ""


def guarded(status: Any, action: Callable[[], None]) -> None:
    """Run a widget callback; show an exception in ``status`` instead of raising it.

    An exception raised in an ipywidgets observer only reaches the browser's log console, where
    nobody looks: the widget would just stop responding.

    >>> class Line: value = ""
    >>> line = Line(); guarded(line, lambda: 1 / 0); "ZeroDivisionError" in line.value
    True
    """
    try:
        action()
    except Exception as exc:  # noqa: BLE001 - any failure of model work is reported, not raised
        set_status(status, f"{type(exc).__name__}: {exc}", error=True)
