"""Dose-response: a metric as a function of steering strength, beside a random-direction placebo."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.common.errors import PatchingError
from workbench.models.interventions import steer, unit_vector


@dataclass
class DoseResponse:
    """Metric values by steering strength.

    Attributes:
        frame: one row per (direction, alpha): ``direction`` ("concept" or "placebo"),
            ``alpha``, ``value``.
        layer, site, direction_name: where and what was steered.
    """

    frame: pd.DataFrame
    layer: int
    site: str | None
    direction_name: str

    def plot(self, title: str | None = None):
        from workbench.viz.patching import dose_response_figure

        return dose_response_figure(self.frame, title or f"dose-response: {self.direction_name} at layer {self.layer}")


def dose_response(
    model,
    direction: Any,
    layer: int | None = None,
    alphas: Sequence[float] = (-8, -4, 0, 4, 8),
    eval: Callable[[Any], Any] | None = None,
    *,
    metric: str | None = None,
    site: str | None = None,
    placebo: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> DoseResponse:
    """Run ``eval(model)`` under ``model.steer(direction, layer, alpha)`` for each alpha.

    Args:
        direction: what to steer along (see :func:`~workbench.models.interventions.steer`).
        layer: the block (default: the Direction's layer).
        alphas: steering strengths.
        eval: ``model -> number``, or ``model -> result`` with a ``.metrics`` table (an eval
            run), in which case ``metric`` names the row to read (its overall value).
        metric: the metric name to read from an eval result's ``.metrics``.
        site: the residual site (default: the Direction's own).
        placebo: also steer along a random unit direction orthogonal to the concept's (seeded)
            with the same alphas: an effect the placebo shows too is not specific to the concept.
        seed: the placebo direction's seed.

    >>> curve = wb.dose_response(model, direction, layer=12, alphas=[-8, 0, 8],
    ...                          eval=lambda m: wb.logit_diff(m, " she", " he")(m(prompt)))  # doctest: +SKIP
    >>> curve.frame                                                                        # doctest: +SKIP
    """
    if eval is None or not callable(eval):
        raise PatchingError("eval: pass a callable model -> number (or -> eval result, with metric=)")
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise PatchingError("alphas: empty")
    vector, name, _ = unit_vector(model, direction)
    directions = [("concept", direction)]
    if placebo:
        # A random direction made orthogonal to the concept's, so the placebo shares no part of it.
        rng = np.random.default_rng(seed)
        concept = vector.numpy().astype(np.float64)
        random = rng.standard_normal(concept.shape[0])
        random -= (random @ concept) * concept
        directions.append(("placebo", random.astype(np.float32)))
    if layer is None:
        layer = getattr(direction, "layer", None)
    rows = []
    bar = tqdm(total=len(directions) * len(alphas), desc="dose-response", disable=not progress)
    try:
        for label, d in directions:
            for alpha in alphas:
                with steer(model, d, layer=layer, alpha=alpha, site=site):
                    value = _number(eval(model), metric)
                rows.append({"direction": label, "alpha": alpha, "value": value})
                bar.update()
    finally:
        bar.close()
    return DoseResponse(pd.DataFrame(rows), int(layer), site, name)


def _number(result: Any, metric: str | None) -> float:
    table = getattr(result, "metrics", None)
    if isinstance(table, pd.DataFrame):
        if metric is None:
            raise PatchingError("eval returned a result with a metrics table: pass metric= to say which row to plot")
        rows = table[table["metric"] == metric]
        if "category" in rows:
            overall = rows[rows["category"].isna() | rows["category"].isin(["all", "overall"])]
            rows = overall if len(overall) else rows
        if rows.empty:
            raise PatchingError(f"metric {metric!r} is not in the eval result (has {sorted(table['metric'].unique())})")
        return float(rows["value"].iloc[0])
    try:
        value = float(np.asarray(getattr(result, "detach", lambda: result)()).reshape(()))
    except (TypeError, ValueError):
        raise PatchingError(f"eval returned {type(result).__name__}; it must return one number") from None
    if math.isnan(value):
        raise PatchingError("eval returned NaN")
    return value
