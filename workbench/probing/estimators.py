"""Linear probes with the scikit-learn estimator contract, fast enough for per-layer sweeps.

Hyper-parameters only in ``__init__``, ``fit`` returns ``self``, learned state ends with ``_``;
``sklearn.base.clone`` and ``cross_val_score`` accept the probes, yet scikit-learn is not needed.
``coef_`` has shape ``(d,)`` and lives, with the float ``intercept_``, in the ORIGINAL activation
space (``X @ coef_ + intercept_ == decision_function(X)``) even when a probe standardizes.

- :class:`LinearProbe`: L2 logistic regression, scikit-learn's ``LogisticRegression(C=C)``
  objective, fitted by the batched solver of :mod:`workbench.probing.logistic` (which also
  fits every layer of ``[L, n, d]`` at once: :func:`~workbench.probing.logistic.fit_logistic_layers`).
- :class:`MassMeanProbe`: difference of class means (Marks & Tegmark 2023).
- :class:`RidgeProbe`: ridge regression for continuous labels, scikit-learn's ``Ridge``.

>>> import torch
>>> X = torch.randn(200, 8); y = (X[:, 0] > 0).long()
>>> LinearProbe().fit(X, y).score(X, y) > 0.9
True
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from workbench.probing.logistic import (
    as_labels,
    as_matrix,
    as_tensor,
    binary_labels,
    check_rows_finite,
    cholesky,
    cholesky_solve,
    compute_dtype,
    fit_logistic,
    prepare_layers,
)

__all__ = [
    "LinearProbe",
    "MassMeanProbe",
    "NotFittedError",
    "RidgeProbe",
    "unit_direction",
]

_F64 = torch.float64


class NotFittedError(ValueError, AttributeError):
    """A probe was used before ``fit`` (the same bases as scikit-learn's ``NotFittedError``)."""


class _Estimator:
    """scikit-learn's ``get_params``/``set_params``/``repr``/tags, without ``BaseEstimator``."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any):
        for name, value in params.items():
            if name not in self._param_names():
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; "
                                 f"valid: {self._param_names()}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = inspect.signature(type(self).__init__).parameters
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if v != defaults[k].default]
        return f"{type(self).__name__}({', '.join(changed)})"

    _estimator_type = None  # "classifier" or "regressor", for scikit-learn's tags

    def __sklearn_tags__(self):
        # Called by scikit-learn >= 1.6 only (cross_val_score & co), so it is importable here.
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        kind = self._estimator_type
        return Tags(estimator_type=kind, target_tags=TargetTags(required=True),
                    classifier_tags=ClassifierTags(multi_class=False) if kind == "classifier" else None,
                    regressor_tags=RegressorTags() if kind == "regressor" else None)

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(X, y) first")

    def _linear(self, X: Any) -> np.ndarray:
        """``X @ coef_ + intercept_`` as float64 numpy, computed on ``X``'s device."""
        self._check_fitted()
        X = as_matrix(X, len(self.coef_))
        dt = compute_dtype(X)
        out = (X.to(dt) @ torch.as_tensor(self.coef_, dtype=dt, device=X.device)).to(_F64).cpu().numpy()
        out += self.intercept_
        if not np.isfinite(out).all():
            check_rows_finite(X)
        return out


class _BinaryClassifier(_Estimator):
    """``decision_function``/``predict``/``predict_proba``/``score`` from ``coef_``/``intercept_``."""

    _estimator_type = "classifier"

    def decision_function(self, X: Any) -> np.ndarray:
        """Signed scores ``X @ coef_ + intercept_`` of shape ``(n,)``; > 0 means ``classes_[1]``."""
        return self._linear(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, 2)`` probabilities of ``classes_[0]`` and ``classes_[1]``: sigmoid of the score."""
        p = np.exp(-np.logaddexp(0.0, -self.decision_function(X)))  # sigmoid, without overflow
        return np.stack([1.0 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        """The predicted label (a value of ``classes_``) of each row."""
        positive = self.decision_function(X) > 0  # checks the fit first
        return self.classes_[positive.astype(int)]

    def score(self, X: Any, y: Any) -> float:
        """Accuracy: the fraction of rows whose predicted label equals ``y``."""
        y = as_labels(y, as_tensor(X).shape[0])
        return float(np.mean(self.predict(X) == y))


class LinearProbe(_BinaryClassifier):
    """Binary L2-regularised logistic-regression probe.

    Minimises scikit-learn's ``LogisticRegression(penalty='l2', C=C)`` objective,
    ``sum_i logloss(y_i, x_i.w + b) + ||w||^2 / (2 C)`` (``b`` unpenalised) with the solver of
    :func:`fit_logistic_layers`. ``standardize=True`` uses the mean and std of the ``fit`` rows
    only (``mean_``, ``scale_``): inside a cross-validation fold it never sees the test rows.

    Args:
        C: inverse regularisation strength, as scikit-learn's ``C``.
        max_iter: iterations at most.
        tol: gradient tolerance on the objective / n, as scikit-learn's ``tol``.
        standardize: standardize features with the training rows' statistics.
        fit_intercept: learn an unpenalised intercept.

    Attributes:
        classes_: the two labels, sorted; ``classes_[1]`` is the positive class.
        coef_: ``(d,)`` direction in the original space; ``intercept_``: float.
        mean_, scale_: ``(d,)`` statistics of the training rows (0 and 1 when not used).
        n_iter_: iterations taken.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 5)); y = np.where(X[:, 1] + 0.1 * rng.normal(size=300) > 0, "yes", "no")
    >>> probe = LinearProbe(C=0.5).fit(X, y)
    >>> probe.classes_.tolist(), probe.predict_proba(X).shape, probe.score(X, y) > 0.9
    (['no', 'yes'], (300, 2), True)
    >>> bool(np.allclose(X @ probe.coef_ + probe.intercept_, probe.decision_function(X)))
    True
    """

    def __init__(self, C: float = 1.0, max_iter: int = 100, tol: float = 1e-6,
                 standardize: bool = True, fit_intercept: bool = True):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any) -> "LinearProbe":
        """Fit on ``X [n, d]`` (torch or numpy) and labels ``y [n]`` with two distinct values."""
        X = as_matrix(X)
        classes, y01 = binary_labels(y, X.shape[0])
        fit = fit_logistic(X[None], torch.as_tensor(y01)[None], self.C, self.standardize,
                            self.fit_intercept, self.max_iter, self.tol)
        self.classes_ = classes
        self.coef_ = fit.coef[0].cpu().numpy()
        self.intercept_ = float(fit.intercept[0])
        self.mean_, self.scale_ = fit.mean[0].cpu().numpy(), fit.scale[0].cpu().numpy()
        self.n_iter_ = int(fit.n_iter[0].clamp_max(self.max_iter))
        self.n_features_in_ = X.shape[1]
        return self


class MassMeanProbe(_BinaryClassifier):
    """Difference-of-class-means probe (Marks & Tegmark 2023, "The Geometry of Truth", sec. 5).

    The direction is ``theta = mean(X | classes_[1]) - mean(X | classes_[0])``; the score is
    ``X @ theta`` minus a threshold at the midpoint of the two projected class means, so
    ``coef_ = theta`` and ``intercept_ = -(mu_0 + mu_1) @ theta / 2``. With
    ``covariance=True`` it is the paper's "iid" variant ``Sigma^+ theta`` (LDA), ``Sigma`` the
    covariance of the data after centring each class on its own mean (pseudo-inverse, so fewer
    rows than features is allowed). ``predict_proba`` is the sigmoid of the score, as in the
    paper: not calibrated.

    Args:
        covariance: use the inverse within-class covariance (the "iid" variant).

    >>> import numpy as np
    >>> probe = MassMeanProbe().fit(np.array([[0.0, 0.0], [2.0, 4.0]]), [0, 1])
    >>> probe.coef_.tolist(), probe.intercept_
    ([2.0, 4.0], -10.0)
    """

    def __init__(self, covariance: bool = False):
        self.covariance = covariance

    def fit(self, X: Any, y: Any) -> "MassMeanProbe":
        """Fit on ``X [n, d]`` and labels ``y [n]`` with two distinct values."""
        X = as_matrix(X)
        classes, y01 = binary_labels(y, X.shape[0])
        pos = torch.as_tensor(y01 > 0, device=X.device)
        X = X.to(_F64)
        if not torch.isfinite(X.sum(0)).all():
            check_rows_finite(X)
        mu0, mu1 = X[~pos].mean(0), X[pos].mean(0)
        direction = mu1 - mu0
        if self.covariance:
            within = X - torch.where(pos[:, None], mu1, mu0)
            sigma = within.T @ within / len(X)
            direction = torch.linalg.pinv(sigma, hermitian=True) @ direction
        self.classes_ = classes
        self.coef_ = direction.cpu().numpy()
        self.intercept_ = float(-0.5 * (mu0 + mu1) @ direction)
        self.n_features_in_ = X.shape[1]
        return self


class RidgeProbe(_Estimator):
    """Ridge-regression probe for continuous labels, scikit-learn's ``Ridge(alpha)`` objective.

    Minimises ``||y - X w - b||^2 + alpha ||w||^2`` (sums, not means; ``b`` unpenalised) in
    closed form, ``w = (Xc^T Xc + alpha I)^-1 Xc^T (y - mean(y))`` with ``Xc`` the centred
    (and with ``standardize=True`` scaled, by the ``fit`` rows' statistics only) features;
    ``coef_``/``intercept_`` are reported in the original space. ``score`` is R^2.

    Args:
        alpha: L2 penalty, as scikit-learn's ``Ridge(alpha=...)``.
        standardize: standardize features with the training rows' mean and std.
        fit_intercept: learn an unpenalised intercept.

    >>> import numpy as np
    >>> X = np.arange(10.0)[:, None]; y = 3 * X[:, 0] + 1
    >>> probe = RidgeProbe(alpha=1e-9, standardize=False).fit(X, y)
    >>> round(float(probe.coef_[0]), 6), round(probe.intercept_, 6), probe.score(X, y)
    (3.0, 1.0, 1.0)
    """

    _estimator_type = "regressor"

    def __init__(self, alpha: float = 1.0, standardize: bool = True, fit_intercept: bool = True):
        self.alpha = alpha
        self.standardize = standardize
        self.fit_intercept = fit_intercept

    def fit(self, X: Any, y: Any) -> "RidgeProbe":
        """Fit on ``X [n, d]`` and real-valued targets ``y [n]``."""
        X = as_matrix(X)
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        y = as_labels(y, X.shape[0]).astype(np.float64)
        if not np.isfinite(y).all():
            raise ValueError(f"y has {int((~np.isfinite(y)).sum())} NaN or inf values")
        work, mean, scale = prepare_layers(X.to(_F64)[None], center=self.fit_intercept or self.standardize,
                                     scale=self.standardize)
        Xs, mean, scale = work[0], mean[0], scale[0]
        yt = torch.as_tensor(y, device=X.device)
        y_mean = yt.mean() if self.fit_intercept else yt.new_zeros(())
        A = Xs.T @ Xs + self.alpha * torch.eye(X.shape[1], dtype=_F64, device=X.device)
        w = cholesky_solve(cholesky(A[None]), (Xs.T @ (yt - y_mean))[None])[0]
        coef = w / scale
        self.coef_ = coef.cpu().numpy()
        self.intercept_ = float(y_mean - mean @ coef) if (self.fit_intercept or self.standardize) else 0.0
        self.mean_, self.scale_ = mean.cpu().numpy(), scale.cpu().numpy()
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets ``X @ coef_ + intercept_``, shape ``(n,)``."""
        return self._linear(X)

    def score(self, X: Any, y: Any) -> float:
        """Coefficient of determination R^2 = 1 - SS_res / SS_tot (scikit-learn's ``r2_score``)."""
        y = as_labels(y, as_tensor(X).shape[0]).astype(np.float64)
        ss_res = float(np.sum((y - self.predict(X)) ** 2))
        ss_tot = float(np.sum((y - y.mean()) ** 2))
        return 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)


def unit_direction(probe: Any) -> np.ndarray:
    """The unit vector along ``probe.coef_`` in the original (unstandardised) activation space.

    Works for these probes and for scikit-learn linear models (``coef_`` of shape ``(1, d)``).
    For a standardizing probe the direction is ``w_std / scale_`` normalised, i.e. the one that
    acts on raw activations (for steering or cosine comparisons with other probes).

    >>> import numpy as np
    >>> unit_direction(MassMeanProbe().fit(np.array([[0.0, 0.0], [3.0, 4.0]]), [0, 1])).tolist()
    [0.6, 0.8]
    """
    coef = getattr(probe, "coef_", None)
    if coef is None:
        raise NotFittedError(f"{type(probe).__name__} has no coef_: fit it first")
    coef = coef.detach().cpu().numpy() if isinstance(coef, torch.Tensor) else np.asarray(coef)
    coef = coef.astype(np.float64).reshape(-1) if coef.ndim == 1 or coef.shape[0] == 1 else None
    if coef is None:
        raise ValueError("unit_direction needs a single direction; coef_ holds several rows")
    norm = np.linalg.norm(coef)
    if not norm > 0:
        raise ValueError("the probe's coef_ is zero (or NaN): it has no direction")
    return coef / norm
