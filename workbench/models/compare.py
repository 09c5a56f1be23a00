"""``compare_models``: two checkpoints of one architecture, run on the same tokens, token by token.

Base against fine-tuned, full precision against quantized: both models read exactly the same
token ids, and the comparison reports

- per token, how far apart the next-token distributions are: ``KL(P_a || P_b)`` (and the reverse)
  in nats, and whether the two top-1 predictions agree;
- per layer, how far apart the residual streams are: the norm of ``r_b - r_a`` (absolute and
  relative to ``||r_a||``), the cosine between ``r_a`` and ``r_b``, and the norm of the mean
  difference;
- the *activation-difference lens*: the mean difference ``d = mean(r_b - r_a)`` at each layer read
  through ``b``'s unembedding, which names the tokens fine-tuning promoted and suppressed
  (Minder et al. 2025, "Narrow finetuning leaves clearly readable traces in activation
  differences").

Everything is computed in float32 whatever the models' dtypes, one batch at a time: memory is
the current batch plus the per-token table, whatever the number of texts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.common.errors import WorkbenchError
from workbench.models import chat

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama

__all__ = ["ModelComparison", "ModelMismatchError", "compare_models", "unembedding"]


class ModelMismatchError(WorkbenchError, ValueError):
    """Two models cannot be compared position by position; the message names what differs."""


@dataclass
class ModelComparison:
    """What :func:`compare_models` found; every table is tidy (one row per token / layer / token rank).

    Attributes:
        tokens: one row per real token of every text: ``text_index``, ``position``, ``token_id``,
            ``token`` (the token at this position), ``next_token`` (the token that follows in
            the text; missing (NA) at the last position), ``kl`` (``KL(P_a || P_b)`` of the
            next-token distributions, nats), ``kl_ba`` (``KL(P_b || P_a)``), ``top1_a``,
            ``top1_b`` (each model's most likely next token) and their ids ``top1_a_id``,
            ``top1_b_id``, ``agree`` (same top-1), ``p_a`` and ``p_b`` (each model's
            probability of ``a``'s top-1), ``logp_next_a``, ``logp_next_b`` (log-probability
            of the actual next token; NaN at the last position).
        layers: one row per residual stream: ``layer`` (``-1`` = the embeddings,
            ``blocks.0.hook_resid_pre``; ``i`` = ``blocks.{i}.hook_resid_post``), ``hook``,
            ``n_tokens``, ``diff_norm`` (mean ``||r_b - r_a||``), ``rel_diff_norm`` (mean
            ``||r_b - r_a|| / ||r_a||``), ``cosine`` (mean cosine of ``r_a`` and ``r_b``),
            ``norm_a``, ``norm_b`` (mean norms) and ``mean_diff_norm`` (``||mean(r_b - r_a)||``).
        lens: the activation-difference lens, one row per (layer, direction, rank): ``layer``,
            ``direction`` (``"promoted"``: highest logits, ``"suppressed"``: lowest), ``rank``
            (1 = most), ``token_id``, ``token``, ``logit``.
        summary: ``model_a``, ``model_b``, ``n_texts``, ``n_tokens``, ``mean_kl``,
            ``median_kl``, ``max_kl``, ``mean_kl_ba``, ``top1_agreement``, ``skip_bos``,
            ``n_residual_tokens``.
    """

    tokens: pd.DataFrame
    layers: pd.DataFrame
    lens: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)

    def top_disagreements(self, k: int = 10, window: int = 8, by: str = "kl") -> pd.DataFrame:
        """The ``k`` positions where the models' next-token distributions differ most.

        Args:
            k: how many positions.
            window: how many tokens before the position the ``context`` column shows.
            by: the column to rank by (``"kl"`` or ``"kl_ba"``).

        Returns:
            The ``tokens`` rows, highest first, with a ``context`` column: the text up to the
            position, the position's own token in brackets.

        >>> comparison.top_disagreements(3)[["context", "top1_a", "top1_b", "kl"]]  # doctest: +SKIP
        """
        if by not in ("kl", "kl_ba"):
            raise ValueError(f"by={by!r}: rank by 'kl' or 'kl_ba'")
        rows = np.argsort(-self.tokens[by].to_numpy(), kind="stable")[:k]  # by place, whatever the index
        top = self.tokens.iloc[rows]
        # Each text's rows are contiguous and in position order: the window is a slice before the row.
        tokens, positions = self.tokens["token"].to_numpy(), self.tokens["position"].to_numpy()
        contexts = []
        for row in rows:
            start = row - min(int(positions[row]), window)
            contexts.append("".join(tokens[start:row]) + f"[{tokens[row]}]")
        return top.assign(context=contexts).reset_index(drop=True)

    def plot(self, title: str | None = None):
        """Per-layer residual differences and the distribution of per-token KL (a plotly figure)."""
        from workbench.viz.compare import model_comparison_figure

        return model_comparison_figure(self, title=title)

    def _repr_html_(self) -> str:
        summary = pd.DataFrame([self.summary]).to_html(index=False)  # to_html escapes the text
        columns = ["text_index", "position", "context", "next_token", "top1_a", "top1_b", "kl"]
        worst = self.top_disagreements(5)[columns].to_html(index=False)
        return f"<div><b>ModelComparison</b>{summary}<p>largest KL(a || b):</p>{worst}</div>"

    def __repr__(self) -> str:
        s = self.summary
        return (f"ModelComparison({s.get('model_a')!r} vs {s.get('model_b')!r}: {s.get('n_texts')} texts, "
                f"{s.get('n_tokens')} tokens, mean KL {s.get('mean_kl', float('nan')):.4g} nats, "
                f"top-1 agreement {s.get('top1_agreement', float('nan')):.3f})")


def compare_models(
    a: HookedLlama,
    b: HookedLlama,
    texts: str | list[dict] | Sequence[str | list[dict]],
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
    top_k: int = 10,
    skip_bos: bool = True,
    progress: bool = True,
) -> ModelComparison:
    """Compare two models of the same architecture on the same tokens.

    The texts are tokenized once, the way ``a`` tokenizes plain text (``a.to_tokens``: BOS
    prepended; a conversation is rendered with ``a``'s chat template, with one BOS), and both
    models run on those ids, right-padded in batches (with causal attention no real token sees a
    pad; pads are never counted). Every position of a text predicts the next token, so every real
    token has a row in ``tokens``, the last one included.

    Args:
        a, b: the two models (``a`` is the reference: ``KL(P_a || P_b)``, ``r_b - r_a``).
        texts: a text, a conversation, or a list of them.
        batch_size: texts per forward pass.
        max_tokens: keep at most this many tokens of each text (BOS included); texts longer
            than either model's context window are cut to it, with a warning.
        top_k: tokens per direction in the activation-difference lens.
        skip_bos: leave a leading BOS position out of the residual statistics and the lens.
            LLaMA models park a huge, nearly input-independent activation on BOS (an attention
            sink), whose difference would swamp every mean. The token table always keeps it.
        progress: show a progress bar.

    Returns:
        A :class:`ModelComparison`. The lens at layer ``l`` is
        ``(w_norm * d_l) @ W_U`` with ``w_norm`` the elementwise weight of ``b``'s final RMSNorm
        and ``W_U`` ``b``'s unembedding: the normalisation's data-dependent ``1/rms`` scale is
        left out because ``d_l`` is a difference of residuals, not a residual (it scales every
        logit alike and does not change the ranking), and an unembedding bias cancels in a
        difference.

    Raises:
        ModelMismatchError: the models differ in layers, width or vocabulary size, or a text
            does not tokenize to the same ids under both tokenizers (the message names the text).
        ValueError: no texts, or a bad argument.

    >>> import workbench as wb
    >>> base, tuned = wb.load_model("base/"), wb.load_model("tuned/")     # doctest: +SKIP
    >>> comparison = wb.compare_models(base, tuned, ["The capital of France is Paris."])  # doctest: +SKIP
    >>> comparison.summary["top1_agreement"], comparison.layers[["layer", "cosine"]]  # doctest: +SKIP
    >>> comparison.lens.query("layer == 20 and direction == 'promoted'")  # doctest: +SKIP
    """
    texts = _as_texts(texts)
    if batch_size < 1 or top_k < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError("batch_size, top_k and max_tokens must be positive")
    _check_architecture(a, b)
    ids = _token_ids(a, b, texts, max_tokens)
    n_layers, d_model = int(a.cfg.n_layers), int(a.cfg.d_model)
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    bos = a.tokenizer.bos_token_id
    pieces = _Pieces(a.tokenizer)
    stats = _ResidualStats(len(names), d_model)
    columns: dict[str, list[np.ndarray]] = {}
    batches = [range(s, min(s + batch_size, len(ids))) for s in range(0, len(ids), batch_size)]
    for batch in tqdm(batches, desc="compare_models", unit="batch", disable=not progress):
        tokens = _pad([ids[i] for i in batch], a.pad_token_id)  # [batch, pos]
        logits_a, resid_a = _forward(a, tokens, names)
        logits_b, resid_b = _forward(b, tokens, names)
        device = logits_a.device
        for j, i in enumerate(batch):
            n = len(ids[i])
            row = _token_stats(logits_a[j, :n].float(), logits_b[j, :n].to(device).float(), ids[i])
            row.update(text_index=np.full(n, i), position=np.arange(n), token_id=np.asarray(ids[i]))
            for key, value in row.items():
                columns.setdefault(key, []).append(value)
            start = 1 if skip_bos and bos is not None and ids[i][0] == bos else 0
            # [layers, tokens, d_model] for this text, float32 on a's device
            stats.add(resid_a[:, j, start:n].float(), resid_b[:, j, start:n].to(resid_a.device).float())
        del logits_a, logits_b, resid_a, resid_b
    table = _tokens_table(columns, pieces)
    layers = stats.table(names)
    lens = _difference_lens(b, stats.mean_difference(), top_k, pieces)
    summary = {
        "model_a": a.source.name, "model_b": b.source.name, "n_texts": len(texts), "n_tokens": len(table),
        "mean_kl": float(table["kl"].mean()), "median_kl": float(table["kl"].median()),
        "max_kl": float(table["kl"].max()), "mean_kl_ba": float(table["kl_ba"].mean()),
        "top1_agreement": float(table["agree"].mean()), "skip_bos": skip_bos,
        "n_residual_tokens": int(stats.count),
    }
    return ModelComparison(tokens=table, layers=layers, lens=lens, summary=summary)


# --- checks and tokens ----------------------------------------------------------------------


def _as_texts(texts: Any) -> list:
    if isinstance(texts, str) or chat.is_conversation(texts):
        texts = [texts]
    elif isinstance(texts, pd.Series):
        texts = texts.tolist()
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    for i, text in enumerate(texts):
        if not (isinstance(text, str) or chat.is_conversation(text)):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a text or a conversation")
    return texts


def _check_architecture(a: HookedLlama, b: HookedLlama) -> None:
    """Raise ModelMismatchError listing every shape the two models disagree on."""
    differences = []
    for attr, what in (("n_layers", "layers"), ("d_model", "d_model (residual width)"), ("d_vocab", "vocabulary size")):
        va, vb = int(getattr(a.cfg, attr)), int(getattr(b.cfg, attr))
        if va != vb:
            differences.append(f"{what}: {va} vs {vb}")
    if differences:
        raise ModelMismatchError(
            f"cannot compare {a.source.name!r} with {b.source.name!r} position by position: "
            + "; ".join(differences) + ". compare_models needs two checkpoints of the same architecture.")
    vocab_a, vocab_b = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    if vocab_a != vocab_b:
        changed = sorted(set(vocab_a.items()) ^ set(vocab_b.items()))
        warnings.warn(f"the tokenizers of {a.source.name!r} and {b.source.name!r} differ in "
                      f"{len(changed)} vocabulary entries (e.g. {changed[:3]}); texts that tokenize alike "
                      "are still compared, with tokens shown as a's tokenizer spells them",
                      stacklevel=3)


def _encode(model: HookedLlama, text: str | list[dict], rendered: str | None = None) -> list[int]:
    if rendered is not None:  # a conversation: a's rendering, this model's tokenizer
        return chat.encode_chat_text(model.tokenizer, rendered, model.tokenizer_adds_bos)
    return model.to_tokens(text, truncate=False, move_to_device=False)[0].tolist()


def _token_ids(a: HookedLlama, b: HookedLlama, texts: list, max_tokens: int | None) -> list[list[int]]:
    """Each text's ids under a (the ones both models run on), checked against b's tokenizer."""
    n_ctx = min(int(a.cfg.n_ctx), int(b.cfg.n_ctx))
    limit = n_ctx if max_tokens is None else min(max_tokens, n_ctx)
    out, too_long = [], []
    for i, text in enumerate(texts):
        # A conversation that ends with the assistant's turn is shown whole; otherwise the
        # assistant's turn is opened, as when the model is asked to answer.
        rendered = (a.format_chat(text, add_generation_prompt=text[-1].get("role") != "assistant")
                    if chat.is_conversation(text) else None)
        ids_a, ids_b = _encode(a, text, rendered), _encode(b, text, rendered)
        if ids_a != ids_b:
            at = next((k for k, (x, y) in enumerate(zip(ids_a, ids_b, strict=False)) if x != y),
                      min(len(ids_a), len(ids_b)))
            shown = text if rendered is None else rendered
            raise ModelMismatchError(
                f"the tokenizers of {a.source.name!r} and {b.source.name!r} disagree on texts[{i}] "
                f"({shown[:60]!r}{'...' if len(shown) > 60 else ''}): {len(ids_a)} vs {len(ids_b)} tokens, "
                f"first different at token {at} ({ids_a[at:at + 3]} vs {ids_b[at:at + 3]}). compare_models "
                "runs both models on the same ids, so their tokenizers must agree.")
        if not ids_a:
            raise ValueError(f"texts[{i}] tokenizes to no token")
        if len(ids_a) > n_ctx:
            too_long.append(i)
        out.append(ids_a[:limit])
    if too_long:
        warnings.warn(f"{len(too_long)} texts longer than the context window ({n_ctx} tokens) were truncated "
                      f"(texts {too_long[:10]}{' ...' if len(too_long) > 10 else ''})", stacklevel=3)
    return out


def _pad(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    tokens = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    for j, row in enumerate(rows):
        tokens[j, : len(row)] = torch.tensor(row)  # right padding: no real token attends to a pad
    return tokens


class _Pieces:
    """Token id -> its text, each vocabulary id decoded once."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.decoded: dict[int, str] = {}

    def __call__(self, ids: np.ndarray) -> list[str]:
        ids = [int(i) for i in ids]
        missing = sorted(set(ids) - self.decoded.keys())
        if missing:
            texts = self.tokenizer.batch_decode([[i] for i in missing], clean_up_tokenization_spaces=False)
            self.decoded.update(zip(missing, texts, strict=True))
        return [self.decoded[i] for i in ids]


# --- running and statistics -----------------------------------------------------------------


def _forward(model: HookedLlama, tokens: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[batch, pos, d_vocab]`` and residuals ``[layers, batch, pos, d_model]`` (model dtype)."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens.to(model.device), names_filter=names)
        resid = torch.stack([cache[name].to(logits.device) for name in names])
    return logits, resid


def _token_stats(logits_a: torch.Tensor, logits_b: torch.Tensor, ids: list[int]) -> dict[str, np.ndarray]:
    """Per-position comparison of two ``[pos, d_vocab]`` float32 logit tensors."""
    logp_a, logp_b = torch.log_softmax(logits_a, -1), torch.log_softmax(logits_b, -1)
    # KL(P || Q) = sum_v p_v (log p_v - log q_v); rounding can leave -1e-8, never a real negative.
    kl_ab = (logp_a.exp() * (logp_a - logp_b)).sum(-1).clamp_min(0)
    kl_ba = (logp_b.exp() * (logp_b - logp_a)).sum(-1).clamp_min(0)
    top_a, top_b = logp_a.argmax(-1), logp_b.argmax(-1)
    nxt = torch.tensor(ids[1:], dtype=torch.long, device=logp_a.device)[:, None]
    nan = torch.full((1,), float("nan"), device=logp_a.device)
    out = {
        "kl": kl_ab, "kl_ba": kl_ba, "top1_a_id": top_a, "top1_b_id": top_b, "agree": top_a == top_b,
        "p_a": logp_a.gather(-1, top_a[:, None])[:, 0].exp(), "p_b": logp_b.gather(-1, top_a[:, None])[:, 0].exp(),
        "logp_next_a": torch.cat([logp_a[:-1].gather(-1, nxt)[:, 0], nan]),
        "logp_next_b": torch.cat([logp_b[:-1].gather(-1, nxt)[:, 0], nan]),
    }
    return {k: v.cpu().numpy() for k, v in out.items()}


def _tokens_table(columns: dict[str, list[np.ndarray]], pieces: _Pieces) -> pd.DataFrame:
    col = {k: np.concatenate(v) for k, v in columns.items()}
    token = pieces(col["token_id"])
    last = np.append(col["text_index"][1:] != col["text_index"][:-1], True)  # each text's last position
    next_token = [None if end else t for t, end in zip(token[1:] + [None], last, strict=True)]
    return pd.DataFrame({
        "text_index": col["text_index"].astype(np.int64), "position": col["position"].astype(np.int64),
        "token_id": col["token_id"].astype(np.int64), "token": token, "next_token": next_token,
        "kl": col["kl"].astype(np.float64), "kl_ba": col["kl_ba"].astype(np.float64),
        "top1_a": pieces(col["top1_a_id"]), "top1_b": pieces(col["top1_b_id"]),
        "top1_a_id": col["top1_a_id"].astype(np.int64), "top1_b_id": col["top1_b_id"].astype(np.int64),
        "agree": col["agree"].astype(bool), "p_a": col["p_a"].astype(np.float64),
        "p_b": col["p_b"].astype(np.float64), "logp_next_a": col["logp_next_a"].astype(np.float64),
        "logp_next_b": col["logp_next_b"].astype(np.float64),
    })


class _ResidualStats:
    """Running sums over tokens of per-layer residual comparisons (float64 on the CPU)."""

    def __init__(self, n_layers: int, d_model: int):
        self.count = 0
        self.sums = {k: torch.zeros(n_layers, dtype=torch.float64)
                     for k in ("diff_norm", "rel_diff_norm", "cosine", "norm_a", "norm_b")}
        self.diff_sum = torch.zeros(n_layers, d_model, dtype=torch.float64)

    def add(self, ra: torch.Tensor, rb: torch.Tensor) -> None:
        """``ra``, ``rb``: ``[layers, tokens, d_model]`` float32."""
        if ra.shape[1] == 0:
            return
        diff = rb - ra
        norm_a, norm_b, norm_d = ra.norm(dim=-1), rb.norm(dim=-1), diff.norm(dim=-1)  # [layers, tokens]
        tiny = torch.finfo(torch.float32).tiny
        values = {
            "diff_norm": norm_d, "rel_diff_norm": norm_d / norm_a.clamp_min(tiny),
            "cosine": (ra * rb).sum(-1) / (norm_a * norm_b).clamp_min(tiny), "norm_a": norm_a, "norm_b": norm_b,
        }
        for key, value in values.items():
            self.sums[key] += value.double().sum(-1).cpu()
        self.diff_sum += diff.double().sum(1).cpu()
        self.count += ra.shape[1]

    def mean_difference(self) -> torch.Tensor | None:
        return None if self.count == 0 else self.diff_sum / self.count  # [layers, d_model]

    def table(self, names: list[str]) -> pd.DataFrame:
        n = self.count or float("nan")  # no token counted (only BOS, skipped): every mean is NaN
        mean_diff = self.mean_difference()
        return pd.DataFrame({
            "layer": np.arange(-1, len(names) - 1), "hook": names, "n_tokens": self.count,
            **{k: (v / n).numpy() for k, v in self.sums.items()},
            "mean_diff_norm": np.full(len(names), np.nan) if mean_diff is None else mean_diff.norm(dim=-1).numpy(),
        })


def unembedding(model: HookedLlama) -> tuple[torch.Tensor, torch.Tensor]:
    """The final RMSNorm's elementwise weight ``[d_model]`` and the unembedding ``W_U``
    ``[d_model, d_vocab]``, float32 on the CPU: how a direction (a residual difference, an SAE
    decoder row) is read in tokens, leaving out the norm's data-dependent ``1/rms`` scale."""
    w_norm = model.bridge.ln_final.original_component.weight.detach().float().cpu()
    return w_norm, model.bridge.W_U.detach().float().cpu()


def _difference_lens(b: HookedLlama, mean_diff: torch.Tensor | None, top_k: int, pieces: _Pieces) -> pd.DataFrame:
    """The activation-difference lens: ``(w_norm * d) @ W_U`` per layer, top and bottom ``top_k``."""
    columns = ["layer", "direction", "rank", "token_id", "token", "logit"]
    if mean_diff is None:
        return pd.DataFrame(columns=columns)
    w_norm, w_u = unembedding(b)
    logits = (mean_diff.float() * w_norm) @ w_u  # [layers, d_vocab]
    k = min(top_k, logits.shape[-1])
    rows = []
    for row, layer in enumerate(range(-1, logits.shape[0] - 1)):
        for direction, largest in (("promoted", True), ("suppressed", False)):
            values, ids = logits[row].topk(k, largest=largest)
            for rank, (value, token_id, token) in enumerate(zip(values.tolist(), ids.tolist(),
                                                                pieces(ids.numpy()), strict=True), 1):
                rows.append((layer, direction, rank, token_id, token, value))
    return pd.DataFrame(rows, columns=columns)
