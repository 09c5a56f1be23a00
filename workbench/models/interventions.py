"""Steering and ablation: temporary interventions on the model, as ``with`` blocks.

Each context adds TransformerLens hooks for the duration of the block and removes exactly those
hooks when it ends, also on error; contexts nest and compose (two steers at once add both
vectors). They act on every forward the model runs inside the block: plain calls,
``run_with_cache``, ``generate`` (every decoding step) and eval suites. The open contexts are
listed by ``model.active_interventions()``, which eval manifests record.

>>> with model.steer(direction, layer=12, alpha=4.0):                  # doctest: +SKIP
...     model.generate("The nurse said that")
>>> with model.ablate(direction, layers=range(8, 20)):                 # doctest: +SKIP
...     logits = model("The nurse said that")
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from workbench.common.errors import PatchingError
from workbench.models.direction import Direction
from workbench.models.sites import get_site, site_of_hook


def unit_vector(model, direction: Any) -> tuple[torch.Tensor, str, str | None]:
    """``(unit vector [d_model], name, site)`` for a Direction, tensor or array.

    ``site`` is the residual site a :class:`~workbench.Direction` was found at (from its hook
    name, e.g. ``resid_post``), or None for a bare vector.
    """
    site = None
    if isinstance(direction, Direction):
        vector, name = direction.torch(), f"{direction.concept}/{direction.method}@{direction.hook}"
        own = site_of_hook(direction.hook)
        site = own.name if own else None
    elif isinstance(direction, (torch.Tensor, np.ndarray, list, tuple)):
        vector, name = torch.as_tensor(np.asarray(direction, dtype=np.float32)).reshape(-1), "vector"
    else:
        raise PatchingError(f"direction: expected a wb.Direction, tensor or array, got {type(direction).__name__}")
    d_model = model.cfg.d_model
    if vector.numel() != d_model:
        raise PatchingError(f"direction has {vector.numel()} dimensions; the model's residual stream has {d_model}")
    norm = float(vector.norm())
    if not np.isfinite(norm) or norm == 0:
        raise PatchingError(f"direction has norm {norm}: cannot be made a unit vector")
    return vector / norm, name, site


def steer(model, direction: Any, layer: int | None = None, alpha: float = 1.0, site: str | None = None):
    """Add ``alpha`` times the unit ``direction`` to the residual stream at one layer.

    Args:
        direction: a :class:`~workbench.Direction` (e.g. from ``ProbeResult.direction`` or
            ``load_directions``), a tensor or an array ``[d_model]``; it is scaled to unit norm,
            so ``alpha`` is the length of the added vector.
        layer: the block; default: the Direction's own layer.
        alpha: the strength (negative pushes the other way).
        site: ``resid_pre``, ``resid_post`` (default: the Direction's own site, else
            ``resid_post``), ``attn_out`` or ``mlp_out``. (Not ``resid_mid``: on the bridge
            that hook is the MLP norm's input, and a vector added there would skip the
            residual connection.)

    Returns:
        A context manager; the vector is added at every position of every forward inside it.
    """
    vector, name, own_site = unit_vector(model, direction)
    layer = _layer(model, direction, layer)
    hook = _hook(site or own_site or "resid_post", layer)
    alpha = float(alpha)

    def add(activation: torch.Tensor, hook) -> torch.Tensor:
        return activation + alpha * vector.to(activation.device, activation.dtype)

    record = {"kind": "steer", "direction": name, "hook": hook, "layer": layer, "alpha": alpha}
    return _intervention(model, [(hook, add)], record)


def ablate(model, direction: Any, layers: Iterable[int] | None = None, site: str | None = None):
    """Project the unit ``direction`` out of the residual stream at each of ``layers``.

    ``x <- x - (x . d) d`` at every position: the component along ``d`` becomes zero
    (directional ablation, as in Arditi et al. 2024's refusal-direction work).

    Args:
        layers: blocks to ablate at (default: all).
        site: as in :func:`steer`.
    """
    vector, name, own_site = unit_vector(model, direction)
    layers = list(range(model.cfg.n_layers)) if layers is None else [_check_layer(model, l) for l in layers]
    if not layers:
        raise PatchingError("layers: empty selection")
    hooks = [_hook(site or own_site or "resid_post", layer) for layer in layers]

    def project_out(activation: torch.Tensor, hook) -> torch.Tensor:
        d = vector.to(activation.device, activation.dtype)
        return activation - (activation @ d).unsqueeze(-1) * d

    record = {"kind": "ablate_direction", "direction": name, "hooks": hooks, "layers": layers}
    return _intervention(model, [(h, project_out) for h in hooks], record)


def ablate_heads(model, heads: Sequence[tuple[int, int]], mode: str = "zero", reference=None):
    """Zero- or mean-ablate attention heads (their output ``z`` at every position).

    Args:
        heads: ``[(layer, head), ...]``.
        mode: ``"zero"`` or ``"mean"`` (the head's mean ``z`` over ``reference``'s tokens).
        reference: prompts (or tokens) the mean is taken over; required for ``mode="mean"``.
    """
    pairs = _pairs(model, heads, "heads", model.cfg.n_heads)
    return _ablate_units(model, pairs, mode, reference, "blocks.{layer}.attn.hook_z", "ablate_heads")


def ablate_neurons(model, neurons: Sequence[tuple[int, int]], mode: str = "zero", reference=None):
    """Zero- or mean-ablate MLP neurons (``blocks.L.mlp.hook_post[..., i]``).

    Args:
        neurons: ``[(layer, neuron), ...]``.
        mode, reference: as in :func:`ablate_heads`.
    """
    pairs = _pairs(model, neurons, "neurons", model.cfg.d_mlp)
    return _ablate_units(model, pairs, mode, reference, "blocks.{layer}.mlp.hook_post", "ablate_neurons")


def _ablate_units(model, pairs, mode, reference, template, kind):
    if mode not in ("zero", "mean"):
        raise PatchingError(f"mode={mode!r}; use 'zero' or 'mean'")
    by_layer: dict[int, list[int]] = {}
    for layer, unit in pairs:
        by_layer.setdefault(layer, []).append(unit)
    hooks = {layer: template.format(layer=layer) for layer in by_layer}
    means = {}
    if mode == "mean":
        if reference is None:
            raise PatchingError("mode='mean' needs reference= prompts to take the mean over")
        tokens = reference if isinstance(reference, torch.Tensor) else model.to_tokens(reference)
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, names_filter=list(hooks.values()))
        for layer, name in hooks.items():
            act = cache[name]
            means[layer] = act.reshape(-1, *act.shape[2:]).mean(0)  # over batch and positions

    def make(layer: int):
        units = torch.tensor(by_layer[layer])

        def ablate_hook(activation: torch.Tensor, hook) -> torch.Tensor:
            activation = activation.clone()
            if mode == "zero":
                activation[:, :, units] = 0
            else:
                activation[:, :, units] = means[layer][units].to(activation.device, activation.dtype)
            return activation

        return ablate_hook

    record = {"kind": kind, "mode": mode, "units": [list(p) for p in pairs]}
    return _intervention(model, [(hooks[layer], make(layer)) for layer in by_layer], record)


@contextlib.contextmanager
def _intervention(model, fwd_hooks: list, record: dict) -> Iterator[None]:
    model._interventions.append(record)
    try:
        with model.hooks(fwd_hooks):
            yield
    finally:
        model._interventions.remove(record)


def _layer(model, direction, layer: int | None) -> int:
    if layer is None:
        layer = getattr(direction, "layer", None)
        if layer is None:
            raise PatchingError("layer: required (the direction does not say which layer it belongs to)")
    return _check_layer(model, layer)


def _check_layer(model, layer) -> int:
    n = model.cfg.n_layers
    if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < n:
        raise PatchingError(f"layer {layer!r} is out of range: the model has layers 0..{n - 1}")
    return int(layer)


def _hook(site: str, layer: int) -> str:
    return get_site(site, steerable=True).hook_name(layer)


def _pairs(model, items, argument: str, size: int) -> list[tuple[int, int]]:
    pairs = []
    for item in items:
        try:
            layer, unit = (int(x) for x in item)
        except (TypeError, ValueError):
            raise PatchingError(f"{argument}: expected (layer, index) pairs, got {item!r}") from None
        _check_layer(model, layer)
        if not 0 <= unit < size:
            raise PatchingError(f"{argument}: index {unit} at layer {layer} is out of range (0..{size - 1})")
        pairs.append((layer, unit))
    if not pairs:
        raise PatchingError(f"{argument}: empty selection")
    return pairs
