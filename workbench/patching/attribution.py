"""Attribution patching: a first-order estimate of every patching cell from three passes.

Patching cell ``(layer, pos)`` replaces the corrupted activation ``a*`` by the clean ``a``. To
first order the metric moves by ``(a - a*) . dM/da`` evaluated on the corrupted run (Nanda 2023,
"Attribution Patching"; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated
Circuit Discovery"). One clean forward, one corrupted forward and one backward give the
estimate for every site, layer, position and head at once. It is exact for a linear model and
can be poor where the model is far from linear (attention saturating, LayerNorm near the
patch): :func:`attribution_agreement` measures how well it ranks cells against an exact sweep.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from workbench.common.errors import PatchingError
from workbench.models.sites import get_site
from workbench.patching.metrics import Metric, evaluate_metric
from workbench.patching.result import MODES, PatchResult
from workbench.patching.sweep import paired_tokens


def attribution_patch(
    model,
    clean,
    corrupt,
    metric: Metric,
    sites: Sequence[str] = ("resid_pre", "attn_out", "mlp_out", "head_out"),
    *,
    mode: str = "denoise",
) -> dict[str, PatchResult]:
    """Estimate patching tables for several sites from one gradient.

    Args:
        model, clean, corrupt, metric, mode: as in :func:`~workbench.patch_sweep`.
        sites: site names (see ``workbench.patching.SITES``).

    Returns:
        ``{site: PatchResult}`` with ``method="attribution"``; ``raw`` holds the estimated
        metric (``base value + estimated change``) so it compares with an exact sweep's ``raw``.

    >>> approx = wb.attribution_patch(model, clean, corrupt, metric, sites=["resid_pre"])  # doctest: +SKIP
    >>> approx["resid_pre"].values.shape                                                   # doctest: +SKIP
    torch.Size([30, 15])
    """
    if mode not in MODES:
        raise PatchingError(f"mode={mode!r}; use one of {MODES}")
    if isinstance(sites, str):
        sites = [sites]
    site_infos = [get_site(s) for s in sites]
    if not site_infos:
        raise PatchingError("sites: empty")
    clean_tokens, corrupt_tokens = paired_tokens(model, clean, corrupt)
    layers = list(range(model.cfg.n_layers))
    hooks = sorted({info.hook_name(layer) for info in site_infos for layer in layers})

    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean_tokens, names_filter=hooks)
        corrupt_logits, corrupt_cache = model.run_with_cache(corrupt_tokens, names_filter=hooks)
    clean_value = evaluate_metric(metric, clean_logits)
    corrupt_value = evaluate_metric(metric, corrupt_logits)
    base_tokens, base_cache, source_cache = (
        (corrupt_tokens, corrupt_cache, clean_cache) if mode == "denoise" else (clean_tokens, clean_cache, corrupt_cache)
    )
    base_value = corrupt_value if mode == "denoise" else clean_value

    grads: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        # Keyed by the name we asked for: the hook reports its canonical name (an alias
        # such as hook_resid_pre arrives as hook_in).
        def keep_grad(grad: torch.Tensor, hook) -> None:
            grads[name] = grad.detach()

        return keep_grad

    with torch.enable_grad(), model.hooks(bwd_hooks=[(name, keeper(name)) for name in hooks]):
        value = metric(model(base_tokens))
        value = torch.as_tensor(value)
        if value.numel() != 1:
            raise PatchingError(f"metric returned shape {tuple(value.shape)}; it must return one number")
        value.backward()
    missing = [h for h in hooks if h not in grads]
    if missing:
        raise RuntimeError(f"no gradient reached {missing[:3]}...: does the metric depend on the logits?")

    results = {}
    for info in site_infos:
        per_layer = []
        for layer in layers:
            name = info.hook_name(layer)
            # change of metric ~ (source - base) . grad, summed over prompts and d (and pos for heads)
            delta = (source_cache[name] - base_cache[name]).float() * grads[name].float()
            if info.axes == ("pos",):
                per_layer.append(delta.sum(dim=(0, 2)))            # [pos]
            elif info.axes == ("head",):
                per_layer.append(delta.sum(dim=(0, 1, 3)))         # [head]
            else:
                per_layer.append(delta.sum(dim=(0, 3)))            # [pos, head]
        change = torch.stack(per_layer).cpu()
        results[info.name] = PatchResult.from_raw(
            model, base_value + change, site=info, mode=mode, method="attribution", metric=metric,
            clean_value=clean_value, corrupt_value=corrupt_value, clean_tokens=clean_tokens,
            corrupt_tokens=corrupt_tokens, layers=layers, positions=range(clean_tokens.shape[1]),
            heads=range(model.cfg.n_heads))
    return results


def attribution_agreement(approx: PatchResult, exact: PatchResult) -> pd.Series:
    """How well attribution patching reproduces an exact sweep of the same site.

    Returns:
        ``pearson`` and ``spearman`` correlations over all cells, ``max_abs_error`` of the
        normalised values, and ``n`` cells. Cells are matched by layer/position/head, so an
        exact sweep over a subset of layers compares with that subset.
    """
    if approx.site != exact.site or approx.mode != exact.mode:
        raise PatchingError(f"comparing {approx.site}/{approx.mode} with {exact.site}/{exact.mode}")
    keys = ["layer"] + list(exact.axes)
    merged = exact.frame[keys + ["value"]].merge(approx.frame[keys + ["value"]], on=keys, suffixes=("_exact", "_approx"))
    merged = merged.dropna()
    if len(merged) < 2:
        raise PatchingError("fewer than two cells in common between the two results")
    x, y = merged["value_exact"].to_numpy(), merged["value_approx"].to_numpy()
    return pd.Series({
        "pearson": float(np.corrcoef(x, y)[0, 1]),
        "spearman": float(pd.Series(x).rank().corr(pd.Series(y).rank())),
        "max_abs_error": float(np.abs(x - y).max()),
        "n": len(merged),
    })
