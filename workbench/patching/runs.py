"""Forward passes that can restart at any block, reusing what an earlier run computed.

A patch at layer ``L`` cannot change blocks ``0 .. L-1``: their outputs are those of the
unpatched run. :class:`RecordedRun` runs the prompts once and keeps what enters each block (the
hidden states, and the attention mask / rotary embeddings the HF model hands every block);
:meth:`RecordedRun.resume` then runs only blocks ``L ..`` on a batch of copies of that input,
through the bridge's own block modules, so every hook (patches, steering) fires as in a full
forward.

The recorded input is taken *before* the block's ``hook_resid_pre`` runs (a torch forward
pre-hook on the block), so a hook on ``hook_resid_pre`` (a steering vector, a patch) is applied
once in the resumed run, exactly as in a full forward.

Attention is causal, so a patch at position ``p`` cannot change positions ``< p`` either. The
recorded run also keeps each block's keys and values as its attention used them (after rotary,
one per KV head under GQA), through a KV-cache object handed to every block: the cache's
``update`` is where the attention hands over its final K/V. :meth:`RecordedRun.resume_suffix`
then runs only positions ``p .. T-1`` and hands every block a cache holding the recorded K/V of
positions ``< p``, which the attention puts in front of the new positions' K/V; the queries at
``p ..`` see exactly the keys and values of the full forward.
"""

from __future__ import annotations

from typing import Any

import torch

# The block's KV-cache arguments are dropped: a resumed run is a fresh forward.
_DROPPED_KWARGS = ("cache", "past_key_values", "layer_past", "use_cache")
# Block arguments with a position axis, and which axis: a suffix run takes their last positions.
# (The mask's query axis; the key axis keeps every position, the prefix's keys come from the cache.)
_POSITION_AXIS = {"attention_mask": -2, "position_embeddings": -2, "position_ids": -1, "cache_position": -1}


class RecordedRun:
    """One forward over ``tokens`` ``[batch, pos]`` with each block's input kept.

    Attributes:
        tokens: the prompts' tokens.
        logits: the run's logits ``[batch, pos, d_vocab]``.
        cache: activations of the hooks named in ``names`` (``{name: tensor}``).
        block_inputs: ``[n_layers]`` hidden states entering each block, ``[batch, pos, d_model]``.
    """

    def __init__(self, model, tokens: torch.Tensor, names: list[str] = ()):
        self.model = model
        self.tokens = tokens
        self.block_inputs: list[torch.Tensor | None] = [None] * len(model.bridge.blocks)
        self._block_kwargs: dict[str, Any] | None = None
        # Per block: the attention's keys and values [batch, kv_heads, pos, head_dim].
        self.keys_values: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.bridge.blocks)
        self._kv_recorder = _KVRecorder(self.keys_values)
        handles = [
            block.register_forward_pre_hook(self._recorder(i), with_kwargs=True)
            for i, block in enumerate(model.bridge.blocks)
        ]
        try:
            with torch.no_grad():
                wanted = set(names)
                self.logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
        finally:
            for handle in handles:
                handle.remove()
            self._kv_recorder.inner = None  # the forward's own cache is not needed afterwards
        self.cache = {name: cache[name] for name in names}
        if any(x is None for x in self.block_inputs):
            raise RuntimeError("a block did not run during the recorded forward; cannot resume from it")

    def _recorder(self, index: int):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.block_inputs[index] = hidden.detach()
            if self._block_kwargs is None:
                self._block_kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS and k != "hidden_states"}
            if kwargs.get("past_key_values") is not None or kwargs.get("layer_past") is not None:
                return None  # not the plain forward this was written for: no K/V recorded
            # The bridge's forward hands every block an (empty) DynamicCache; the recorder
            # stands in front of it, passing every call on.
            self._kv_recorder.block, self._kv_recorder.inner = index, kwargs.get("cache")
            return args, {**kwargs, "cache": self._kv_recorder}

        return record

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def can_resume_suffix(self) -> bool:
        """Whether :meth:`resume_suffix` applies: every block's K/V was recorded, and every
        argument the blocks get with a position axis is one it knows how to cut."""
        n_pos = self.tokens.shape[1]
        if any(kv is None or kv[0].shape[-2] != n_pos for kv in self.keys_values):
            return False  # a block's K/V missing, or covering more than these positions
        for key, value in self._block_kwargs.items():
            if key not in _POSITION_AXIS and any(
                isinstance(t, torch.Tensor) and t.dim() > 0 for t in (value if isinstance(value, tuple) else (value,))
            ):
                return False  # an unknown tensor argument might be per position
        return True

    def resume_suffix(self, start: int, entries: list[tuple[int, int]]) -> torch.Tensor:
        """Logits of positions ``start ..`` for copies of the batch that join at given blocks.

        ``entries`` is ``[(layer, copies), ...]`` by increasing layer: ``copies`` copies of the
        batch join the run at block ``layer`` (its recorded input, positions ``start ..``), after
        the rows of earlier entries, so a pass covers cells of several layers at one position.
        Row ``offset + c * batch + j``, with ``offset`` the rows of the earlier entries, is copy
        ``c`` of prompt ``j``. Every block attends to the recorded K/V of positions ``< start``.

        Returns:
            Logits ``[rows, pos - start, d_vocab]``; positions ``< start`` are those of
            :attr:`logits` (a patch at ``start`` or later cannot change them).
        """
        if not self.can_resume_suffix:
            raise RuntimeError("this run recorded no keys/values for every block; use resume()")
        layers = [layer for layer, _ in entries]
        if not layers or layers != sorted(set(layers)):
            raise ValueError(f"entries must be by strictly increasing layer, got {layers}")
        joining = dict(entries)
        n_pos = self.tokens.shape[1]
        kwargs = {k: _take_positions(v, _POSITION_AXIS.get(k), start, n_pos) for k, v in self._block_kwargs.items()}
        bridge = self.model.bridge
        hidden = None
        with torch.no_grad():
            for index in range(layers[0], len(bridge.blocks)):
                if index in joining:
                    new = self.block_inputs[index][:, start:].repeat(joining[index], 1, 1)
                    hidden = new if hidden is None else torch.cat([hidden, new])
                    copies = hidden.shape[0] // self.batch
                    block_kwargs = {k: _tile(v, self.batch, copies) for k, v in kwargs.items()}
                    block_kwargs["use_cache"] = False
                cache = _PrefixKV(self.keys_values[index], start, copies)
                out = bridge.blocks[index](hidden, **block_kwargs, cache=cache)
                if cache.updates != 1:
                    raise RuntimeError(f"block {index}'s attention did not read the key/value cache; "
                                       "the prefix cannot be reused (use resume())")
                hidden = out[0] if isinstance(out, tuple) else out
            return bridge.unembed(bridge.ln_final(hidden))

    def resume(self, layer: int, copies: int) -> torch.Tensor:
        """Logits of ``copies`` stacked copies of the batch, run from block ``layer`` on.

        Row ``c * batch + j`` is copy ``c`` of prompt ``j``. Hooks active on the model (patch
        hooks that tell the copies apart by row, steering) apply to the resumed blocks.
        """
        bridge = self.model.bridge
        hidden = self.block_inputs[layer].repeat(copies, 1, 1)
        kwargs = {k: _tile(v, self.batch, copies) for k, v in self._block_kwargs.items()}
        kwargs["use_cache"] = False
        with torch.no_grad():
            for block in bridge.blocks[layer:]:
                out = block(hidden, **kwargs)
                hidden = out[0] if isinstance(out, tuple) else out
            return bridge.unembed(bridge.ln_final(hidden))


class _KVRecorder:
    """Stands in front of the run's KV cache (or none) and keeps the K/V each block's attention
    uses, which for a plain forward are the keys and values of exactly its positions."""

    def __init__(self, store: list):
        self.store = store
        self.block = 0  # set by the block's pre-hook just before the block runs
        self.inner = None  # the cache the forward handed the block, if any

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.inner.get_seq_length(layer_idx) if self.inner is not None else 0

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int = 0, *args, **kwargs):
        if self.inner is not None:
            keys, values = self.inner.update(keys, values, layer_idx, *args, **kwargs)
        self.store[self.block] = (keys.detach(), values.detach())
        return keys, values

    def __getattr__(self, name: str):
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class _PrefixKV:
    """A KV cache holding one block's recorded K/V of positions ``< start``, for ``copies`` copies."""

    def __init__(self, keys_values: tuple[torch.Tensor, torch.Tensor], start: int, copies: int):
        self.prefix = [t[:, :, :start] for t in keys_values]
        self.start, self.copies = start, copies
        self.updates = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.start

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int = 0, *args, **kwargs):
        self.updates += 1
        if self.start == 0:
            return keys, values
        old_keys, old_values = (t.to(keys.dtype).repeat(self.copies, 1, 1, 1) for t in self.prefix)
        return torch.cat([old_keys, keys], dim=2), torch.cat([old_values, values], dim=2)


def _take_positions(value: Any, axis: int | None, start: int, n_pos: int) -> Any:
    """Positions ``start ..`` of a block argument along ``axis`` (tuples: of each member)."""
    if isinstance(value, tuple):
        return tuple(_take_positions(v, axis, start, n_pos) for v in value)
    if axis is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.shape[axis] != n_pos:
        raise RuntimeError(f"a block argument of shape {tuple(value.shape)} has no position axis at {axis}")
    return value.narrow(axis % value.dim(), start, n_pos - start)


def _tile(value: Any, batch: int, copies: int) -> Any:
    """Repeat a per-prompt tensor (leading dim ``batch``) ``copies`` times along that dim."""
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, copies) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    return value  # shared across the batch (leading dim 1): broadcasts
