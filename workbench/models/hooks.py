"""The hook catalogue and hook selection.

Every stage after loading names activations by TransformerLens hook names. This module says
which hooks a model has (name, shape, meaning: ``model.hook_catalogue()``, built here once per
model) and turns the ways a user may select them (exact names, glob patterns such as
``"blocks.*.hook_resid_post"``, predicates) into the names they pick (:func:`select_hooks`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from typing import TYPE_CHECKING, Callable, Iterable

import pandas as pd
import torch

if TYPE_CHECKING:
    from workbench.models.hooked import HookedLlama

HookSelection = str | Iterable[str] | Callable[[str], bool] | None

# What the canonical TransformerLens hooks hold, keyed by name with the layer replaced by {i}.
# Module-path hooks (``blocks.3.attn.q.hook_out``) are described from their path instead.
DESCRIPTIONS = {
    "hook_embed": "token embeddings (input to block 0)",
    "blocks.{i}.hook_resid_pre": "residual stream entering block {i}",
    "blocks.{i}.hook_resid_mid": "residual stream after block {i}'s attention, before its MLP",
    "blocks.{i}.hook_resid_post": "residual stream leaving block {i}",
    "blocks.{i}.hook_attn_out": "attention output of block {i}, added to the residual stream",
    "blocks.{i}.hook_mlp_out": "MLP output of block {i}, added to the residual stream",
    "blocks.{i}.ln1.hook_scale": "RMSNorm scale before attention (the root-mean-square)",
    "blocks.{i}.ln1.hook_normalized": "RMSNorm output before attention (before the gain)",
    "blocks.{i}.ln2.hook_scale": "RMSNorm scale before the MLP (the root-mean-square)",
    "blocks.{i}.ln2.hook_normalized": "RMSNorm output before the MLP (before the gain)",
    "blocks.{i}.attn.hook_q": "queries per head, before rotary",
    "blocks.{i}.attn.hook_k": "keys per key/value head, before rotary",
    "blocks.{i}.attn.hook_v": "values per key/value head",
    "blocks.{i}.attn.hook_rot_q": "queries per head after rotary embedding",
    "blocks.{i}.attn.hook_rot_k": "keys per key/value head after rotary embedding",
    "blocks.{i}.attn.hook_cos": "rotary cosines used by block {i}",
    "blocks.{i}.attn.hook_sin": "rotary sines used by block {i}",
    "blocks.{i}.attn.hook_attn_scores": "attention scores before softmax (query x key)",
    "blocks.{i}.attn.hook_pattern": "attention pattern after softmax (query x key)",
    "blocks.{i}.attn.hook_z": "per-head attention output before the output projection",
    "blocks.{i}.mlp.hook_pre": "MLP gate pre-activation (gate_proj output, before SiLU)",
    "blocks.{i}.mlp.hook_pre_linear": "MLP up projection (up_proj output)",
    "blocks.{i}.mlp.hook_post": "MLP hidden activation: SiLU(gate) * up, input to down_proj",
    "ln_final.hook_scale": "final RMSNorm scale",
    "ln_final.hook_normalized": "final RMSNorm output (before the gain)",
    "hook_unembed": "logits",
    "rotary_emb.hook_cos": "rotary cosines",
    "rotary_emb.hook_sin": "rotary sines",
}

_COMPONENT_NAMES = {
    "embed": "token embedding",
    "rotary_emb": "rotary embedding",
    "ln1": "RMSNorm before attention",
    "ln2": "RMSNorm before the MLP",
    "attn": "attention",
    "attn.q": "query projection",
    "attn.k": "key projection",
    "attn.v": "value projection",
    "attn.o": "attention output projection",
    "mlp": "MLP",
    "mlp.gate": "MLP gate projection",
    "mlp.in": "MLP up projection",
    "mlp.out": "MLP down projection",
    "ln_final": "final RMSNorm",
    "unembed": "unembedding",
}


def select_hooks(model: HookedLlama, selection: HookSelection, *, strict: bool = True) -> list[str]:
    """The model's hook names a selection picks, in forward order: the one way to select hooks.

    Args:
        model: the model whose catalogue is searched.
        selection: an exact name, a glob pattern (``*``, ``?``, ``[...]``), a list of those, a
            predicate on names, or ``None`` (every hook).
        strict: every pattern must match some hook, so a typo does not pass silently (the error
            suggests close names). ``strict=False`` returns whatever matches, possibly nothing,
            as TransformerLens's ``names_filter`` does.

    Raises:
        ValueError: with ``strict``, a pattern (or the predicate) matches no hook.

    >>> select_hooks(model, "blocks.1?.hook_resid_post")[:2]           # doctest: +SKIP
    ['blocks.10.hook_resid_post', 'blocks.11.hook_resid_post']
    >>> select_hooks(model, "blocks.*.hook_typo", strict=False)          # doctest: +SKIP
    []
    """
    names = model.hook_names()
    if selection is None or callable(selection):
        chosen = names if selection is None else [n for n in names if selection(n)]
        if strict and not chosen:
            raise ValueError("the hook predicate matches no hook of this model")
        return chosen
    patterns = [selection] if isinstance(selection, str) else list(selection)
    if strict:
        for pattern in patterns:
            if not any(_matcher(pattern)(n) for n in names):
                close = difflib.get_close_matches(pattern, names, n=3)
                hint = f"; did you mean {close}?" if close else ""
                raise ValueError(f"hooks={pattern!r} matches no hook of this model{hint}")
    keep = _matcher(patterns)
    return [n for n in names if keep(n)]


def _matcher(selection: str | Iterable[str]) -> Callable[[str], bool]:
    patterns = [selection] if isinstance(selection, str) else list(selection)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"hook selection must be names, glob patterns or a predicate: {selection!r}")
    exact = {p for p in patterns if not any(ch in p for ch in "*?[")}
    globs = [re.compile(fnmatch.translate(p)) for p in patterns if p not in exact]
    return lambda name: name in exact or any(g.match(name) for g in globs)


def build_catalogue(model: HookedLlama) -> pd.DataFrame:
    """Every hook that fires in a forward pass, found by running one short prompt.

    ``model.hook_catalogue()`` calls this once per model and keeps the table.

    Returns:
        One row per hook, in forward order: ``name``, ``layer`` (``<NA>`` outside blocks),
        ``component``, ``shape`` (symbolic, e.g. ``"[batch, pos, d_model]"``) and
        ``description``.

    >>> build_catalogue(model).query("name == 'blocks.0.hook_resid_post'").shape.item()  # doctest: +SKIP
    '[batch, pos, d_model]'
    """
    dims = named_dims(model)
    n_pos = _probe_length(dims)
    tokens = torch.full((1, n_pos), _probe_token(model), dtype=torch.long, device=model.device)
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(tokens)
    value_names = {1: "batch", n_pos: "pos"} | {v: k for k, v in reversed(list(dims.items()))}
    rows = []
    for name, act in cache.items():
        generic = re.sub(r"^blocks\.(\d+)\.", "blocks.{i}.", name)
        layer = int(name.split(".")[1]) if generic != name else None
        symbolic = [value_names.get(s, str(s)) for s in act.shape]
        if symbolic[-1] == "batch":  # a size-1 trailing dim is a norm scale, not a batch
            symbolic[-1] = "1"
        rows.append(
            {
                "name": name,
                "layer": layer,
                "component": _component(generic),
                "shape": "[" + ", ".join(symbolic) + "]",
                "description": _describe(generic, layer),
            }
        )
    frame = pd.DataFrame(rows)
    frame["layer"] = frame["layer"].astype("Int64")
    return frame


def named_dims(model: HookedLlama) -> dict[str, int]:
    """The model's dimensions by TransformerLens name: ``d_model``, ``d_mlp``, ``d_vocab`` ..."""
    c = model.hf_model.config
    d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    # Order matters when two dimensions are equal: the first name wins.
    return {
        "d_model": c.hidden_size,
        "d_mlp": c.intermediate_size,
        "d_vocab": c.vocab_size,
        "n_heads": c.num_attention_heads,
        "n_kv_heads": c.num_key_value_heads,
        "d_head": d_head,
    }


def _probe_length(dims: dict[str, int]) -> int:
    # A prompt length equal to no model dimension, so each axis can be named from its size.
    n = 5
    while n in dims.values():
        n += 1
    return n


def _probe_token(model: HookedLlama) -> int:
    tok = model.tokenizer
    for candidate in (getattr(tok, "bos_token_id", None), getattr(tok, "unk_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _component(generic: str) -> str:
    path = generic.removeprefix("blocks.{i}.")
    parts = path.split(".")[:-1]  # drop the hook_* leaf
    return ".".join(parts) if parts else ("block" if generic.startswith("blocks") else "model")


def _describe(generic: str, layer: int | None) -> str:
    if generic in DESCRIPTIONS:
        return DESCRIPTIONS[generic].replace("{i}", str(layer))
    path = generic.removeprefix("blocks.{i}.")
    leaf = path.split(".")[-1]
    if path == leaf and layer is not None:
        return f"{'input to' if leaf == 'hook_in' else 'output of'} block {layer}"
    component = _COMPONENT_NAMES.get(".".join(path.split(".")[:-1]), path)
    where = f" of block {layer}" if layer is not None else ""
    if leaf == "hook_in":
        return f"input to the {component}{where}"
    if leaf == "hook_out":
        return f"output of the {component}{where}"
    return f"{leaf.removeprefix('hook_')} of the {component}{where}"
