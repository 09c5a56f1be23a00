"""Scoring and selecting refusal-direction candidates (Arditi et al. 2024, section 2.3 / appendix C).

Each candidate (a layer and a post-instruction position) is scored three ways, on validation
prompts, from the logits at the last position (the first token the model would write):

- ``ablation_score``: mean refusal score of the harmful prompts with the candidate's direction
  projected out of ``resid_pre``, ``attn_out`` and ``mlp_out`` at every layer (low: refusal gone);
- ``induce_score``: mean refusal score of the harmless prompts with the un-normalised mean
  difference added to ``resid_pre`` at the candidate's layer, every position (high: refusal made);
- ``kl``: mean KL(clean || ablated) of the harmless prompts' next-token distribution (low: the
  ablation leaves harmless behaviour alone).

:func:`select` applies Arditi's rule to that table. Two scorers compute it, with the same numbers:

- :func:`score_batched` (the default): rows are (candidate, prompt) pairs, several candidates per
  forward, each row's hook using its own candidate's vector; the harmful and harmless prompts of
  an ablation share one pass; the chat template's shared opening (system prompt, ``<|im_start|>user``)
  runs once per candidate, not once per prompt: causal attention cannot let a prompt's own tokens
  reach it, and the interventions act the same at every position, so its keys and values are
  computed on one row and copied into every row's cache (:func:`run_rows`); and the
  unembedding runs at each row's last position only.
- :func:`score_loop`: one forward per candidate and measurement, through ``model.ablate`` and
  ``model.steer`` on whole, padded prompts, as the authors' pipeline does: the reference the
  batched scorer is tested and benchmarked against.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.common.errors import PatchingError
from workbench.models.interventions import ablate, steer

# The sites Arditi et al. ablate at in every layer: the block's input and what attention and the
# MLP write back; together they keep the direction out of the residual stream everywhere.
ABLATION_SITES = ("resid_pre", "attn_out", "mlp_out")
_ABLATION_HOOKS = ("blocks.{layer}.hook_resid_pre", "blocks.{layer}.hook_attn_out", "blocks.{layer}.hook_mlp_out")
REFUSAL_EPS = 1e-8  # Arditi et al.'s epsilon inside the log-odds


def refusal_score(logits: torch.Tensor, refusal_tokens: Sequence[int], eps: float = REFUSAL_EPS) -> torch.Tensor:
    """Arditi et al.'s first-token refusal score of each row: ``log p - log(1 - p)``.

    ``p`` is the probability mass of ``refusal_tokens`` in the next-token distribution (float64
    softmax), ``eps`` keeps the logs finite as in their ``refusal_score``.

    Args:
        logits: ``[batch, d_vocab]`` (the last position) or ``[batch, pos, d_vocab]`` (its last
            position is used).

    >>> round(refusal_score(torch.zeros(1, 4), [0]).item(), 4)   # p = 1/4: log(1/4) - log(3/4)
    -1.0986
    """
    if logits.dim() == 3:
        logits = logits[:, -1]
    probs = logits.double().softmax(-1)
    p = probs[:, list(refusal_tokens)].sum(-1)
    return torch.log(p + eps) - torch.log(1 - p + eps)


def kl_divergence(base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(base || other) of next-token distributions, one per row, from logits ``[batch, d_vocab]``.

    Exact (float64 log-softmax); Arditi et al. add 1e-6 inside their logs, a difference far
    below the 0.1 threshold.
    """
    base, other = base.double().log_softmax(-1), other.double().log_softmax(-1)
    return (base.exp() * (base - other)).sum(-1)


# --- prompts sharing an opening -------------------------------------------------------------------


@dataclass
class PromptSet:
    """Token ids of rendered prompts and how many leading tokens all of them share.

    ``prefix`` never reaches into the last ``keep`` tokens of any prompt (the post-instruction
    tokens whose activations are read), and leaves each prompt at least one token of its own.
    """

    ids: list[list[int]]
    prefix: int

    @classmethod
    def of(cls, ids: list[list[int]], keep: int = 1) -> "PromptSet":
        if not ids:
            raise PatchingError("no prompts to run")
        shortest = min(len(x) for x in ids)
        prefix = 0
        while prefix < shortest - max(keep, 1) and all(x[prefix] == ids[0][prefix] for x in ids):
            prefix += 1
        return cls([list(x) for x in ids], prefix)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Sequence[int]) -> "PromptSet":
        return PromptSet([self.ids[i] for i in indices], self.prefix)


HooksFor = Callable[[torch.Tensor], list]  # group id of each row of a pass -> fwd hooks


def run_rows(
    model,
    prompts: PromptSet,
    rows: Sequence[tuple[int, int]],
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    hooks_for: HooksFor | None = None,
    *,
    read: Sequence[str] = (),
    n_read: int = 0,
    batch_size: int = 16,
    bar=None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run rows ``(group, prompt)``, ``batch_size`` a pass, and reduce each row's last logits.

    Rows of one group run under the same intervention: ``hooks_for(groups)`` returns the hooks
    of a pass whose row ``r`` belongs to group ``groups[r]``, acting the same at every position.
    The shared opening (``prompts.prefix`` tokens) runs once per group in the pass, and its
    keys/values are copied into the cache of every row of that group; each row then runs its
    own tokens, right-padded (padding comes after a row's tokens, so causal attention keeps it
    out), and the unembedding reads only its last token.

    Args:
        reduce: ``(logits [rows, d_vocab], prompt index of each row) -> [rows, k]``.
        read, n_read: hooks whose activations at each row's last ``n_read`` positions are kept
            (``n_read <= len(prompt) - prompts.prefix``).

    Returns:
        ``([len(rows), k], {hook: [len(rows), n_read, d]})``: the reductions and the activations
        read, in the order of ``rows``, on the CPU.
    """
    hooks_for = hooks_for or (lambda groups: [])
    device = model.device
    out, reads = [], {name: [] for name in read}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        groups = torch.tensor([g for g, _ in chunk])
        order = torch.tensor([p for _, p in chunk])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
            cache = _prefix_cache(model, prompts, groups, hooks_for, device)
            suffixes = [prompts.ids[p][prompts.prefix :] for _, p in chunk]
            width = max(len(s) for s in suffixes)
            tokens = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
            for r, s in enumerate(suffixes):
                tokens[r, : len(s)] = torch.tensor(s)
            last = torch.tensor([len(s) - 1 for s in suffixes], device=device)
            hooks = hooks_for(groups) + [("unembed.hook_in", _gather(last))]
            hooks += [(name, _reader(reads[name], last, n_read)) for name in read]
            with model.hooks(hooks):
                kwargs = {} if cache is None else {"past_key_values": cache}
                logits = model(tokens.to(device), **kwargs)[:, 0]
        out.append(reduce(logits, order.to(logits.device)).detach().cpu())
        if bar is not None:
            bar.update(len(chunk))
    return torch.cat(out), {name: torch.cat(parts) for name, parts in reads.items()}


def _prefix_cache(model, prompts: PromptSet, groups: torch.Tensor, hooks_for: HooksFor, device):
    """The shared opening's KV cache, run once per distinct group, one entry per row."""
    if prompts.prefix == 0:
        return None
    distinct, row_of = torch.unique(groups, return_inverse=True)
    tokens = torch.tensor([prompts.ids[0][: prompts.prefix]], device=device).repeat(len(distinct), 1)
    last = torch.full((len(distinct),), prompts.prefix - 1, device=device)
    with model.hooks(hooks_for(distinct) + [("unembed.hook_in", _gather(last))]):
        _, cache = model(tokens, return_type="logits_and_cache")
    cache.batch_select_indices(row_of.to(device))
    return cache


def _gather(last: torch.Tensor):
    """A hook keeping each row's own last position: the unembedding then runs on one token a row."""

    def keep_last(activation: torch.Tensor, hook) -> torch.Tensor:
        return activation[torch.arange(activation.shape[0], device=activation.device), last][:, None]

    return keep_last


def _reader(store: list, last: torch.Tensor, k: int):
    """A hook appending each row's activations at its last ``k`` positions ``[rows, k, d]``."""
    offsets = torch.arange(-k + 1, 1, device=last.device)

    def read(activation: torch.Tensor, hook) -> None:
        rows = torch.arange(activation.shape[0], device=activation.device)[:, None]
        store.append(activation[rows, last[:, None] + offsets].detach().float().cpu())

    return read




def plain_last_logits(model, prompts: PromptSet, batch_size: int = 16) -> torch.Tensor:
    """Last-position logits ``[n, d_vocab]`` of whole, left-padded prompts (an attention mask and
    position ids as if unpadded): a plain forward, whatever hooks are open."""
    device = model.device
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts.ids[start : start + batch_size]
            width = max(len(x) for x in chunk)
            tokens = torch.full((len(chunk), width), model.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, x in enumerate(chunk):
                tokens[r, width - len(x) :], mask[r, width - len(x) :] = torch.tensor(x), 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(tokens.to(device), attention_mask=mask.to(device), position_ids=positions.to(device))
            out.append(logits[:, -1].float().cpu())
    return torch.cat(out)


# --- the candidates' scores -------------------------------------------------------------------------


@dataclass
class Candidates:
    """What the scorers need: un-normalised mean differences and where they came from."""

    vectors: torch.Tensor  # [n_candidates, d_model], float32
    layers: list[int]
    positions: list[int]  # negative: -1 is the last post-instruction token

    @property
    def nonzero(self) -> list[int]:
        """Candidates with a direction at all: at layer 0 ``resid_pre`` is the token embedding,
        the same for every prompt at a template position, so the difference there is zero."""
        norms = self.vectors.norm(dim=-1)
        return [c for c in range(len(norms)) if norms[c] > 1e-6 * max(float(norms.max()), 1e-30)]

    def subset(self, indices: Sequence[int]) -> "Candidates":
        return Candidates(self.vectors[list(indices)], [self.layers[i] for i in indices],
                          [self.positions[i] for i in indices])

    @property
    def units(self) -> torch.Tensor:
        return self.vectors / self.vectors.norm(dim=-1, keepdim=True)


def score_batched(model, candidates: Candidates, harmful: PromptSet, harmless: PromptSet,
                  refusal_tokens: Sequence[int], *, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Every candidate's ``ablation_score``, ``induce_score`` and ``kl``, several candidates a pass
    (NaN for a zero mean difference)."""
    return _nonzero_only(_score_batched, model, candidates, harmful, harmless, refusal_tokens, batch_size, progress)


def score_loop(model, candidates: Candidates, harmful: PromptSet, harmless: PromptSet,
               refusal_tokens: Sequence[int], *, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """The same table, one candidate and measurement at a time, through ``model.ablate`` / ``model.steer``."""
    return _nonzero_only(_score_loop, model, candidates, harmful, harmless, refusal_tokens, batch_size, progress)


def _nonzero_only(scorer, model, candidates, harmful, harmless, refusal_tokens, batch_size, progress) -> pd.DataFrame:
    table = _table(candidates, *([np.full(len(candidates.layers), np.nan)] * 3))
    nonzero = candidates.nonzero
    if nonzero:
        scores = scorer(model, candidates.subset(nonzero), harmful, harmless, refusal_tokens, batch_size, progress)
        table.loc[nonzero, ["ablation_score", "induce_score", "kl"]] = scores[["ablation_score", "induce_score", "kl"]].to_numpy()
    return table


def _score_batched(model, candidates: Candidates, harmful: PromptSet, harmless: PromptSet,
                   refusal_tokens: Sequence[int], batch_size: int, progress: bool) -> pd.DataFrame:
    n = len(candidates.layers)
    both = PromptSet.of(harmful.ids + harmless.ids)
    base = plain_last_logits(model, harmless, batch_size).to(model.device)
    n_harmful = len(harmful)
    units = candidates.units.to(model.device)
    vectors = candidates.vectors.to(model.device)
    ablation_rows = [(c, p) for c in range(n) for p in range(len(both))]
    induce_rows = [(c, p) for c in range(n) for p in range(len(harmless))]
    bar = tqdm(total=len(ablation_rows) + len(induce_rows), desc="refusal direction: candidates",
               disable=not progress, unit="row")

    def ablation_reduce(logits, prompt):
        score = refusal_score(logits, refusal_tokens)
        kl = torch.full_like(score, math.nan)
        is_harmless = prompt >= n_harmful
        if is_harmless.any():
            kl[is_harmless] = kl_divergence(base[prompt[is_harmless] - n_harmful], logits[is_harmless])
        return torch.stack([score, kl], -1)

    try:
        ablated, _ = run_rows(model, both, ablation_rows, ablation_reduce, _ablation_hooks(model, units),
                              batch_size=batch_size, bar=bar)
        induced, _ = run_rows(model, harmless, induce_rows, lambda logits, _: refusal_score(logits, refusal_tokens)[:, None],
                              _addition_hooks(candidates.layers, vectors), batch_size=batch_size, bar=bar)
        ablated, induced = ablated.reshape(n, len(both), 2), induced.reshape(n, -1)
    finally:
        bar.close()
    return _table(candidates, ablated[:, :n_harmful, 0].mean(1), induced.mean(1), ablated[:, n_harmful:, 1].mean(1))


def _ablation_hooks(model, units: torch.Tensor) -> HooksFor:
    names = [t.format(layer=layer) for layer in range(model.cfg.n_layers) for t in _ABLATION_HOOKS]

    def hooks_for(groups: torch.Tensor) -> list:
        d = units[groups.to(units.device)][:, None, :]  # [rows, 1, d_model]: each row's own direction

        def project_out(activation, hook):
            dd = d.to(activation.dtype)
            return activation - (activation * dd).sum(-1, keepdim=True) * dd

        return [(name, project_out) for name in names]

    return hooks_for


def _addition_hooks(layers: list[int], vectors: torch.Tensor) -> HooksFor:
    layer_of = torch.tensor(layers)

    def hooks_for(groups: torch.Tensor) -> list:
        hooks = []
        for layer in sorted(set(layer_of[groups].tolist())):
            here = (layer_of[groups] == layer).to(vectors.device)
            add = torch.where(here[:, None], vectors[groups.to(vectors.device)], 0)[:, None, :]

            def add_vector(activation, hook, add=add):
                return activation + add.to(activation.dtype)

            hooks.append((f"blocks.{layer}.hook_resid_pre", add_vector))
        return hooks

    return hooks_for


def _score_loop(model, candidates: Candidates, harmful: PromptSet, harmless: PromptSet,
                refusal_tokens: Sequence[int], batch_size: int, progress: bool) -> pd.DataFrame:
    base = plain_last_logits(model, harmless, batch_size)
    n = len(candidates.layers)
    scores = torch.empty(n, 3, dtype=torch.float64)
    for c in tqdm(range(n), desc="refusal direction: candidates (loop)", disable=not progress):
        vector = candidates.vectors[c]
        with contextlib.ExitStack() as stack:
            for site in ABLATION_SITES:
                stack.enter_context(ablate(model, vector, site=site))
            harmful_logits = plain_last_logits(model, harmful, batch_size)
            harmless_logits = plain_last_logits(model, harmless, batch_size)
        with steer(model, vector, layer=candidates.layers[c], alpha=float(vector.norm()), site="resid_pre"):
            induced = plain_last_logits(model, harmless, batch_size)
        scores[c, 0] = refusal_score(harmful_logits, refusal_tokens).mean()
        scores[c, 1] = refusal_score(induced, refusal_tokens).mean()
        scores[c, 2] = kl_divergence(base, harmless_logits).mean()
    return _table(candidates, scores[:, 0], scores[:, 1], scores[:, 2])


def _table(candidates: Candidates, ablation, induce, kl) -> pd.DataFrame:
    return pd.DataFrame({
        "layer": candidates.layers,
        "position": candidates.positions,
        "ablation_score": np.asarray(ablation, dtype=np.float64),
        "induce_score": np.asarray(induce, dtype=np.float64),
        "kl": np.asarray(kl, dtype=np.float64),
    })


# --- the selection rule ------------------------------------------------------------------------------


def select(frame: pd.DataFrame, n_layers: int, *, kl_threshold: float | None = 0.1,
           induce_threshold: float | None = 0.0, prune_layer_fraction: float | None = 0.2) -> pd.DataFrame:
    """Arditi et al.'s rule: drop candidates, then keep the lowest ``ablation_score``.

    A candidate is dropped when a score is NaN, when its layer is in the last
    ``prune_layer_fraction`` of the model (``layer >= int(n_layers * (1 - fraction))``), when
    ``kl > kl_threshold`` or when ``induce_score < induce_threshold`` (their ``filter_fn``).
    ``None`` turns a test off. A ``norm`` column of 0 (a zero mean difference, not scored) is
    a reason of its own.

    Returns:
        ``frame`` with ``filtered`` (the reasons, ``None`` if kept) and ``selected`` (one True).

    Raises:
        PatchingError: every candidate was dropped (the message counts each reason).

    >>> frame = pd.DataFrame({"layer": [0, 1], "position": [-1, -1], "ablation_score": [-2.0, -3.0],
    ...                       "induce_score": [1.0, 1.0], "kl": [0.01, 0.5]})
    >>> select(frame, n_layers=10)[["layer", "filtered", "selected"]].to_dict("records")
    [{'layer': 0, 'filtered': None, 'selected': True}, {'layer': 1, 'filtered': 'kl > 0.1', 'selected': False}]
    """
    frame = frame.copy()
    reasons = []
    for row in frame.itertuples():
        why = []
        if getattr(row, "norm", None) == 0:
            why.append("zero mean difference")
        elif any(math.isnan(v) for v in (row.ablation_score, row.induce_score, row.kl)):
            why.append("nan score")
        if prune_layer_fraction is not None and row.layer >= int(n_layers * (1.0 - prune_layer_fraction)):
            why.append(f"layer >= {int(n_layers * (1.0 - prune_layer_fraction))}")
        if kl_threshold is not None and row.kl > kl_threshold:
            why.append(f"kl > {kl_threshold:g}")
        if induce_threshold is not None and row.induce_score < induce_threshold:
            why.append(f"induce_score < {induce_threshold:g}")
        reasons.append(", ".join(why) or None)
    frame["filtered"] = pd.Series(reasons, index=frame.index, dtype=object)
    frame["selected"] = False
    kept = frame[frame["filtered"].isna()]
    if kept.empty:
        counts = pd.Series([r for rs in reasons for r in rs.split(", ")]).value_counts()
        error = PatchingError(
            "every refusal-direction candidate was filtered out ("
            + "; ".join(f"{reason}: {k}" for reason, k in counts.items())
            + "). Loosen kl_threshold=, prune_layer_fraction= or induce_threshold=, or check that the "
            "harmful prompts are ones the model refuses (refusal_tokens= for its refusal phrasing)")
        error.frame = frame
        raise error
    frame.loc[kept["ablation_score"].idxmin(), "selected"] = True
    return frame
