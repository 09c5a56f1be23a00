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
"""

from __future__ import annotations

from typing import Any

import torch

# The block's KV-cache arguments are dropped: a resumed run is a fresh forward.
_DROPPED_KWARGS = ("cache", "past_key_values", "layer_past", "use_cache")


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
        self.cache = {name: cache[name] for name in names}
        if any(x is None for x in self.block_inputs):
            raise RuntimeError("a block did not run during the recorded forward; cannot resume from it")

    def _recorder(self, index: int):
        def record(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.block_inputs[index] = hidden.detach()
            if self._block_kwargs is None:
                self._block_kwargs = {k: v for k, v in kwargs.items() if k not in _DROPPED_KWARGS and k != "hidden_states"}

        return record

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

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


def _tile(value: Any, batch: int, copies: int) -> Any:
    """Repeat a per-prompt tensor (leading dim ``batch``) ``copies`` times along that dim."""
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, copies) for v in value)
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch and batch > 1:
        return value.repeat(copies, *([1] * (value.dim() - 1)))
    return value  # shared across the batch (leading dim 1): broadcasts
