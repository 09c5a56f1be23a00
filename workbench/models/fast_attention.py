"""Fused attention (``scaled_dot_product_attention``) for the bridge when nobody looks inside it.

TransformerLens's ``PositionEmbeddingsAttentionBridge.forward`` computes attention by hand
(``q @ k^T``, mask, softmax, ``@ v``) so that ``hook_attn_scores`` and ``hook_pattern`` can see
the scores and the pattern. That costs a ``[batch, heads, pos, pos]`` score tensor per layer and
makes an unhooked forward about as slow as Hugging Face's eager attention.

:func:`enable_sdpa_when_unhooked` wraps each block's attention *instance* (the TransformerLens
class is not touched) so that a call where neither ``hook_attn_scores`` nor ``hook_pattern`` has
anything attached (no forward or backward hook, which includes the caching hooks
``run_with_cache`` adds) computes the same attention with
``torch.nn.functional.scaled_dot_product_attention``. Every other hook of the attention
(``hook_in``, ``hook_q/k/v``, ``hook_cos/sin``, ``hook_rot_q/k``, ``hook_z``, ``hook_out``) fires
on the same tensors, in the same order, as in the original forward; only the two hooks that
nobody listens to are skipped. SDPA gets the additive mask the original adds to its scores (HF's
float mask as it is, anything else through the original's own ``_apply_reconstruct_attention_mask``),
so causal and padding masks, fully masked rows included, and KV-cache decode steps (queries
fewer than keys) give the same result. SDPA has a backward, so gradients (attribution patching,
backward hooks on other hook points) flow through the fused path too.

:func:`workbench.load_model` switches it on by default (``fast_attention=True``): the decision is
made per layer and per call, so a hook on one layer's pattern runs that layer eagerly and leaves
every other layer fused. ``load_model(..., fast_attention=False)``, ``model.fast_attention =
False`` or ``with model.eager_attention():`` (:func:`eager_while`) give the original attention
everywhere.

Anything the fused path was not written for goes to the original forward, unchanged: a hook on
either hook point (or a global module hook), training with dropout, TransformerLens's
compatibility mode, ``use_split_qkv_input`` / ``use_attn_in`` / ``use_attn_result``, a mask that
is not a 4D HF mask, q/k norms, gated or scaled projections, softcapping, attention sinks,
sliding windows, partial or interleaved RoPE, and half-precision activations (unless
``low_precision=True``: SDPA keeps the probabilities in fp32 where the original rounds them to
the model dtype, which would make a no-op hook on ``hook_pattern`` change bf16 logits).

The results agree with the original to floating-point rounding, not bit for bit (SDPA sums in a
different order): on SmolLM2-135M in fp32 the logits move by about 1e-4 on values of order 10,
the same distance as between HF's own eager and SDPA attention; against HF's SDPA attention the
fused path is closer still.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Any, Iterator

import torch
import torch.nn.functional as F

_ATTR = "_workbench_sdpa"  # marks a wrapped attention bridge; holds the enable options
_FULL_PRECISION = (torch.float32, torch.float64)


def enable_sdpa_when_unhooked(bridge: Any, *, low_precision: bool = False) -> int:
    """Give every block's attention a fused path for calls where its internals are unhooked.

    Args:
        bridge: a ``TransformerBridge`` (``model.bridge``).
        low_precision: also use the fused path for bf16/fp16 activations.

    Returns:
        The number of attention modules wrapped (0 when none is a plain
        ``PositionEmbeddingsAttentionBridge``, e.g. another architecture). Calling it again
        is harmless.
    """
    count = 0
    for attn in _attention_bridges(bridge):
        _wrap(attn, low_precision)
        count += 1
    return count


def disable_sdpa_when_unhooked(bridge: Any) -> None:
    """Undo :func:`enable_sdpa_when_unhooked`: every attention runs the original forward."""
    for attn in _attention_bridges(bridge):
        _unwrap(attn)


@contextmanager
def eager_while(bridge: Any) -> Iterator[None]:
    """The original (eager) attention in every layer for the duration of the block.

    For comparisons against eager references, or to rule the fused path out while debugging;
    the layers that had the fused path get it back afterwards, even on error.
    """
    removed = [(attn, attn.__dict__[_ATTR]) for attn in _attention_bridges(bridge) if sdpa_enabled(attn)]
    for attn, _ in removed:
        _unwrap(attn)
    try:
        yield
    finally:
        for attn, options in removed:
            _wrap(attn, options["low_precision"])


@contextmanager
def sdpa_while(bridge: Any) -> Iterator[None]:
    """Fused attention (as :func:`enable_sdpa_when_unhooked`) for the duration of the block.

    Attentions that already had it keep it afterwards; the others get their original forward
    back. Evaluations use this: they read only logits, and a hook on ``hook_pattern`` or
    ``hook_attn_scores`` (an attention study running under the eval) still takes the original
    path, so it sees what it always sees.
    """
    added = [attn for attn in _attention_bridges(bridge) if not sdpa_enabled(attn)]
    for attn in added:
        _wrap(attn, low_precision=False)
    try:
        yield
    finally:
        for attn in added:
            _unwrap(attn)


def sdpa_enabled(attn: Any) -> bool:
    """Whether ``attn`` (one block's attention bridge) has the fused path."""
    return _ATTR in attn.__dict__


def _wrap(attn: Any, low_precision: bool) -> None:
    attn.__dict__[_ATTR] = {"low_precision": low_precision}
    # An instance attribute shadows the class's forward for this module only.
    # (GeneralizedComponent.__setattr__ would pass `forward` on to the HF module, so the
    # instance dict is written directly.)
    attn.__dict__["forward"] = types.MethodType(_forward, attn)


def _unwrap(attn: Any) -> None:
    attn.__dict__.pop("forward", None)
    attn.__dict__.pop(_ATTR, None)


def _attention_bridges(bridge: Any):
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    for block in getattr(bridge, "blocks", ()):
        attn = block._modules.get("attn")
        # Exactly this class: a subclass may override parts of the forward we reproduce.
        if type(attn) is PositionEmbeddingsAttentionBridge:
            yield attn


def _forward(self, *args: Any, **kwargs: Any) -> Any:
    original = type(self).forward.__get__(self)
    plan = _fused_plan(self, args, kwargs)
    if plan is None:
        return original(*args, **kwargs)
    return _fused_forward(self, *plan)


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(
        module.fwd_hooks
        or module.bwd_hooks
        or module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _global_module_hooks() -> bool:
    from torch.nn.modules import module as m

    return bool(
        m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def _fused_plan(self, args: tuple, kwargs: dict):
    """``(hidden_states, cos, sin, attention_mask, kwargs)`` if the fused path applies, else None.

    Decided before anything runs, so that falling back never fires a hook twice.
    """
    if _has_hooks(self.hook_attn_scores) or _has_hooks(self.hook_pattern):
        return None
    if _global_module_hooks():
        return None
    hf_attn = self._modules.get("_original_component")
    if hf_attn is None or self.compatibility_mode:
        return None

    # Inputs: hidden_states (first positional or keyword), RoPE (cos, sin), a 4D HF mask or none.
    kwargs = dict(kwargs)
    if "hidden_states" in kwargs:
        if args:
            return None
        hidden_states = kwargs.pop("hidden_states")
    elif len(args) == 1 and isinstance(args[0], torch.Tensor):
        hidden_states = args[0]
    else:
        return None
    position_embeddings = kwargs.pop("position_embeddings", None)
    attention_mask = kwargs.pop("attention_mask", None)
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        return None
    if hidden_states.dtype not in _FULL_PRECISION and not self.__dict__[_ATTR]["low_precision"]:
        return None
    if attention_mask is not None and (
        not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 4
    ):
        return None
    if not (isinstance(position_embeddings, tuple) and len(position_embeddings) == 2):
        return None
    cos, sin = position_embeddings
    head_dim = getattr(hf_attn, "head_dim", None)
    if head_dim is None or cos.shape[-1] != head_dim or sin.shape[-1] != head_dim:
        return None  # partial / half-width rotary

    # Caches (past_key_values / layer_past, or HF >= 5's `cache`, see kv_cache.py) go through
    # the same self._update_kv_cache call as in the original; the mask below is built for the
    # extended key length, so decode steps with earlier positions cached stay fused.
    if kwargs.get("cycle_offset"):
        return None

    # Training with dropout, and everything the original forward does beyond plain LLaMA.
    if self.training and getattr(hf_attn, "attention_dropout", 0.0):
        return None
    cfg = self.config
    for flag in (
        "use_split_qkv_input", "use_attn_in", "use_attn_result", "gated_q_proj",
        "rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "qk_norm_after_rope",
    ):
        if getattr(cfg, flag, False):
            return None
    for name in ("q_norm", "k_norm", "gate"):
        if name in (self.submodules or {}) or self._modules.get(name) is not None:
            return None
    if "hook_k" not in self.hook_aliases:  # an owned, scaled hook_k (Falcon-H1)
        return None
    for attr in ("key_multiplier", "attn_logit_softcapping", "sinks", "sliding_window"):
        if getattr(hf_attn, attr, None) is not None:
            return None
    hf_config = getattr(hf_attn, "config", None)
    if getattr(hf_config, "clip_qkv", None) is not None:
        return None
    if getattr(hf_config, "sliding_window", None) is not None:
        return None
    rope_params = getattr(hf_config, "rope_parameters", None)
    if isinstance(rope_params, dict) and rope_params.get("llama_4_scaling_beta") is not None:
        return None
    if type(self)._pre_output_projection is not _base_pre_output_projection():
        return None
    return hidden_states, cos, sin, attention_mask, kwargs


def _additive_mask(self, attention_mask, query_states, q_len: int, kv_len: int):
    """The mask the original adds to its scores, ``[batch or 1, heads or 1, q, kv]``."""
    if (
        attention_mask is not None
        and attention_mask.dtype == query_states.dtype
        and attention_mask.shape[-2:] == (q_len, kv_len)
    ):
        # A float HF mask of the right size: the original adds it to the scores as it is
        # (outside compatibility mode, which takes the original path anyway).
        return attention_mask
    # Anything else (no mask, bool, other dtype or size): the original's own function applied
    # to zeros of one head, which broadcasts over heads exactly as the scores do.
    zeros = query_states.new_zeros((1, 1, q_len, kv_len))
    return self._apply_reconstruct_attention_mask(
        attn_scores=zeros, attention_mask=attention_mask, seq_len=kv_len, q_seq_len=q_len
    )


def _base_pre_output_projection():
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
        PositionEmbeddingsAttentionBridge,
    )

    return PositionEmbeddingsAttentionBridge._pre_output_projection


def _fused_forward(self, hidden_states, cos, sin, attention_mask, kwargs):
    """The original forward for plain LLaMA attention, with SDPA in place of the explicit
    scores -> hook_attn_scores -> softmax -> hook_pattern -> @ v sequence."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    hf_attn = self.original_component
    hidden_states = self.hook_in(hidden_states)
    input_shape = hidden_states.shape[:-1]
    head_dim = hf_attn.head_dim
    hidden_shape = (*input_shape, -1, head_dim)

    # LinearBridges: hook_q / hook_k / hook_v fire here.
    query_states = self.q(hidden_states).view(hidden_shape).transpose(1, 2)
    key_states = self.k(hidden_states).view(hidden_shape).transpose(1, 2)
    value_states = self.v(hidden_states).view(hidden_shape).transpose(1, 2)

    cos, sin = self._apply_position_embedding_hooks((cos, sin))  # hook_cos / hook_sin
    query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
    if hasattr(self, "hook_rot_q"):
        query_states = self.hook_rot_q(query_states)
    if hasattr(self, "hook_rot_k"):
        key_states = self.hook_rot_k(key_states)

    # Same cache call as the original: appends to the cache and returns all cached positions.
    key_states, value_states = self._update_kv_cache(key_states, value_states, **kwargs)

    kv_len, q_len = key_states.shape[-2], query_states.shape[-2]
    mask = _additive_mask(self, attention_mask, query_states, q_len, kv_len)

    groups = getattr(hf_attn, "num_key_value_groups", 1)
    # SDPA's own GQA saves the repeat_kv copies on CPU. With a mask, CUDA would run it on the
    # slow math kernel (see transformers' use_gqa_in_sdpa), so there K/V are expanded as in the
    # original.
    native_gqa = groups > 1 and query_states.device.type == "cpu"
    if groups > 1 and not native_gqa:
        key_states = repeat_kv(key_states, groups)
        value_states = repeat_kv(value_states, groups)
    attn_output = F.scaled_dot_product_attention(
        query_states,
        key_states,
        value_states,
        attn_mask=mask,
        dropout_p=0.0,  # training with dropout takes the original path
        scale=getattr(hf_attn, "scaling", head_dim**-0.5),
        **({"enable_gqa": True} if native_gqa else {}),
    )
    attn_output = attn_output.transpose(1, 2).contiguous().reshape(*input_shape, -1)
    attn_output = self._pre_output_projection(attn_output)

    o_weight = getattr(getattr(self._modules.get("o"), "original_component", None), "weight", None)
    if (
        isinstance(o_weight, torch.Tensor)
        and o_weight.dtype.is_floating_point
        and attn_output.dtype != o_weight.dtype
    ):
        attn_output = attn_output.to(dtype=o_weight.dtype)
    attn_output = self.hook_out(self.o(attn_output))  # hook_z is o.hook_in
    return attn_output, None
