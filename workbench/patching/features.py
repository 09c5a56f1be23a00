"""Patching sparse-autoencoder latents: which features carry a behaviour from one prompt to another?

``feature_patch`` splices an SAE in (``model.sae``, error term kept, so the unpatched runs are
the model's own) and treats every (position, latent) as a patching cell: the base run's latent
at that position is replaced by the source run's value and the metric recorded. Denoising (the
default) runs the corrupted prompt and patches in clean latents; noising is the reverse.

- ``method="exact"``: every cell is a forward pass, cells batched as copies of the prompts (as
  :func:`~workbench.patch_sweep` does). Only cells whose latent differs between the two runs
  are run: patching an equal value changes nothing, so the others are exactly the base value.
- ``method="attribution"``: the first-order estimate ``(z_source - z_base) . dM/dz`` from one
  backward pass through the latents (Marks et al. 2024, "Sparse Feature Circuits"; Syed et al.
  2023), for every cell at once. Use it to rank, and ``exact`` with ``features=`` to confirm.

The SAE is duck-typed (``encode``, ``decode``, ``hook``), so this floor does not import
``workbench.features``.

>>> table = wb.patching.feature_patch(model, sae, clean, corrupt, metric)  # doctest: +SKIP
>>> table.head()  # position, token, feature, base_act, source_act, value, effect  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.common.errors import PatchingError
from workbench.patching.metrics import Metric, evaluate_metric
from workbench.patching.result import MODES, normalise
from workbench.patching.sweep import _LOGITS_BUDGET_BYTES, _check_indices, paired_tokens

METHODS = ("exact", "attribution")


def feature_patch(
    model,
    sae: Any,
    clean,
    corrupt,
    metric: Metric,
    *,
    method: str = "exact",
    mode: str = "denoise",
    features: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    batch_size: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Patch SAE latents, one (position, latent) cell at a time, and record the metric.

    Args:
        model: a :class:`~workbench.HookedLlama`.
        sae: an SAE or transcoder (:class:`~workbench.features.SparseAutoencoder`, or anything
            ``model.sae`` splices).
        clean, corrupt, metric, mode: as in :func:`~workbench.patch_sweep` (prompts of equal
            token length, paired by index; the metric maps logits to one number).
        method: ``"exact"`` (a forward pass per cell) or ``"attribution"`` (the gradient estimate).
        features, positions: restrict the cells (default: every latent, every position).
        batch_size: cells per forward pass (exact; default: as many as fit a 256 MiB logits budget).
        progress: a progress bar (exact).

    Returns:
        One row per cell whose latent differs between the two runs (the others patch an equal
        value), largest ``|effect|`` first: ``position``, ``token`` (the base prompt's token
        there, of the first prompt), ``feature``, ``base_act`` / ``source_act`` (the
        latent, averaged over prompts), ``value`` (the metric with the cell patched, or its
        estimate) and ``effect`` (normalised as in :class:`PatchResult`: 1 = the whole
        clean-corrupt gap restored, 0 = none). ``attrs`` hold ``clean_value``,
        ``corrupt_value``, ``method``, ``mode``, ``hook`` and ``n_cells_differing``.
    """
    if method not in METHODS:
        raise PatchingError(f"method={method!r}; use one of {METHODS}")
    if mode not in MODES:
        raise PatchingError(f"mode={mode!r}; use one of {MODES}")
    clean_tokens, corrupt_tokens = paired_tokens(model, clean, corrupt)
    n_prompts, n_pos = clean_tokens.shape
    d_sae = _width(sae)
    positions = _check_indices("positions", positions, n_pos)
    features = _check_indices("features", features, d_sae)
    base_tokens = corrupt_tokens if mode == "denoise" else clean_tokens

    with model.sae(sae) as latents:
        with torch.no_grad():
            clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=[latents])
            corrupt_logits, corrupt_cache = model.run_with_cache(corrupt_tokens, names_filter=[latents])
        clean_value = evaluate_metric(metric, clean_logits)
        corrupt_value = evaluate_metric(metric, corrupt_logits)
        z_base, z_source = ((corrupt_cache, clean_cache) if mode == "denoise" else (clean_cache, corrupt_cache))
        z_base, z_source = z_base[latents].float(), z_source[latents].float()
        base_value = corrupt_value if mode == "denoise" else clean_value
        pos_index, feat_index = torch.tensor(positions), torch.tensor(features)
        differs = (z_source != z_base).any(0)[pos_index][:, feat_index]  # [positions, features]
        at_p, at_f = (t.tolist() for t in differs.nonzero(as_tuple=True))
        cells = [(positions[p], features[f]) for p, f in zip(at_p, at_f, strict=True)]
        if method == "exact":
            values = _exact(model, latents, cells, base_tokens, z_source, metric, batch_size, progress)
        else:
            grad = _latent_gradient(model, latents, base_tokens, metric)
            delta = ((z_source - z_base) * grad).sum(0)  # [pos, d_sae], summed over prompts
            values = [base_value + float(delta[p, f]) for p, f in cells]

    pieces = model.tokenizer.batch_decode([[int(t)] for t in base_tokens[0]])  # once per position
    at = torch.tensor(cells, dtype=torch.long).reshape(-1, 2)
    frame = pd.DataFrame({
        "position": at[:, 0].numpy(),
        "token": [pieces[p] for p, _ in cells],
        "feature": at[:, 1].numpy(),
        "base_act": z_base.mean(0)[at[:, 0], at[:, 1]].numpy(),
        "source_act": z_source.mean(0)[at[:, 0], at[:, 1]].numpy(),
        "value": values,
    })
    effect = normalise(torch.tensor(frame["value"].to_numpy(), dtype=torch.float64), clean_value, corrupt_value,
                       mode, stacklevel=3) if cells else torch.empty(0)
    frame["effect"] = effect.numpy()
    frame = frame.reindex(frame["effect"].abs().sort_values(ascending=False, kind="stable").index)
    frame = frame.reset_index(drop=True)
    frame.attrs.update({"clean_value": clean_value, "corrupt_value": corrupt_value, "method": method, "mode": mode,
                        "hook": latents, "n_cells_differing": len(cells)})
    return frame


def _width(sae: Any) -> int:
    d_sae = getattr(sae, "d_sae", None)
    if d_sae is None:
        raise PatchingError("feature_patch: the SAE has no d_sae (its number of latents)")
    return int(d_sae)


def _exact(model, latents: str, cells: list[tuple[int, int]], base_tokens: torch.Tensor, z_source: torch.Tensor,
           metric: Metric, batch_size: int | None, progress: bool) -> list[float]:
    n_prompts, n_pos = base_tokens.shape
    if batch_size is None:
        batch_size = max(1, min(256, _LOGITS_BUDGET_BYTES // (n_prompts * n_pos * model.cfg.d_vocab * 4)))
    values: list[float] = []
    bar = tqdm(total=len(cells), desc="patching latents", unit="cell", disable=not progress)
    try:
        for start in range(0, len(cells), batch_size):
            chunk = cells[start : start + batch_size]
            with torch.no_grad(), model.hooks([(latents, _patch_hook(chunk, z_source, n_prompts))]):
                logits = model(base_tokens.repeat(len(chunk), 1))
            values += [evaluate_metric(metric, logits[c * n_prompts : (c + 1) * n_prompts]) for c in range(len(chunk))]
            bar.update(len(chunk))
    finally:
        bar.close()
    return values


def _patch_hook(chunk: list[tuple[int, int]], z_source: torch.Tensor, n_prompts: int):
    """A latents hook writing the source value of cell ``chunk[c]`` into copy ``c`` of the prompts."""
    rows = torch.arange(len(chunk) * n_prompts)
    cell = torch.tensor(chunk).repeat_interleave(n_prompts, dim=0)
    source = z_source[rows % n_prompts, cell[:, 0], cell[:, 1]]

    def patch(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()  # a new tensor: the splice tells an edited latent by identity
        z[rows, cell[:, 0], cell[:, 1]] = source.to(z.device, z.dtype)
        return z

    return patch


def _latent_gradient(model, latents: str, tokens: torch.Tensor, metric: Metric) -> torch.Tensor:
    grads: dict[str, torch.Tensor] = {}

    def keep(grad: torch.Tensor, hook) -> None:
        grads["z"] = grad.detach()

    with torch.enable_grad(), model.hooks(bwd_hooks=[(latents, keep)]):
        value = torch.as_tensor(metric(model(tokens)))
        if value.numel() != 1:
            raise PatchingError(f"metric returned shape {tuple(value.shape)}; it must return one number")
        value.backward()
    if "z" not in grads:
        raise PatchingError("no gradient reached the latents: does the metric depend on the logits?")
    return grads["z"].float()
