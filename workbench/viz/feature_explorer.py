"""Feature explorer: what one SAE latent reads (its top contexts in a store) and writes (its logits).

What is computed, and how:

- **The index** (:func:`feature_index`): one streamed pass over the store's activations of
  ``sae.hook``, ``chunk_rows`` rows at a time (never the whole store in memory), each chunk
  encoded with ``sae.encode``. It keeps, for every latent, the ``top`` stored rows with the
  highest activation (a running top-k merged chunk by chunk: exact) and the number of rows where
  the latent is nonzero. A row is one stored position of one text.
- **Density** (:func:`feature_density`): nonzero rows / stored rows, i.e. the share of stored
  tokens where the latent fires (of stored rows only, for stores that keep some positions).
- **Top contexts** (:func:`top_contexts`): the index's rows for the latent, each with the
  ``window`` tokens either side from the store's token table and the latent's activation on each
  of them, encoded from the neighbouring stored rows of the same text. Tokens whose activations
  were not stored (a ``"last"`` store, the edges of a slice) have none (``NaN``): a store with
  one row per text shows that row's token only.
- **Histogram**: the index pass also counts every latent's nonzero activations in fixed
  log-spaced bins (:data:`HISTOGRAM_EDGES`, 20 per decade from 1e-4 to 1e4, values beyond them in
  the end bins): exact counts, and a latent's histogram costs no second pass over the store
  (:func:`index_histogram`). :func:`feature_values` streams one latent's values for a finer look.
- **Logit effects** (:func:`logit_effects`): ``W_U^T (w_norm * W_dec[f] / scale_out)``, the
  direct effect of one unit of the latent on the logits when the final RMSNorm's data-dependent
  ``1/rms`` factor is left out (so it ranks tokens, its scale is arbitrary); ``w_norm`` is the
  final RMSNorm's weight and ``W_U`` the unembedding, read as ``models.compare`` reads them.
- **Search**: :func:`features_for_token` (latents whose top contexts peak on that token, ranked
  by the share of their top contexts that do, and latents whose logit effect promotes it most)
  and :func:`features_in_text` (the text run through the model, its ``sae.hook`` activations
  encoded, latents ranked by their largest activation on it).

Every token and text goes through :func:`~workbench.viz._common.escape` before it is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from workbench.models.compare import unembedding
from workbench.viz._common import escape, guarded, refresh, set_status, token_label, token_pieces

if TYPE_CHECKING:
    from workbench.store import ActivationStore


@dataclass
class FeatureIndex:
    """Per-latent summary of one streamed pass over a store (see the module docstring).

    Attributes:
        hook: the store hook the SAE read.
        top_values: ``[top, d_sae]`` largest activations of each latent, descending.
        top_rows: ``[top, d_sae]`` the store rows they were found at.
        counts: ``[d_sae]`` rows where the latent is nonzero.
        n_rows: rows read.
        histogram: ``[d_sae, len(HISTOGRAM_EDGES) - 1]`` nonzero activations per bin.
    """

    hook: str
    top_values: np.ndarray
    top_rows: np.ndarray
    counts: np.ndarray
    n_rows: int
    histogram: np.ndarray | None = None

    @property
    def max_activation(self) -> np.ndarray:
        return self.top_values[0]


HISTOGRAM_EDGES = np.geomspace(1e-4, 1e4, 8 * 20 + 1)


def _chunk_rows(sae: Any, chunk_rows: int | None) -> int:
    # About 2**24 latent values (64 MiB float32) per chunk unless told otherwise.
    return int(chunk_rows) if chunk_rows else int(np.clip(2**24 // max(int(sae.d_sae), 1), 64, 65536))


def _chunks(sae: Any, store: ActivationStore, chunk_rows: int | None):
    """Yield ``(first_row, latents [n, d_sae])`` over the store's rows of ``sae.hook``."""
    array = store[sae.hook]
    size = _chunk_rows(sae, chunk_rows)
    weight = sae.W_enc
    with torch.no_grad():
        for start in range(0, len(array), size):
            x = torch.from_numpy(np.asarray(array[start : start + size])).to(weight.device)
            yield start, sae.encode(x).float().cpu()


def feature_index(sae: Any, store: ActivationStore, top: int = 20, chunk_rows: int | None = None) -> FeatureIndex:
    """Top rows and nonzero counts of every latent, in one streamed pass over ``store[sae.hook]``.

    >>> index = feature_index(sae, store, top=20)                       # doctest: +SKIP
    >>> index.top_rows[:, 7]          # the 20 rows where latent 7 is largest    # doctest: +SKIP
    """
    d_sae = int(sae.d_sae)
    values = torch.full((0, d_sae), -torch.inf)
    rows = torch.zeros((0, d_sae), dtype=torch.long)
    counts = torch.zeros(d_sae, dtype=torch.long)
    n_bins = len(HISTOGRAM_EDGES) - 1
    inner_edges = torch.from_numpy(HISTOGRAM_EDGES[1:-1]).float()
    histogram = torch.zeros(d_sae * n_bins, dtype=torch.long)
    n_rows = 0
    for start, z in _chunks(sae, store, chunk_rows):
        n_rows += len(z)
        counts += (z > 0).sum(0)
        rows_, columns = (z > 0).nonzero(as_tuple=True)
        bins = torch.bucketize(z[rows_, columns], inner_edges, right=True)  # 0 .. n_bins - 1, ends open
        histogram += torch.bincount(columns * n_bins + bins, minlength=d_sae * n_bins)
        chunk_values, chunk_rows_ = z.topk(min(top, len(z)), dim=0)  # [k, d_sae]
        values = torch.cat([values, chunk_values])
        rows = torch.cat([rows, chunk_rows_ + start])
        values, order = values.topk(min(top, len(values)), dim=0)
        rows = rows.gather(0, order)
    if n_rows == 0:
        raise ValueError(f"the store holds no rows of {sae.hook!r}")
    return FeatureIndex(sae.hook, values.numpy(), rows.numpy(), counts.numpy(), n_rows,
                        histogram.view(d_sae, n_bins).numpy())


def index_histogram(index: FeatureIndex, feature: int) -> tuple[np.ndarray, np.ndarray]:
    """``(counts, edges)`` of a latent's nonzero activations from the index, trimmed to the bins
    from its first to its last occupied one (empty when it never fires).

    >>> index = FeatureIndex("h", np.zeros((1, 1)), np.zeros((1, 1), int), np.array([3]), 9,
    ...                      np.array([[0, 2, 0, 1, 0]]))
    >>> index_histogram(index, 0)[0].tolist()
    [2, 0, 1]
    """
    if index.histogram is None:
        raise ValueError("this index has no histogram (build it with feature_index)")
    row = index.histogram[int(feature)]
    occupied = np.flatnonzero(row)
    if not len(occupied):
        return np.zeros(0, np.int64), np.zeros(1)
    lo, hi = occupied[0], occupied[-1] + 1
    return row[lo:hi], HISTOGRAM_EDGES[lo : hi + 1]


def feature_density(index: FeatureIndex, feature: int | None = None) -> np.ndarray | float:
    """Share of stored rows where a latent (or, without ``feature``, every latent) is nonzero.

    >>> index = FeatureIndex("h", np.zeros((1, 2)), np.zeros((1, 2), int), np.array([1, 4]), n_rows=4)
    >>> feature_density(index).tolist(), feature_density(index, 0)
    ([0.25, 1.0], 0.25)
    """
    density = index.counts / index.n_rows
    return density if feature is None else float(density[int(feature)])


def feature_values(sae: Any, store: ActivationStore, feature: int, chunk_rows: int | None = None) -> np.ndarray:
    """The latent's nonzero activations over the whole store, streamed (for its histogram).

    >>> np.histogram(feature_values(sae, store, 7), bins=40)              # doctest: +SKIP
    """
    parts = []
    for _, z in _chunks(sae, store, chunk_rows):
        column = z[:, int(feature)].numpy()
        parts.append(column[column > 0])
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def row_locations(store: ActivationStore, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(example, token position)`` of store rows (found through the meta's row ranges).

    >>> row_locations(store, [0, 12])                                     # doctest: +SKIP
    (array([0, 1]), array([0, 3]))
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = store.meta["row_start"].to_numpy()
    examples = np.searchsorted(starts, rows, side="right") - 1
    per_token = store.config["positions"]["per_token"]
    stored = store.token_table["stored_positions"]
    offsets = rows - starts[examples] if per_token else np.zeros_like(rows)
    positions = np.array([stored.iat[e][o] for e, o in zip(examples, offsets, strict=True)], dtype=np.int64)
    return examples, positions


def top_contexts(sae: Any, store: ActivationStore, index: FeatureIndex, feature: int,
                 window: int = 8, top: int | None = None) -> pd.DataFrame:
    """The latent's top rows with their surrounding tokens and its activation on each.

    Returns:
        One row per context (rows where the latent is 0 are left out): ``rank``, ``row``,
        ``example``, ``position``, ``activation``, ``token`` (the stored token), ``tokens`` (the
        window), ``acts`` (the latent on each window token, NaN where not stored) and ``centre``
        (the stored token's index in the window; -1 for a ``"mean"`` store).

    >>> top_contexts(sae, store, feature_index(sae, store), 7, window=8)   # doctest: +SKIP
    """
    feature = int(feature)
    values, rows = index.top_values[:, feature], index.top_rows[:, feature]
    keep = values > 0
    values, rows = values[keep][:top], rows[keep][:top]
    examples, positions = row_locations(store, rows)
    per_token = store.config["positions"]["per_token"]
    mean = store.config["positions"]["policy"] == "mean"
    array = store[sae.hook]
    records = []
    for rank, (row, example, position, value) in enumerate(zip(rows, examples, positions, values, strict=True)):
        tokens = store.tokens(int(example))
        if per_token:
            lo, hi = max(0, position - window), min(len(tokens), position + window + 1)
        elif mean:  # the row is no one token's: the text's first tokens, none highlighted
            lo, hi = 1, min(len(tokens), 2 * window + 2)
        else:
            lo, hi = position, position + 1
        acts = np.full(hi - lo, np.nan)
        meta = store.meta.iloc[int(example)]
        stored = store.positions_of(int(example))
        if per_token:
            # The neighbours' stored rows; positions are increasing within an example.
            wanted = [(p, int(meta.row_start) + i) for i, p in enumerate(stored) if lo <= p < hi]
            if wanted:
                with torch.no_grad():
                    x = torch.from_numpy(array[[r for _, r in wanted]]).to(sae.W_enc.device)
                    z = sae.encode(x)[:, feature].float().cpu().numpy()
                for (p, _), a in zip(wanted, z, strict=True):
                    acts[p - lo] = a
        elif not mean:
            acts[0] = value
        records.append({"rank": rank, "row": int(row), "example": int(example), "position": int(position),
                        "activation": float(value), "token": tokens[position], "tokens": tokens[lo:hi],
                        "acts": acts, "centre": -1 if mean else int(position - lo)})
    columns = ["rank", "row", "example", "position", "activation", "token", "tokens", "acts", "centre"]
    return pd.DataFrame(records, columns=columns)


def _decoder(sae: Any) -> torch.Tensor:
    """Decoder rows in the hook's units: ``W_dec / scale_out``, ``[d_sae, d_model]``."""
    return sae.W_dec.detach().float().cpu() / float(getattr(sae, "scale_out", 1.0))


def _pieces(model: Any, ids) -> list[str]:
    return token_pieces(model.tokenizer, ids)


def logit_effects(model: Any, sae: Any, feature: int, k: int = 10) -> pd.DataFrame:
    """The ``k`` tokens a latent promotes most and the ``k`` it suppresses most (see module docs).

    >>> logit_effects(model, sae, 7, k=5)                                # doctest: +SKIP
       kind  rank token  token_id  effect
    """
    w_norm, w_u = unembedding(model)
    effect = (w_norm * _decoder(sae)[int(feature)]) @ w_u  # [d_vocab]
    k = min(k, len(effect))
    frames = []
    for kind, largest in (("promoted", True), ("suppressed", False)):
        values, ids = effect.topk(k, largest=largest)
        frames.append(pd.DataFrame({"kind": kind, "rank": range(k), "token": _pieces(model, ids),
                                    "token_id": ids.numpy(), "effect": values.numpy()}))
    return pd.concat(frames, ignore_index=True)


def _normal(token: str) -> str:
    # SentencePiece's and GPT-2's space markers, then case: " The", "▁the" and "the" all match.
    return token.replace("▁", " ").replace("Ġ", " ").strip().lower()


def features_for_token(model: Any, sae: Any, store: ActivationStore, index: FeatureIndex, token: str,
                       k: int = 10) -> pd.DataFrame:
    """Latents tied to a token: by their top contexts, and by their logit effect.

    ``match == "contexts"``: latents whose top contexts' stored (max-activating) token is
    ``token`` (compared without case and space markers), ``score`` the share of its top contexts
    that are. ``match == "logit"``: the ``k`` latents with the largest logit effect on
    ``token``'s id (``token`` and ``" " + token``, where either is one known token of the
    vocabulary; none: no ``"logit"`` rows).

    >>> features_for_token(model, sae, store, index, "Paris")             # doctest: +SKIP
    """
    wanted = _normal(token)
    active = index.top_values > 0  # [top, d_sae]
    examples, positions = row_locations(store, index.top_rows[active])
    tables = store.token_table["str_tokens"]
    hits = np.array([_normal(str(tables.iat[e][p])) == wanted for e, p in zip(examples, positions, strict=True)],
                    dtype=bool)
    matched = np.zeros(index.top_values.shape)
    matched[active] = hits
    share = matched.sum(0) / np.maximum(active.sum(0), 1)
    order = [f for f in np.argsort(-share, kind="stable")[:k] if share[f] > 0]
    rows = [{"feature": int(f), "match": "contexts", "score": float(share[f])} for f in order]
    unknown = getattr(model.tokenizer, "unk_token_id", None)
    ids = sorted({ids[0] for text in (token, " " + token)
                  if len(ids := model.tokenizer.encode(text, add_special_tokens=False)) == 1 and ids[0] != unknown})
    if ids:
        w_norm, w_u = unembedding(model)
        effect = ((_decoder(sae) * w_norm) @ w_u[:, ids]).max(1).values  # [d_sae]
        values, best = effect.topk(min(k, len(effect)))
        rows += [{"feature": int(f), "match": "logit", "score": float(v)} for f, v in zip(best, values, strict=True)]
    return pd.DataFrame(rows, columns=["feature", "match", "score"])


def features_in_text(model: Any, sae: Any, text: str, k: int = 10) -> pd.DataFrame:
    """The ``k`` latents most active on a text: ``feature``, ``activation`` (its max over the
    text's tokens), ``position`` and ``token`` where it is reached; latents zero on the whole
    text are left out.

    >>> features_in_text(model, sae, "The Eiffel Tower is in Paris")      # doctest: +SKIP
    """
    tokens = model.to_tokens(text)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[sae.hook])
        z = sae.encode(cache[sae.hook][0].to(sae.W_enc.device)).float().cpu()  # [pos, d_sae]
    best, where = z.max(0)
    values, features = best.topk(min(k, len(best)))
    pieces = model.to_str_tokens(tokens[0])
    rows = [{"feature": int(f), "activation": float(v), "position": int(where[f]), "token": pieces[int(where[f])]}
            for f, v in zip(features, values, strict=True) if v > 0]
    return pd.DataFrame(rows, columns=["feature", "activation", "position", "token"])


# --- views ------------------------------------------------------------------------------------


def context_html(tokens: list[str], acts: np.ndarray, centre: int, high: float) -> str:
    """One context as escaped token spans, the background's opacity ``act / high`` (none for
    tokens whose activation was not stored); the stored token is underlined.

    >>> context_html(["<b>"], np.array([2.0]), 0, high=4.0)
    "<span title='2.000' style='background:rgba(255,102,0,0.50);border-bottom:2px solid #333;white-space:pre'>&lt;b&gt;</span>"
    """
    spans = []
    for i, (token, act) in enumerate(zip(tokens, acts, strict=True)):
        alpha = 0.0 if not np.isfinite(act) or high <= 0 else float(np.clip(act / high, 0, 1))
        border = "border-bottom:2px solid #333;" if i == centre else ""
        tip = "not stored" if not np.isfinite(act) else f"{act:.3f}"
        spans.append(f"<span title='{tip}' style='background:rgba(255,102,0,{alpha:.2f});{border}"
                     f"white-space:pre'>{token_label(token)}</span>")
    return "".join(spans)


_NOTES = {"all": "", "slice": "", "mean": "<p><i>this store holds each text's mean over its tokens: "
          "the texts are shown, no token highlighted</i></p>"}


def contexts_html(contexts: pd.DataFrame, policy: str = "all") -> str:
    """The top contexts as an HTML table (rank, activation, highlighted window); ``policy`` is
    the store's positions policy, which says what a row is."""
    if contexts.empty:
        return "<i>this latent is zero on every stored row</i>"
    high = float(contexts["activation"].max())
    note = _NOTES.get(policy, "<p><i>this store holds one row per text: only that row's token is shown</i></p>")
    rows = "".join(f"<tr><td>{r.rank + 1}</td><td>{r.activation:.3f}</td><td style='text-align:left'>"
                   f"{context_html(list(r.tokens), r.acts, r.centre, high)}</td></tr>" for r in contexts.itertuples())
    return (f"{note}<table class='wb-feature-contexts'><tr><th>#</th><th>act</th><th>context</th></tr>"
            f"{rows}</table>")


def logits_html(effects: pd.DataFrame) -> str:
    """Promoted and suppressed tokens side by side."""
    cells = {kind: "".join(f"<tr><td>{token_label(r.token)}</td><td>{r.effect:+.3f}</td></tr>"
                           for r in part.itertuples()) for kind, part in effects.groupby("kind")}
    return "".join(f"<div style='display:inline-block;margin-right:2em;vertical-align:top'><b>{kind}</b>"
                   f"<table>{cells.get(kind, '')}</table></div>" for kind in ("promoted", "suppressed"))


def feature_histogram_figure(values: np.ndarray, density: float, feature: int, bins: int = 40) -> go.Figure:
    """Histogram of a latent's nonzero activations, its density in the title.

    >>> feature_histogram_figure(np.array([0.5, 1.0, 2.0]), 0.01, 7, bins=3).data[0].y.tolist()
    [1, 1, 1]
    """
    counts, edges = np.histogram(values, bins=bins) if len(values) else (np.zeros(0), np.zeros(1))
    return histogram_figure(counts, edges, density, feature)


def histogram_figure(counts: np.ndarray, edges: np.ndarray, density: float, feature: int, *,
                     log_x: bool = False) -> go.Figure:
    """Bars of ``counts`` between ``edges``; with ``log_x``, on a log10 axis labelled in activations
    (the index's log-spaced bins are then of equal width).

    >>> histogram_figure(np.array([2, 1]), np.array([0.1, 1.0, 10.0]), 0.5, 3, log_x=True).data[0].x.tolist()
    [-0.5, 0.5]
    """
    x_edges = np.log10(edges) if log_x and len(counts) else edges
    fig = go.Figure(go.Bar(x=(x_edges[:-1] + x_edges[1:]) / 2, y=counts, width=np.diff(x_edges),
                           customdata=np.stack([edges[:-1], edges[1:]], 1) if len(counts) else None,
                           marker={"color": "#ff6600"},
                           hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y}<extra></extra>"))
    xaxis = {"title": "activation"}
    if log_x and len(counts):
        decades = np.arange(np.floor(x_edges[0]), np.ceil(x_edges[-1]) + 1)
        ticks = [v for d in decades for m in (1, 2, 5) if edges[0] <= (v := m * 10.0**d) <= edges[-1]]
        ticks = ticks if len(ticks) >= 2 else [edges[0], edges[-1]]  # a narrow range: its ends
        xaxis = {"title": "activation (log scale)", "range": [x_edges[0], x_edges[-1]],
                 "tickvals": np.log10(ticks), "ticktext": [f"{v:.3g}" for v in ticks]}
    fig.update_layout(title=f"latent {int(feature)}: nonzero activations (density {density:.3%})",
                      xaxis=xaxis, yaxis_title="rows", template="plotly_white", height=280, bargap=0.02)
    return fig


class FeatureExplorer(w.VBox):
    """One SAE latent at a time: top contexts, histogram and density, logit effects; search.

    Args:
        model: the :class:`~workbench.HookedLlama` the SAE belongs to.
        sae: a :class:`~workbench.features.SparseAutoencoder` (``encode``, ``W_dec``, ``hook``, ``d_sae``).
        store: an ``ActivationStore`` holding ``sae.hook`` (``positions="all"`` for full contexts).
        feature: the latent shown first (default: the one with the largest activation in the store).
        top: contexts per latent. window: tokens shown either side of each.

    The index over the store is built once, in the constructor (see the module docstring).

    >>> explorer = wb.viz.FeatureExplorer(model, sae, store)                    # doctest: +SKIP
    >>> explorer.feature.value = 7                                             # doctest: +SKIP
    """

    def __init__(self, model: Any, sae: Any, store: ActivationStore, *, feature: int | None = None,
                 top: int = 20, window: int = 8, chunk_rows: int | None = None):
        if sae.hook not in store:
            raise KeyError(f"the store has no activations of the SAE's hook {sae.hook!r} (hooks: {store.hooks[:5]} ...)")
        self.model, self.sae, self.store = model, sae, store
        self.top, self.window, self.chunk_rows = int(top), int(window), chunk_rows
        self.index = feature_index(sae, store, top=self.top, chunk_rows=chunk_rows)
        first = int(np.argmax(self.index.max_activation)) if feature is None else int(feature)
        self.feature = w.BoundedIntText(value=first, min=0, max=int(sae.d_sae) - 1, description="latent")
        self.status = w.HTML()
        self.summary = w.HTML()
        self.contexts = w.HTML()
        self.logits = w.HTML()
        self.histogram = go.FigureWidget()
        self.token_query = w.Text(placeholder="a token", description="by token")
        self.text_query = w.Text(placeholder="an example text", description="by text")
        self.token_button, self.text_button = w.Button(description="find"), w.Button(description="find")
        self.found = w.Dropdown(options=[], description="found")
        self.token_button.on_click(lambda _: guarded(self.status, self.search_token))
        self.text_button.on_click(lambda _: guarded(self.status, self.search_text))
        self.found.observe(lambda change: guarded(self.status, lambda: self._choose(change["new"])), names="value")
        self.feature.observe(lambda _: guarded(self.status, self._draw), names="value")
        search = w.VBox([w.HBox([self.token_query, self.token_button]),
                         w.HBox([self.text_query, self.text_button]), self.found])
        super().__init__([w.HBox([self.feature, self.summary]), self.status, self.contexts, self.histogram,
                          self.logits, search])
        self.add_class("wb-feature-explorer")
        guarded(self.status, self._draw)

    def _choose(self, feature: int | None) -> None:
        if feature is not None:
            self.feature.value = int(feature)

    def _show_found(self, options: list[tuple[str, int]], what: str) -> None:
        # Labels go to the browser as option text (not HTML): no escaping needed, none done twice.
        self.found.options = options
        self.found.value = None
        set_status(self.status, f"{len(options)} latents found {what}" if options else f"no latent found {what}")

    def search_token(self) -> None:
        """Fill ``found`` with :func:`features_for_token` on ``token_query``."""
        token = self.token_query.value
        table = features_for_token(self.model, self.sae, self.store, self.index, token, k=10)
        self._show_found([(f"{r.feature} ({r.match} {r.score:.3g})", int(r.feature)) for r in table.itertuples()],
                         f"for token {token!r}")

    def search_text(self) -> None:
        """Fill ``found`` with :func:`features_in_text` on ``text_query``."""
        table = features_in_text(self.model, self.sae, self.text_query.value, k=10)
        self._show_found([(f"{r.feature} ({r.activation:.3g} on {r.token!r})", int(r.feature))
                          for r in table.itertuples()], "in the text")

    def _draw(self) -> None:
        feature = int(self.feature.value)
        density = feature_density(self.index, feature)
        contexts = top_contexts(self.sae, self.store, self.index, feature, window=self.window, top=self.top)
        self.contexts.value = contexts_html(contexts, self.store.config["positions"]["policy"])
        refresh(self.histogram, histogram_figure(*index_histogram(self.index, feature), density, feature, log_x=True))
        self.logits.value = logits_html(logit_effects(self.model, self.sae, feature, k=10))
        self.summary.value = (f"density {density:.3%} ({int(self.index.counts[feature])} of {self.index.n_rows} "
                              f"rows), max {float(self.index.max_activation[feature]):.3f} at "
                              f"{escape(self.sae.hook)}")
        set_status(self.status)
