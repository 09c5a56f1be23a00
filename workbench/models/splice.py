"""Splicing a sparse autoencoder (or transcoder) into the model, with its latents as a hook point.

Inside ``with model.sae(sae):`` the activation at the SAE's hook is replaced by
``decode(z') + error``, where ``z = encode(x)``, ``z'`` is ``z`` after any hooks on
``<hook>.sae.hook_acts`` and ``error = x - decode(z)`` is taken on the clean latents, so the
output is unchanged until a latent is edited (bit for bit: the activation is computed as
``x + decode(z') - decode(z)``). As in SAELens, the error term carries no gradient: gradients
reach the input through the SAE (``encode``, ``decode``), so attribution through latents works.

The latents are a TransformerLens ``HookPoint`` registered on the bridge and listed in the hook
catalogue for the duration of the block, so ``run_with_cache``, ``run_with_hooks``,
``model.hooks``, ``cache_activations`` and patching read and edit them by name. A transcoder
(``sae.hook_out`` differs from ``sae.hook``) reads the input hook and writes the output hook.

This module duck-types the SAE (``encode``, ``decode``, ``hook``, optional ``hook_out`` and
``d_sae``), so the model floor does not import ``workbench.features``.

>>> with model.sae(sae):                                              # doctest: +SKIP
...     logits, cache = model.run_with_cache("The cat", names_filter="*.sae.hook_acts")
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import pandas as pd
import torch
from transformer_lens.hook_points import HookPoint

from workbench.common.errors import PatchingError

SUFFIX = ".sae.hook_acts"


def latents_hook_name(hook: str) -> str:
    """The hook point name of the latents of an SAE spliced at ``hook``."""
    return f"{hook}{SUFFIX}"


@contextlib.contextmanager
def splice_sae(model, sae: Any, hook: str | None = None, *, keep_error: bool = True) -> Iterator[str]:
    """Context: ``sae`` spliced in at ``hook`` (default ``sae.hook``); yields the latents' hook name.

    Args:
        model: a :class:`~workbench.HookedLlama`.
        sae: anything with ``encode(x) -> z`` and ``decode(z) -> x_hat`` (a
            :class:`~workbench.features.SparseAutoencoder`, an SAELens SAE ...); ``sae.hook_out``,
            if present and different, makes it a transcoder.
        hook: the input hook, if the SAE does not record one (or to override it).
        keep_error: keep the error term (default). ``False`` replaces the activation by the bare
            reconstruction ``decode(z')``, as in the "spliced" loss of the SAE quality metrics.

    Raises:
        PatchingError: no hook, a hook the model does not have, or an SAE already spliced there.
    """
    hook_in = hook or getattr(sae, "hook", None)
    if not hook_in:
        raise PatchingError("splice_sae: the SAE records no hook; pass hook=")
    hook_out = getattr(sae, "hook_out", None) if hook is None else None
    hook_out = hook_out or hook_in
    names = set(model.hook_names())  # builds the catalogue before anything is registered
    for name in {hook_in, hook_out}:
        if name not in names:
            raise PatchingError(f"splice_sae: the model has no hook {name!r}")
    point_name = latents_hook_name(hook_in)
    registry = model.bridge._hook_registry
    if point_name in registry:
        raise PatchingError(f"splice_sae: an SAE is already spliced at {hook_in!r}")
    point = HookPoint()
    point.name = point_name
    latents: dict[str, torch.Tensor] = {}

    def read(activation: torch.Tensor, hook) -> None:
        # Transcoders: the latents come from the input hook, the output hook is rewritten.
        latents["z"] = sae.encode(activation)

    def write(activation: torch.Tensor, hook) -> torch.Tensor:
        z = sae.encode(activation) if hook_out == hook_in else latents.pop("z")
        edited = point(z)
        if not keep_error:
            return sae.decode(edited).to(activation.dtype)
        recon = sae.decode(edited)
        clean = recon.detach() if edited is z else sae.decode(z).detach()
        return activation.detach() + (recon - clean).to(activation.dtype)

    fwd = [(hook_out, write)] if hook_out == hook_in else [(hook_in, read), (hook_out, write)]
    record = {"kind": "sae", "hook": hook_in, "hook_out": hook_out, "latents": point_name,
              "d_sae": getattr(sae, "d_sae", None), "keep_error": keep_error}
    catalogue = model._catalogue
    registry[point_name] = point
    row = _catalogue_row(catalogue, hook_in, point_name, getattr(sae, "d_sae", None))
    model._catalogue = pd.concat([catalogue, pd.DataFrame([row])],
                                 ignore_index=True).astype({"layer": "Int64"})
    model._interventions.append(record)
    try:
        with model.hooks(fwd):
            yield point_name
    finally:
        model._interventions.remove(record)
        point.remove_hooks(including_permanent=True)
        registry.pop(point_name, None)
        model._catalogue = catalogue


def _catalogue_row(catalogue: pd.DataFrame, hook: str, name: str, d_sae: int | None) -> dict:
    # The width as a number, as the catalogue writes sizes that are no model dimension.
    row = catalogue[catalogue["name"] == hook].iloc[0]
    return {"name": name, "layer": row["layer"], "component": f"{row['component']}.sae",
            "shape": f"[batch, pos, {d_sae if d_sae is not None else 'd_sae'}]",
            "description": f"latents of the SAE spliced at {hook}"}
