"""Per-layer probe sweeps: where in the model is a concept linearly readable?

For each hook (typically ``blocks.*.hook_resid_post``), a linear probe is trained and tested
with grouped k-fold cross-validation (templates, names or facts never straddle train and
test), features standardised inside each training fold only. Each layer gets:

- ``accuracy``: out-of-fold accuracy, with a cluster-bootstrap CI over groups;
- ``control_accuracy``: the same probe on the control task of Hewitt & Liang (2019, "Designing
  and Interpreting Probes with Control Tasks"): each word type gets a random label, so a probe
  that scores well here memorises words rather than reading the concept;
- ``selectivity``: accuracy - control accuracy (their measure of what the probe reveals);
- ``random_direction_accuracy``: a random unit direction with the threshold fitted on the
  training fold, the floor that any direction used downstream must beat.

Continuous labels (``method="ridge"``) report ``r2`` instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from workbench.models.direction import Direction
from workbench.probing.concepts import Concept, load_concept
from workbench.probing.estimators import MassMeanProbe, RidgeProbe
from workbench.probing.logistic import decision_layers, fit_logistic_layers

METHODS = ("logistic", "mass_mean", "ridge")


@dataclass
class ProbeResult:
    """What :func:`probe_sweep` found.

    Attributes:
        frame: tidy DataFrame, one row per (hook, metric): ``layer``, ``hook``, ``metric``,
            ``mean``, ``ci_low``, ``ci_high``, ``n``, ``concept``, ``method``.
        directions: the probe's unit direction per hook, fitted on all examples.
        predictions: out-of-fold decision values, one row per (example, hook).
        concept: the concept's name; ``method``; ``provenance`` (data hash, model fingerprint,
            hooks, positions, folds, seed).
    """

    frame: pd.DataFrame
    directions: dict[str, Direction]
    predictions: pd.DataFrame
    concept: str
    method: str
    provenance: dict

    def direction(self, layer: int | str) -> Direction:
        """The unit direction at a layer (int) or hook name (str), with provenance.

        >>> direction = result.direction(layer=12)                   # doctest: +SKIP
        """
        if isinstance(layer, str):
            return self.directions[layer]
        matches = [d for d in self.directions.values() if d.layer == layer]
        if len(matches) != 1:
            raise KeyError(f"layer {layer}: {len(matches)} probed hooks at that layer; pass a hook name "
                           f"(one of {list(self.directions)[:5]} ...)")
        return matches[0]

    def best_layer(self, metric: str | None = None) -> int:
        """The layer with the highest mean of ``metric`` (default accuracy, or r2 for ridge)."""
        metric = metric or ("r2" if self.method == "ridge" else "accuracy")
        rows = self.frame[self.frame["metric"] == metric]
        return int(rows.loc[rows["mean"].idxmax(), "layer"])

    def plot(self):
        """Accuracy by layer with CIs, the control task and random-direction curves beside it."""
        from workbench.viz.probes import probe_accuracy_figure

        return probe_accuracy_figure(self.frame, title=f"{self.concept}: {self.method} probe by layer")

    def save(self, folder) -> None:
        """``frame.parquet``, ``predictions.parquet``, ``directions.safetensors``, ``manifest.json``."""
        import json
        from pathlib import Path

        from workbench.models.direction import save_directions

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.frame.to_parquet(folder / "frame.parquet", index=False)
        self.predictions.to_parquet(folder / "predictions.parquet", index=False)
        save_directions(folder / "directions.safetensors", list(self.directions.values()))
        (folder / "manifest.json").write_text(json.dumps(
            {"concept": self.concept, "method": self.method, **self.provenance}, indent=1, default=str))


def probe_sweep(
    model,
    concept: Concept | str,
    hooks="blocks.*.hook_resid_post",
    *,
    positions="last",
    method: str = "logistic",
    cv: int = 5,
    C: float = 1.0,
    alpha: float = 1.0,
    n_bootstrap: int = 1000,
    seed: int = 0,
    limit: int | None = None,
    data_dir=None,
    batch_size: int = 16,
    progress: bool = True,
) -> ProbeResult:
    """Probe every selected hook for a concept.

    Args:
        model: a :class:`~workbench.HookedLlama`.
        concept: a :class:`Concept` or the name of one under ``probes/`` (``"gender"``).
        hooks: hook names / globs; each must hold ``[batch, pos, d]`` activations.
        positions: where to read activations (``"last"``, ``"mean"``, a column, ...; see
            :func:`~workbench.cache_activations`).
        method: ``"logistic"`` (L2, batched Newton over all layers), ``"mass_mean"`` (difference
            of class means) or ``"ridge"`` (continuous labels).
        cv: number of grouped folds.
        C: inverse L2 strength of the logistic probe; ``alpha``: ridge penalty.
        n_bootstrap: bootstrap resamples (over groups) for the CIs.
        seed: seeds fold assignment, control labels, random directions and the bootstrap.
        limit: subsample the concept to this many examples (balanced; see ``load_concept``).

    Returns:
        A :class:`ProbeResult`.

    >>> result = wb.probe_sweep(model, "sentiment", limit=200)          # doctest: +SKIP
    >>> result.frame.query("metric == 'accuracy'")[["layer", "mean"]].head(3)  # doctest: +SKIP
    """
    from workbench.store import cache_activations

    if method not in METHODS:
        raise ValueError(f"method={method!r}: use one of {METHODS}")
    if isinstance(concept, str):
        concept = load_concept(concept, data_dir=data_dir, limit=limit, seed=seed)
    elif limit is not None:
        raise ValueError("limit applies when loading a concept by name; subsample the Concept yourself")
    frame = concept.frame.reset_index(drop=True)
    y = _check_labels(frame["label"].to_numpy(), method, concept.name)
    groups = frame["group"].astype(str).to_numpy()
    folds = grouped_folds(y, groups, cv, seed, stratify=method != "ridge")
    store = cache_activations(model, frame[["text"]], hooks=hooks, positions=positions,
                              batch_size=batch_size, progress=progress)
    if len(store.meta) != len(frame) or store.config["positions"]["per_token"]:
        raise ValueError("probing needs exactly one activation row per example: use positions "
                         "'last', 'mean' or a per-example index, not 'all' or a slice")
    X = torch.from_numpy(np.stack([np.asarray(store[h], dtype=np.float32) for h in store.hooks]))  # [L, n, d]
    if not torch.isfinite(X).all():
        bad = (~torch.isfinite(X)).any(-1).any(0).nonzero().flatten().tolist()
        raise ValueError(f"activations contain NaN/inf for examples {bad[:10]}")
    rng = np.random.default_rng(seed)
    scores = _out_of_fold(X, y, folds, method, C, alpha)
    rows = []
    if method == "ridge":
        rows += _bootstrap_rows(store.hooks, "r2", scores, y, groups, n_bootstrap, rng, _r2)
    else:
        control_y = control_labels(frame["word"].astype(str).to_numpy(), y, seed)
        control = _out_of_fold(X, control_y, folds, method, C, alpha)
        random_dir = _random_direction_scores(X, y, folds, rng)
        correct = (scores > 0) == y.astype(bool)
        control_correct = (control > 0) == control_y.astype(bool)
        random_correct = (random_dir > 0) == y.astype(bool)
        rows += _bootstrap_accuracy(store.hooks, correct, control_correct, random_correct, groups, n_bootstrap, rng)
    result_frame = pd.DataFrame(rows)
    result_frame.insert(0, "layer", [_layer_of(h) for h in result_frame["hook"]])
    result_frame["concept"], result_frame["method"] = concept.name, method
    result_frame["layer"] = result_frame["layer"].astype("Int64")
    provenance = {"data_hash": concept.source_hash, "model": model.source.name,
                  "model_fingerprint": model.source.fingerprint, "hooks": store.hooks,
                  "positions": store.config["positions"], "cv": cv, "seed": seed, "n_examples": len(y),
                  "C": C if method == "logistic" else None, "alpha": alpha if method == "ridge" else None}
    directions = _final_directions(X, y, store.hooks, concept.name, method, C, alpha, result_frame, provenance)
    predictions = pd.DataFrame({
        "example": np.tile(np.arange(len(y)), len(store.hooks)),
        "hook": np.repeat(store.hooks, len(y)),
        "label": np.tile(y, len(store.hooks)),
        "group": np.tile(groups, len(store.hooks)),
        "score": scores.reshape(-1),
    })
    return ProbeResult(result_frame, directions, predictions, concept.name, method, provenance)


def _check_labels(y: np.ndarray, method: str, name: str) -> np.ndarray:
    if method == "ridge":
        y = y.astype(np.float64)
        if np.unique(y).size < 2:
            raise ValueError(f"concept {name!r}: labels are constant; nothing to regress")
        return y
    values = np.unique(y)
    if values.size != 2:
        raise ValueError(f"concept {name!r}: a classification probe needs exactly 2 label values, got {values.tolist()}")
    return (y == values[1]).astype(np.int64)


def grouped_folds(y: np.ndarray, groups: np.ndarray, cv: int, seed: int, stratify: bool = True) -> np.ndarray:
    """Fold index per example: whole groups per fold, classes balanced across folds if possible.

    >>> grouped_folds(np.array([0, 1, 0, 1]), np.array(["a", "a", "b", "b"]), 2, 0).tolist()
    [1, 1, 0, 0]
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if cv < 2:
        raise ValueError(f"cv={cv}: need at least 2 folds")
    if n_groups < cv:
        raise ValueError(f"{n_groups} groups (and {len(y)} examples) are fewer than cv={cv} folds; "
                         f"lower cv or use a concept with more groups")
    splitter = StratifiedGroupKFold(cv, shuffle=True, random_state=seed) if stratify else GroupKFold(cv)
    fold = np.empty(len(y), dtype=np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y if stratify else None, groups)):
        fold[test] = k
    return fold


def control_labels(words: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Hewitt & Liang control task: one random label per word type, in the real label mix.

    >>> control_labels(np.array(["a", "b", "a", "c"]), np.array([0, 1, 0, 1]), 0)[[0, 2]].tolist()  # same word, same label
    [1, 1]
    """
    rng = np.random.default_rng(seed + 1)
    types = np.unique(words)
    share = float(y.mean())
    per_type = (rng.random(len(types)) < share).astype(np.int64)
    if per_type.min() == per_type.max():  # a degenerate draw would make the task meaningless
        per_type[rng.integers(len(types))] ^= 1
    return per_type[np.searchsorted(types, words)]


def _out_of_fold(X: torch.Tensor, y: np.ndarray, folds: np.ndarray, method: str, C: float, alpha: float) -> np.ndarray:
    """Out-of-fold decision values (classification) or predictions (ridge): ``[L, n]``."""
    L, n, _ = X.shape
    out = np.zeros((L, n))
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        if method == "logistic":
            if np.unique(y[train]).size < 2:
                raise ValueError(f"fold {k}: its training part has a single class; lower cv")
            coef, intercept = fit_logistic_layers(X[:, train], torch.as_tensor(y[train]), C=C)
            out[:, test] = decision_layers(coef, intercept, X[:, test]).numpy()
            continue
        for layer in range(L):
            probe = MassMeanProbe() if method == "mass_mean" else RidgeProbe(alpha=alpha)
            probe.fit(X[layer, train], y[train])
            out[layer, test] = probe.decision_function(X[layer, test]) if method == "mass_mean" else probe.predict(X[layer, test])
    return out


def _random_direction_scores(X: torch.Tensor, y: np.ndarray, folds: np.ndarray, rng) -> np.ndarray:
    """A random unit direction per layer; sign and threshold from the training fold's class means."""
    L, n, d = X.shape
    directions = torch.from_numpy(rng.standard_normal((L, d))).float()
    directions /= directions.norm(dim=1, keepdim=True)
    projected = torch.einsum("lnd,ld->ln", X, directions).numpy()
    out = np.zeros((L, n))
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        pos, neg = projected[:, train][:, y[train] == 1].mean(1), projected[:, train][:, y[train] == 0].mean(1)
        sign, threshold = np.sign(pos - neg)[:, None], ((pos + neg) / 2)[:, None]
        out[:, test] = sign * (projected[:, test] - threshold)
    return out


def _bootstrap_accuracy(hooks, correct, control_correct, random_correct, groups, n_bootstrap, rng) -> list[dict]:
    # Cluster bootstrap: resample whole groups, since examples of a group are not independent.
    codes, counts = _group_codes(groups)
    draws = rng.integers(0, len(counts), size=(n_bootstrap, len(counts)))
    weights = np.stack([np.bincount(draw, minlength=len(counts)) for draw in draws])  # [B, G]
    total = weights @ counts
    rows = []
    for i, hook in enumerate(hooks):
        stats = {}
        for metric, hits in (("accuracy", correct[i]), ("control_accuracy", control_correct[i]),
                             ("random_direction_accuracy", random_correct[i])):
            per_group = np.bincount(codes, weights=hits.astype(float), minlength=len(counts))
            stats[metric] = (hits.mean(), weights @ per_group / total)
        stats["selectivity"] = (stats["accuracy"][0] - stats["control_accuracy"][0],
                                stats["accuracy"][1] - stats["control_accuracy"][1])
        for metric in ("accuracy", "control_accuracy", "selectivity", "random_direction_accuracy"):
            mean, samples = stats[metric]
            low, high = np.percentile(samples, [2.5, 97.5])
            rows.append({"hook": hook, "metric": metric, "mean": float(mean), "ci_low": float(low),
                         "ci_high": float(high), "n": len(hits)})
    return rows


def _bootstrap_rows(hooks, metric, predictions, y, groups, n_bootstrap, rng, fn) -> list[dict]:
    codes, counts = _group_codes(groups)
    members = [np.flatnonzero(codes == g) for g in range(len(counts))]
    draws = [np.concatenate([members[g] for g in rng.integers(0, len(counts), len(counts))]) for _ in range(n_bootstrap)]
    rows = []
    for i, hook in enumerate(hooks):
        samples = [fn(predictions[i, idx], y[idx]) for idx in draws]
        low, high = np.nanpercentile(samples, [2.5, 97.5])
        rows.append({"hook": hook, "metric": metric, "mean": fn(predictions[i], y), "ci_low": float(low),
                     "ci_high": float(high), "n": len(y)})
    return rows


def _r2(prediction: np.ndarray, y: np.ndarray) -> float:
    total = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - prediction) ** 2).sum() / total) if total > 0 else float("nan")


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    names, codes = np.unique(groups, return_inverse=True)
    return codes, np.bincount(codes, minlength=len(names)).astype(float)


def _final_directions(X, y, hooks, concept, method, C, alpha, frame, provenance) -> dict[str, Direction]:
    if method == "logistic":
        coef, _ = fit_logistic_layers(X, torch.as_tensor(y), C=C)
        vectors = coef.numpy()
    else:
        vectors = np.stack([(MassMeanProbe() if method == "mass_mean" else RidgeProbe(alpha=alpha))
                            .fit(X[i], y).coef_ for i in range(len(hooks))])
    metric = "r2" if method == "ridge" else "accuracy"
    scores = frame[frame["metric"] == metric].set_index("hook")["mean"]
    return {hook: Direction(vectors[i], hook, _layer_of(hook), concept, method,
                            {**{k: v for k, v in provenance.items() if k != "hooks"}, f"cv_{metric}": float(scores[hook])})
            for i, hook in enumerate(hooks)}


def _layer_of(hook: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook)
    return int(match.group(1)) if match else None
