"""``sae_metrics``: the standard quality numbers of an SAE or transcoder on held-out text.

On every real token (not padding; not BOS unless ``include_bos``):

- ``l0``: mean number of active latents per token;
- ``fvu``: fraction of variance unexplained, ``sum ||y - y_hat||^2 / sum ||y - mean(y)||^2`` (``y``
  the hook's activation, the output hook's for a transcoder; the mean over all the tokens);
- ``ce_loss_clean`` / ``ce_loss_spliced`` / ``ce_loss_zero_ablation``: mean next-token
  cross-entropy of the model as it is, with the hook's activation replaced by the bare
  reconstruction (no error term), and replaced by zeros;
- ``ce_loss_recovered = (zero - spliced) / (zero - clean)`` (1: as good as the model; 0: as bad as
  deleting the activation), as in SAELens's evals and Gao et al. 2024;
- ``dead_fraction``: latents that never fire on these tokens; ``dense_fraction``: latents that
  fire on more than 10% of them.
"""

from __future__ import annotations

from typing import Iterable

import pandas as pd
import torch
import torch.nn.functional as F

from workbench.features.formats import check_fits

DENSE = 0.1  # a latent firing on more than this fraction of tokens is dense


@torch.no_grad()
def sae_metrics(model, sae, texts: Iterable[str], *, batch_size: int = 8, include_bos: bool = False) -> pd.DataFrame:
    """L0, FVU, CE loss recovered, dead and dense latents of ``sae`` on ``texts``, as a tidy table.

    Args:
        model: the :class:`~workbench.HookedLlama` the SAE belongs to (its shapes are checked).
        sae: a :class:`~workbench.features.SparseAutoencoder` (or anything with ``encode``,
            ``decode``, ``hook``, ``hook_out``, ``d_sae`` and its widths).
        texts: held-out strings.
        batch_size: texts per forward pass.
        include_bos: also replace and count the BOS position (its activations are outliers in
            LLaMA models and SAEs are usually trained without it).

    Returns:
        A DataFrame with columns ``metric`` and ``value`` (``l0``, ``fvu``, ``ce_loss_clean``,
        ``ce_loss_spliced``, ``ce_loss_zero_ablation``, ``ce_loss_recovered``, ``dead_fraction``,
        ``dense_fraction``, ``n_tokens``).

    >>> wb.sae_metrics(model, sae, held_out_texts).set_index("metric")["value"]["fvu"]  # doctest: +SKIP
    0.21
    """
    check_fits(sae, model)
    hook_in, hook_out = sae.hook, sae.hook_out or sae.hook
    rows = [model.to_tokens(t)[0].cpu() for t in texts]
    if not rows:
        raise ValueError("sae_metrics: no texts")
    bos = model.tokenizer.bos_token_id
    pad = model.pad_token_id
    sums = {"l0": 0.0, "err": 0.0, "sq": 0.0, "n": 0, "clean": 0.0, "spliced": 0.0, "zero": 0.0, "n_loss": 0}
    y_sum = torch.zeros(sae.d_out, dtype=torch.float64)
    fires = torch.zeros(sae.d_sae, dtype=torch.float64)
    for b in range(0, len(rows), batch_size):
        batch = rows[b : b + batch_size]
        lengths = torch.tensor([len(r) for r in batch])
        tokens = torch.full((len(batch), int(lengths.max())), pad, dtype=torch.long)
        for i, r in enumerate(batch):
            tokens[i, : len(r)] = r  # right padding: no real token attends to a pad
        positions = torch.arange(tokens.shape[1])
        real = positions[None, :] < lengths[:, None]
        counted = real & ~((positions[None, :] == 0) & (tokens[:, :1] == bos)) if not include_bos else real
        tokens = tokens.to(model.device)
        captured: dict[str, torch.Tensor] = {}
        fwd = [(hook_in, _capture(captured, "x"))]
        if hook_out != hook_in:
            fwd.append((hook_out, _capture(captured, "y")))
        logits_clean = model.run_with_hooks(tokens, fwd_hooks=fwd)
        x = captured["x"]
        y = captured.get("y", x)
        recon = sae.decode(sae.encode(x))
        mask = counted.to(y.device)[..., None]
        logits_spliced = model.run_with_hooks(tokens, fwd_hooks=[(hook_out, _replace(mask, recon))])
        logits_zero = model.run_with_hooks(tokens, fwd_hooks=[(hook_out, _replace(mask, torch.zeros_like(y)))])
        # next-token targets: position t predicts token t + 1, for real tokens only
        target_mask = (positions[None, 1:] < lengths[:, None]).to(tokens.device)
        targets = tokens[:, 1:][target_mask]
        for key, logits in (("clean", logits_clean), ("spliced", logits_spliced), ("zero", logits_zero)):
            sums[key] += float(F.cross_entropy(logits[:, :-1][target_mask].float(), targets, reduction="sum"))
        sums["n_loss"] += int(target_mask.sum())
        keep = counted.to(x.device)
        z = sae.encode(x[keep])
        y_kept = y[keep].double()
        sums["l0"] += float((z > 0).sum())
        sums["err"] += float((y_kept - recon[keep].double()).pow(2).sum())
        sums["sq"] += float(y_kept.pow(2).sum())
        sums["n"] += int(keep.sum())
        y_sum += y_kept.sum(0).cpu()
        fires += (z > 0).sum(0).double().cpu()
    n = max(sums["n"], 1)
    total_variance = sums["sq"] - float(y_sum.pow(2).sum()) / n
    clean, spliced, zero = (sums[k] / max(sums["n_loss"], 1) for k in ("clean", "spliced", "zero"))
    values = {
        "l0": sums["l0"] / n,
        "fvu": sums["err"] / total_variance if total_variance > 0 else float("nan"),
        "ce_loss_clean": clean,
        "ce_loss_spliced": spliced,
        "ce_loss_zero_ablation": zero,
        "ce_loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        "dead_fraction": float((fires == 0).double().mean()),
        "dense_fraction": float((fires / n > DENSE).double().mean()),
        "n_tokens": float(sums["n"]),
    }
    return pd.DataFrame({"metric": list(values), "value": list(values.values())})


def _capture(captured: dict, name: str):
    def fn(act, hook):
        captured[name] = act.detach()

    return fn


def _replace(mask: torch.Tensor, value: torch.Tensor):
    # Only the counted positions: BOS (unless include_bos) and padding keep their activations.
    def fn(act, hook):
        return torch.where(mask, value.to(act.dtype), act)

    return fn
