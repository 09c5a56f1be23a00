"""Dose-response: a metric as a function of steering strength, beside a random-direction placebo."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from workbench.common.errors import PatchingError
from workbench.common.stats import benjamini_hochberg, bootstrap_ci, mcnemar_exact, sign_flip_test
from workbench.models.interventions import steer, unit_vector


@dataclass
class DoseResponse:
    """Metric values by steering strength.

    Attributes:
        frame: one row per (direction, alpha): ``direction`` ("concept" or "placebo"),
            ``alpha``, ``value``. When ``eval`` gives per-example outcomes and there is a
            placebo, the concept's rows also hold the paired comparison with the placebo at the
            same alpha, on the same examples: ``vs_placebo`` (concept - placebo),
            ``vs_placebo_ci_low`` / ``vs_placebo_ci_high`` (paired bootstrap), ``test``
            (``mcnemar_exact`` for 0/1 outcomes, else ``sign_flip``), ``p_value`` and
            ``p_adjusted`` (Benjamini-Hochberg over the alphas).
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
    outcome: str | None = None,
    placebo: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> DoseResponse:
    """Run ``eval(model)`` under ``model.steer(direction, layer, alpha)`` for each alpha.

    Args:
        direction: what to steer along (see :func:`~workbench.models.interventions.steer`).
        layer: the block (default: the Direction's layer).
        alphas: steering strengths.
        eval: ``model -> number``; ``model -> per-example values`` (a 1-D array or list, the
            same examples in the same order every call: the value is their mean); or
            ``model -> result`` with a ``.metrics`` table (an eval run), in which case
            ``metric`` names the row to read (its overall value).
        metric: the metric name to read from an eval result's ``.metrics``.
        outcome: with an eval result, the ``.samples`` column holding each example's outcome
            (``"refusal"`` for the refusal suites, ``"correct"`` ...), joined by
            ``example_id``; it enables the paired tests against the placebo.
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
    rows, outcomes = [], {}
    bar = tqdm(total=len(directions) * len(alphas), desc="dose-response", disable=not progress)
    try:
        for label, d in directions:
            for alpha in alphas:
                with steer(model, d, layer=layer, alpha=alpha, site=site):
                    result = eval(model)
                per_example = _per_example(result, outcome)
                value = float(per_example.mean()) if per_example is not None else _number(result, metric)
                outcomes[label, alpha] = per_example
                rows.append({"direction": label, "alpha": alpha, "value": value})
                bar.update()
    finally:
        bar.close()
    frame = pd.DataFrame(rows)
    if placebo and all(v is not None for v in outcomes.values()):
        frame = _against_placebo(frame, outcomes, alphas, seed)
    return DoseResponse(frame, int(layer), site, name)


def _per_example(result: Any, outcome: str | None) -> pd.Series | None:
    """Per-example outcomes of one eval call (indexed by example), or None for a single number."""
    samples = getattr(result, "samples", None)
    if outcome is not None:
        if not isinstance(samples, pd.DataFrame) or outcome not in samples:
            have = sorted(samples.columns) if isinstance(samples, pd.DataFrame) else "no samples"
            raise PatchingError(f"outcome={outcome!r}: eval's result has no such samples column ({have})")
        values = pd.Series(samples[outcome].to_numpy(float), index=samples["example_id"].astype(str))
    elif isinstance(result, (list, tuple, np.ndarray)) or (hasattr(result, "detach") and result.dim() == 1):
        values = pd.Series(np.asarray(getattr(result, "detach", lambda: result)(), float).reshape(-1))
    else:
        return None
    if values.empty or values.isna().any():
        raise PatchingError("eval's per-example values are empty or hold NaN")
    return values


def _against_placebo(frame: pd.DataFrame, outcomes: dict, alphas: list[float], seed: int) -> pd.DataFrame:
    """Concept vs placebo at each alpha, example by example: difference, paired bootstrap CI,
    McNemar's exact test (0/1 outcomes) or the sign-flip permutation test, BH over alphas."""
    stats = []
    for alpha in alphas:
        concept, placebo = outcomes["concept", alpha], outcomes["placebo", alpha]
        if not concept.index.equals(placebo.index):
            raise PatchingError(f"alpha={alpha}: the concept and placebo runs scored different examples; "
                                "eval must score the same examples every call")
        c, p = concept.to_numpy(), placebo.to_numpy()
        low, high = bootstrap_ci(lambda x, y: float(np.mean(x) - np.mean(y)), [c, p], seed=seed, n_boot=2000)
        if np.isin(c, (0.0, 1.0)).all() and np.isin(p, (0.0, 1.0)).all():
            test, p_value = "mcnemar_exact", mcnemar_exact(int(np.sum((c == 1) & (p == 0))),
                                                          int(np.sum((c == 0) & (p == 1))))
        else:
            test, p_value = "sign_flip", sign_flip_test(c - p, seed)[0]
        stats.append({"direction": "concept", "alpha": alpha, "vs_placebo": float(np.mean(c - p)),
                      "vs_placebo_ci_low": low, "vs_placebo_ci_high": high, "test": test, "p_value": p_value})
    stats = pd.DataFrame(stats)
    stats["p_adjusted"] = benjamini_hochberg(stats["p_value"].to_numpy(float))
    return frame.merge(stats, on=["direction", "alpha"], how="left")


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
