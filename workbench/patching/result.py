"""The result of a patching experiment: one value per (layer, position) or (layer, head) cell.

:class:`PatchResult` is what :func:`~workbench.patching.patch_sweep` (exact) and
:func:`~workbench.patching.attribution_patch` (a gradient estimate) return; both build it with
:meth:`PatchResult.from_raw`, from the metric of every cell and of the two unpatched runs.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from workbench.models.sites import Site
from workbench.patching.metrics import Metric

MODES = ("denoise", "noise")


@dataclass
class PatchResult:
    """A patching table: one value per (layer, position) or (layer, head) cell.

    Attributes:
        values: normalised effect ``[layers, positions]``, ``[layers, heads]`` or
            ``[layers, positions, heads]``. Denoising: 1 = the patch restores the clean
            metric fully, 0 = no effect. Noising: 1 = the patch alone turns the clean
            metric into the corrupted one, 0 = no effect.
        raw: the metric itself for every cell (what TransformerLens's functions return).
        site, axes, mode, method: what was patched, along which axes, which way
            ("denoise"/"noise"), and how ("exact" or "attribution").
        clean_value, corrupt_value: the metric on the unpatched clean and corrupted runs.
        layers, positions, heads: the index of each row / column of ``values``.
        clean_tokens, corrupt_tokens: the first prompt pair's tokens, for labels.
        metric_name: the metric's ``__name__``.
    """

    values: torch.Tensor
    raw: torch.Tensor
    site: str
    axes: tuple[str, ...]
    mode: str
    method: str
    clean_value: float
    corrupt_value: float
    layers: list[int]
    positions: list[int] = field(default_factory=list)
    heads: list[int] = field(default_factory=list)
    clean_tokens: list[str] = field(default_factory=list)
    corrupt_tokens: list[str] = field(default_factory=list)
    metric_name: str = "metric"

    @classmethod
    def from_raw(cls, model, raw: torch.Tensor, *, site: Site, mode: str, method: str, metric: Metric,
                 clean_value: float, corrupt_value: float, clean_tokens: torch.Tensor,
                 corrupt_tokens: torch.Tensor, layers: Sequence[int], positions: Sequence[int] = (),
                 heads: Sequence[int] = ()) -> PatchResult:
        """A result from the metric of every cell and of the two unpatched runs.

        Args:
            model: the model the experiment ran on (it labels the first prompt pair's tokens).
            raw: the metric of every cell, ``[len(layers), *site.axes]``.
            site: the patched :class:`~workbench.models.sites.Site`; ``positions`` and ``heads``
                are kept only for the axes it has.
            mode, method: ``"denoise"`` or ``"noise"``; ``"exact"`` or ``"attribution"``.
            metric: the metric (its ``__name__`` is recorded).
            clean_value, corrupt_value: the metric on the unpatched clean and corrupted runs.
            clean_tokens, corrupt_tokens: the prompts' tokens ``[batch, pos]``.
            layers, positions, heads: the index of each row / column of ``raw``.
        """
        return cls(
            # stacklevel 4: a warning names the line that called patch_sweep / attribution_patch.
            values=normalise(raw, clean_value, corrupt_value, mode, stacklevel=4),
            raw=raw,
            site=site.name,
            axes=site.axes,
            mode=mode,
            method=method,
            clean_value=clean_value,
            corrupt_value=corrupt_value,
            layers=list(layers),
            positions=list(positions) if "pos" in site.axes else [],
            heads=list(heads) if "head" in site.axes else [],
            clean_tokens=model.to_str_tokens(clean_tokens[0]),
            corrupt_tokens=model.to_str_tokens(corrupt_tokens[0]),
            metric_name=getattr(metric, "__name__", "metric"),
        )

    @property
    def frame(self) -> pd.DataFrame:
        """Tidy table, one row per cell: layer, [pos, token, corrupt_token], [head], value, raw."""
        axes = [self.layers] + [self.positions if a == "pos" else self.heads for a in self.axes]
        index = pd.MultiIndex.from_product(axes, names=("layer",) + self.axes).to_frame(index=False)
        index["value"] = self.values.reshape(-1).tolist()
        index["raw"] = self.raw.reshape(-1).tolist()
        if "pos" in self.axes:
            index.insert(2, "token", [self.clean_tokens[p] for p in index["pos"]])
            index.insert(3, "corrupt_token", [self.corrupt_tokens[p] for p in index["pos"]])
        return index

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` cells with the largest absolute effect."""
        frame = self.frame
        return frame.reindex(frame["value"].abs().sort_values(ascending=False).index).head(k)

    def plot(self, title: str | None = None):
        """Plotly heatmap with token labels (see :func:`workbench.viz.patching.patch_figure`)."""
        from workbench.viz.patching import patch_figure

        return patch_figure(self, title=title)

    def save(self, folder: str | Path) -> Path:
        """Write ``table.csv`` (the tidy frame), ``values.pt`` and ``result.json`` to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.frame.to_csv(folder / "table.csv", index=False)
        torch.save({"values": self.values, "raw": self.raw}, folder / "values.pt")
        meta = {k: getattr(self, k) for k in ("site", "axes", "mode", "method", "clean_value", "corrupt_value",
                                               "layers", "positions", "heads", "clean_tokens", "corrupt_tokens",
                                               "metric_name")}
        (folder / "result.json").write_text(json.dumps(meta, indent=2))
        return folder


def normalise(raw: torch.Tensor, clean_value: float, corrupt_value: float, mode: str, *,
              stacklevel: int = 2) -> torch.Tensor:
    """Map metric values to 1 = full effect, 0 = none (see :class:`PatchResult`).

    When the two runs' metrics are equal the values are undefined: NaN, with a warning
    attributed ``stacklevel`` frames up.
    """
    gap = clean_value - corrupt_value
    if not math.isfinite(gap) or abs(gap) < 1e-8:
        warnings.warn(
            f"the metric is the same on the clean and corrupted runs ({clean_value:.6g}); "
            "normalised values are undefined (NaN). The raw metric is in `.raw`.",
            stacklevel=stacklevel,
        )
        return torch.full_like(raw, float("nan"))
    if mode == "denoise":
        return (raw - corrupt_value) / gap
    return (clean_value - raw) / gap

