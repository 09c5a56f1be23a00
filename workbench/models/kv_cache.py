"""Make the bridge's attention use the KV cache that transformers 5 hands it.

Since transformers 5, ``LlamaDecoderLayer`` passes the key/value cache to its attention as
``cache=``. TransformerLens 4.3's ``AttentionBridge._update_kv_cache`` reads only
``past_key_values`` (and ``layer_past``), so under transformers 5 the cache stays empty: each
decode step of ``generate`` attends to the new token alone and greedy decoding drifts after the
first token ("Paris-----"). :func:`route_kv_cache` wraps each attention bridge *instance*
(the TransformerLens class is not touched) so that ``cache`` is read as ``past_key_values``.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def route_kv_cache(bridge: Any) -> int:
    """Pass ``cache=`` on as ``past_key_values=`` in every block's attention; returns the count."""
    count = 0
    for block in getattr(bridge, "blocks", ()):
        attn = block._modules.get("attn")
        if attn is None or not hasattr(type(attn), "_update_kv_cache"):
            continue
        # GeneralizedComponent.__setattr__ would forward the attribute to the HF module.
        attn.__dict__["_update_kv_cache"] = types.MethodType(_update_kv_cache, attn)
        count += 1
    return count


def _update_kv_cache(self, k: torch.Tensor, v: torch.Tensor, **kwargs: Any):
    if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None:
        cache = kwargs.get("cache")
        if cache is not None and hasattr(cache, "update"):
            kwargs["past_key_values"] = cache
    return type(self)._update_kv_cache(self, k, v, **kwargs)
