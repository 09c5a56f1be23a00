"""A batched L2 logistic-regression solver: one probe per layer, every layer at once.

:func:`fit_logistic_layers` minimises scikit-learn's ``LogisticRegression(C=C)`` objective for
each layer of ``[L, n, d]`` activations; :func:`decision_layers` and :func:`predict_layers`
apply the fits. The probe classes of :mod:`workbench.probing.estimators` are built on the same
solver and on the input checks here (``as_tensor``, ``as_matrix``, ``binary_labels`` ...).

Solver: per layer one exact Hessian (``(d+1)^2``, 577 x 577 for SmolLM2), Cholesky-factored and
reused, with L-BFGS secant corrections and a fresh Hessian only when progress stalls. 8-20 cheap
passes over the data reach a 1e-6 gradient where scikit-learn's L-BFGS takes ~40 to reach 1e-4
(``benchmarks/probe.py``: ~6x faster at 30 x 10k x 576, and ~200x nearer the exact optimum).
Systems are solved by Cholesky, never ``torch.linalg.solve``: batched LU on CPU raises MKL
``DLASWP`` errors or returns wrong answers once ``torch.set_num_threads(k > 1)`` has been called
(pytorch/pytorch#142815).

>>> import torch
>>> X = torch.randn(2, 200, 8); y = (X[0, :, 0] > 0).long()
>>> coef, intercept = fit_logistic_layers(X, y)
>>> (predict_layers(coef, intercept, X)[0] == y).double().mean().item() > 0.9
True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "LogisticFit",
    "as_labels",
    "as_matrix",
    "as_tensor",
    "binary_labels",
    "check_rows_finite",
    "cholesky",
    "cholesky_solve",
    "compute_dtype",
    "decision_layers",
    "fit_logistic",
    "fit_logistic_layers",
    "predict_layers",
    "prepare_layers",
]

_F64 = torch.float64
# Rows per block of the Hessian product: a weighted copy of ~128 MiB (float32).
_BLOCK_ELEMENTS = 1 << 25
# Layers fitted together. On CPU, few enough that their working copy stays in a typical L3
# cache (32 MiB: one 10k x 576 float32 layer), as its ~20 passes over the data are then
# ~20% faster than streaming all layers from memory each pass; on GPU, up to 1 GiB.
_CPU_CHUNK_BYTES = 1 << 25
_GPU_CHUNK_BYTES = 1 << 30
# Largest system factored by numpy rather than torch on CPU (see cholesky).
_NUMPY_CHOLESKY_MAX = 256
# Keep a layer's factored Hessian while each step cuts its gradient by at least this factor.
_REUSE_RATIO = 0.9


# --- input checks ---------------------------------------------------------------------------


def as_tensor(X: Any) -> torch.Tensor:
    """A tensor view of ``X`` (no copy where possible); integers and bools become float64."""
    if isinstance(X, torch.Tensor):
        t = X.detach()
    else:
        with warnings.catch_warnings():  # read-only memmaps: we never write to the input
            warnings.simplefilter("ignore", UserWarning)
            t = torch.as_tensor(np.asarray(X))
    if not t.is_floating_point():
        t = t.to(_F64)
    return t


def as_matrix(X: Any, d: int | None = None) -> torch.Tensor:
    """``X`` as an ``[n, d]`` tensor, checked against the fitted feature count ``d``."""
    X = as_tensor(X)
    if X.ndim != 2:
        raise ValueError(f"X must be [n, d], got shape {tuple(X.shape)}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"X has {X.shape[1]} features but the probe was fitted on {d}")
    return X


def compute_dtype(X: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float16/bfloat16/float32 are computed in float32."""
    return _F64 if X.dtype == _F64 else torch.float32


def as_labels(y: Any, n: int) -> np.ndarray:
    """``y`` as a 1-D numpy array of length ``n``."""
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (one label per row of X), got shape {y.shape}")
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)} labels: they must match")
    return y


def binary_labels(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, y01)``: the two sorted distinct labels and ``y == classes[1]`` as float64."""
    y = as_labels(y, n)
    classes = np.unique(y)
    if len(classes) != 2:
        what = "a single class" if len(classes) == 1 else f"{len(classes)} classes"
        raise ValueError(f"y has {what} ({classes[:5].tolist()}); a binary probe needs exactly "
                         "two distinct labels, each with at least one example")
    return classes, (y == classes[1]).astype(np.float64)


def check_rows_finite(X: torch.Tensor) -> None:
    """ValueError naming how many rows of ``X`` (``[n, d]`` or ``[L, n, d]``) hold NaN or inf."""
    bad = torch.stack([~torch.isfinite(x).all(-1) for x in X.reshape(-1, *X.shape[-2:])])
    if bad.any():
        rows = bad.any(0).nonzero().flatten()
        layers = "" if X.ndim == 2 else f" in {int(bad.any(1).sum())} of {len(bad)} layers"
        raise ValueError(f"X has {len(rows)} of {X.shape[-2]} rows with NaN or inf values"
                         f"{layers} (first: row {int(rows[0])}); drop or impute them first")


# --- standardization and the batched Newton solver ------------------------------------------


def prepare_layers(X: torch.Tensor, center: bool, scale: bool,
             whole: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A centred/scaled working copy of ``X [l, n, d]`` and its per-layer mean and scale.

    Statistics come from ``X`` (the training rows) only. Scaling implies centring, and a
    zero-variance feature gets scale 1, as in ``StandardScaler``; mean 0 / scale 1 where unused.
    ``whole``: the stack ``X`` is a chunk of, for the error message on NaN/inf.
    """
    dt = compute_dtype(X)
    l, n, d = X.shape
    work = torch.empty(l, n, d, dtype=dt, device=X.device)
    mean = torch.zeros(l, d, dtype=_F64, device=X.device)
    std = torch.ones(l, d, dtype=_F64, device=X.device)
    ones = torch.ones(n, dtype=dt, device=X.device)
    for i in range(l):
        x, src = work[i], X[i]
        if src.dtype != dt:  # float16/bfloat16: upcast first (half-precision gemv is slow on CPU)
            src = x.copy_(src)
        m = ones @ src / n  # a gemv: 20x faster than .sum(0, dtype=torch.float64) on CPU
        if not torch.isfinite(m).all():  # a NaN or inf anywhere makes its column sum non-finite
            check_rows_finite(X if whole is None else whole)
        if center or scale:
            torch.sub(src, m, out=x)  # the copy and the centring in one pass
            residual = ones @ x / n  # a second pass makes it exact: constant columns become 0
            x -= residual
            mean[i] = m.to(_F64) + residual
        elif src is not x:
            x.copy_(src)
        if scale:
            s = ((x * x).sum(0).to(_F64) / n).sqrt()  # x is centred; 2x faster than vector_norm
            s[s <= torch.finfo(dt).eps * (1 + mean[i].abs())] = 1.0
            std[i] = s
            x *= 1 / s.to(dt)
    return work, mean, std


def _weighted_gram(X: torch.Tensor, layers: list[int], w: torch.Tensor, uniform: bool = False) -> torch.Tensor:
    """``[X_i 1]^T diag(w_j) [X_i 1]`` for each ``i = layers[j]``: float64 ``[len(layers), d+1, d+1]``.

    The ``n d^2`` products that dominate a fit: only the lower half is multiplied out (3/4 of
    the work, as BLAS ``syrk``), by blocks of rows. ``uniform``: each ``w[j]`` is a constant
    (the first step, from zero), so no weighted copy of ``X`` is made.
    """
    n, d = X.shape[1:]
    h = d // 2 if d >= 256 else d  # small: one product (fewer BLAS calls beats fewer flops)
    out = torch.empty(len(layers), d + 1, d + 1, dtype=_F64, device=X.device)
    block = max(256, _BLOCK_ELEMENTS // d)
    for j, i in enumerate(layers):
        wj = w[j].to(X.dtype)
        gram = out.new_empty(d, d, dtype=X.dtype)
        for r in range(0, n, block):
            xb = X[i, r:r + block]
            wxb, a = (xb, float(wj[0])) if uniform else (xb * wj[r:r + block, None], 1.0)
            beta = 1 if r else 0
            gram[:h, :h].addmm_(xb[:, :h].T, wxb[:, :h], beta=beta, alpha=a)
            if h < d:
                gram[h:, :h].addmm_(xb[:, h:].T, wxb[:, :h], beta=beta, alpha=a)
                gram[h:, h:].addmm_(xb[:, h:].T, wxb[:, h:], beta=beta, alpha=a)
        gram[:h, h:] = gram[h:, :h].T
        out[j, :d, :d] = gram
        out[j, :d, d] = out[j, d, :d] = X[i].T @ wj
    out[:, d, d] = w.sum(1)
    return out


def _matvec(X: torch.Tensor, layers: list[int], v: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``X[i] @ v[j]`` (or ``X[i].T @ v[j]``) for each ``i = layers[j]``: float64 ``[len(layers), .]``.

    A loop of gemv, not ``bmm``: on CPU, ``bmm`` with one column is 5-10x slower.
    """
    v = v.to(X.dtype)
    return torch.stack([(X[i].T if transpose else X[i]) @ v[j] for j, i in enumerate(layers)]).to(_F64)


def cholesky(H: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factors of SPD matrices ``H [l, k, k]``, with a tiny jitter if needed.

    Small CPU systems go to numpy: torch's (MKL) ``potrf`` takes 10-200 ms even for 9 x 9 when
    the cores are shared (its threads wait on each other), numpy's ~10 us.
    """
    if H.device.type == "cpu" and H.shape[-1] <= _NUMPY_CHOLESKY_MAX:
        try:
            return torch.from_numpy(np.linalg.cholesky(H.numpy()))
        except np.linalg.LinAlgError:
            pass
    else:
        chol, info = torch.linalg.cholesky_ex(H)
        if not (info > 0).any():
            return chol
    # Only when C is so large that the penalty no longer keeps H numerically definite.
    jitter = 1e-10 * H.diagonal(dim1=-2, dim2=-1).abs().amax(-1)
    return torch.linalg.cholesky(H + jitter[..., None, None] * torch.eye(H.shape[-1], dtype=H.dtype, device=H.device))


def cholesky_solve(chol: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``H^-1 b`` for ``b [l, k]`` given lower Cholesky factors ``[l, k, k]`` of ``H``.

    Two triangular solves: 5x faster than ``torch.cholesky_solve``, which copies the factors.
    """
    half = torch.linalg.solve_triangular(chol, b[..., None], upper=False)
    return torch.linalg.solve_triangular(chol.mT, half, upper=True)[..., 0]


def _newton(X: torch.Tensor, y: torch.Tensor, lam: float, fit_intercept: bool,
            max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise ``sum_i logloss(y_i, x_i.w + b) + lam/2 ||w||^2`` for each layer of ``X``.

    ``X [l, n, d]`` is the prepared data, ``y [l, n]`` float64 in {0, 1}. Returns ``theta
    [l, d+1]`` (``w``, then ``b``) and each layer's iterations (``max_iter + 1``: not converged).
    Directions: the factored Hessian, corrected by the L-BFGS two-loop recursion over the steps
    since it was computed (Nocedal & Wright alg. 7.4 with the Hessian as initial matrix; the
    objective is strictly convex, so ``s.y > 0``). Converged layers leave the batch.
    """
    l, n, d = X.shape
    dev = X.device
    slack = 16 * torch.finfo(X.dtype).eps
    pen = torch.full((d + 1,), lam, dtype=_F64, device=dev)
    pen[d] = 0.0  # the intercept is not penalised
    free = torch.ones(d + 1, dtype=_F64, device=dev)
    if not fit_intercept:
        free[d] = 0.0

    def objective(z, theta, y):
        return (torch.nn.functional.softplus(z) - y * z).sum(1) + 0.5 * (pen * theta * theta).sum(1)

    def gradient(layers, z, theta, y):
        r = torch.sigmoid(z) - y
        g = torch.cat([_matvec(X, layers, r, transpose=True), r.sum(1, keepdim=True)], 1)
        return (g + pen * theta) * free

    theta_out = torch.zeros(l, d + 1, dtype=_F64, device=dev)
    iters_out = torch.full((l,), max_iter + 1, dtype=torch.long)
    layers = list(range(l))  # the layers still being fitted; the state below is theirs
    theta = torch.zeros(l, d + 1, dtype=_F64, device=dev)
    z = torch.zeros(l, n, dtype=_F64, device=dev)
    f, g = objective(z, theta, y), gradient(layers, z, theta, y)
    chol = torch.empty(l, d + 1, d + 1, dtype=_F64, device=dev)
    refresh = torch.ones(l, dtype=torch.bool, device=dev)  # which layers get a new Hessian
    stalled = torch.zeros(l, dtype=torch.bool, device=dev)
    pairs = []  # secant pairs (s, y, 1 / s.y) since each layer's last Hessian; 1/s.y = 0: none
    for it in range(max_iter):
        fresh = refresh
        if refresh.any():
            js = refresh.nonzero().flatten()
            p = torch.sigmoid(z[js])
            H = _weighted_gram(X, [layers[j] for j in js.tolist()], p * (1 - p), uniform=it == 0) + torch.diag(pen)
            if not fit_intercept:  # pin the intercept: an identity row/column, zero gradient
                H[:, d, :] = H[:, :, d] = 0.0
                H[:, d, d] = 1.0
            chol[js] = cholesky(H)
            for _, _, rho in pairs:
                rho[js] = 0.0
            pairs = [pair for pair in pairs if pair[2].any()]
        # L-BFGS two-loop recursion around the Hessian solve.
        q, alphas = g.clone(), []
        for s_, y_, rho in reversed(pairs):
            alphas.append(rho * (s_ * q).sum(1, keepdim=True))
            q -= alphas[-1] * y_
        step = cholesky_solve(chol, q)
        for (s_, y_, rho), alpha in zip(pairs, reversed(alphas), strict=True):
            step += (alpha - rho * (y_ * step).sum(1, keepdim=True)) * s_
        step = -step * free
        slope = (g * step).sum(1)
        # Converged: the gradient meets scikit-learn's tolerance (on the objective / n), or an
        # exact Newton step no longer reduces it: tol is below the compute dtype's noise floor.
        done = (g.abs().amax(1) <= tol * n) | stalled
        # Armijo backtracking per layer; trial points cost no pass over X since z is linear in t.
        Xp = _matvec(X, layers, step[:, :d]) + step[:, d:]
        t = torch.ones(len(layers), dtype=_F64, device=dev)
        for _ in range(40):
            ft = objective(z + t[:, None] * Xp, theta + t[:, None] * step, y)
            # The slack lets the last steps through when the decrease is below rounding.
            ok = ft <= f + 1e-4 * t * slope + slack * f.abs()
            if ok.all():
                break
            t = torch.where(ok, t, t / 2)
        done |= ~ok  # no decrease left to find: the objective is flat to rounding error
        t = torch.where(ok, t, 0)
        theta = theta + t[:, None] * step
        z = z + t[:, None] * Xp
        f = torch.where(ok, ft, f)
        if done.any():
            for j in done.nonzero().flatten().tolist():
                theta_out[layers[j]], iters_out[layers[j]] = theta[j], it + 1
            if done.all():
                break
            keep = ~done
            layers = [i for i, k in zip(layers, keep.tolist(), strict=True) if k]
            y, z, theta, f, g, t, step, slope = y[keep], z[keep], theta[keep], f[keep], g[keep], t[keep], step[keep], slope[keep]
            chol, fresh = chol[keep], fresh[keep]
            pairs = [(s_[keep], y_[keep], rho[keep]) for s_, y_, rho in pairs]
        g_new = gradient(layers, z, theta, y)
        s_, y_ = t[:, None] * step, g_new - g
        sy = (s_ * y_).sum(1, keepdim=True)  # > 0 in exact arithmetic; rounding can break it
        pairs.append((s_, y_, torch.where(sy > 1e-12 * s_.norm(dim=1, keepdim=True) * y_.norm(dim=1, keepdim=True),
                                          1.0 / sy, 0.0)))
        # Refresh the Hessian only when the reused one (plus secant corrections) stops working.
        ratio = g_new.abs().amax(1) / g.abs().amax(1).clamp_min(1e-300)
        refresh = (ratio > _REUSE_RATIO) | (t < 1)
        # An exact Newton step that predicts no measurable decrease and leaves the gradient as
        # it was: what remains of the gradient is rounding noise.
        stalled = fresh & (ratio > 0.9) & (-slope <= 1e-8 * f.abs())
        g = g_new
    else:
        for j, i in enumerate(layers):
            theta_out[i] = theta[j]
    return theta_out, iters_out


@dataclass
class LogisticFit:
    """What :func:`fit_logistic` returns: per-layer fits in the original feature space."""

    coef: torch.Tensor  # [L, d] float64, original feature space
    intercept: torch.Tensor  # [L]
    mean: torch.Tensor  # [L, d]: the training rows' standardization statistics
    scale: torch.Tensor  # [L, d]
    n_iter: torch.Tensor  # [L]


def fit_logistic(X: torch.Tensor, y01: torch.Tensor, C: float, standardize: bool,
                  fit_intercept: bool, max_iter: int, tol: float) -> LogisticFit:
    """The solver behind :func:`fit_logistic_layers` and :class:`LinearProbe`."""
    if not (isinstance(C, (int, float)) and 0 < C < float("inf")):
        raise ValueError(f"C must be a positive finite number, got {C!r}")
    L, n, d = X.shape
    parts = []
    budget = _CPU_CHUNK_BYTES if X.device.type == "cpu" else _GPU_CHUNK_BYTES
    chunk = max(1, budget // max(1, n * d * compute_dtype(X).itemsize))
    for s in range(0, L, chunk):
        # Centering is only a reparametrisation when there is an intercept (b absorbs mean.w),
        # and it keeps the Hessian well conditioned when activations have large means.
        work, mean, scale = prepare_layers(X[s:s + chunk], fit_intercept or standardize, standardize, whole=X)
        theta, iters = _newton(work, y01[s:s + chunk].to(work.device), 1.0 / C, fit_intercept, max_iter, tol)
        del work
        coef = theta[:, :-1] / scale
        parts.append((coef, theta[:, -1] - (mean * coef).sum(1), mean, scale, iters))
    fit = LogisticFit(*(torch.cat(p) for p in zip(*parts, strict=True)))
    if (fit.n_iter > max_iter).any():
        bad = (fit.n_iter > max_iter).nonzero().flatten().tolist()
        warnings.warn(f"logistic fit did not converge in max_iter={max_iter} Newton steps "
                      f"(layers {bad[:10]}); raise max_iter or tol", RuntimeWarning, stacklevel=3)
    return fit


def fit_logistic_layers(X: Any, y: Any, C: float = 1.0, standardize: bool = True, *,
                        fit_intercept: bool = True, max_iter: int = 100,
                        tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit one L2-regularised logistic-regression probe per layer, all layers at once.

    Each layer minimises scikit-learn's ``LogisticRegression(penalty='l2', C=C)`` objective,
    ``sum_i logloss(y_i, x_i.w + b) + ||w||^2 / (2 C)`` (``b`` unpenalised), with
    ``standardize=True`` on features standardized by that layer's own mean and std (as a
    ``StandardScaler`` + ``LogisticRegression`` pipeline). Batched quasi-Newton, see above.

    Args:
        X: ``[L, n, d]`` activations, torch or numpy, computed on their device (float64 in
            float64, anything else in float32).
        y: ``[n]`` labels for all layers, or ``[L, n]``; two distinct values, the larger one
            positive (``classes_[1]`` in scikit-learn).
        C: inverse regularisation strength.
        standardize: fit on per-layer standardized features (reported in the original space).
        fit_intercept: learn an unpenalised intercept.
        max_iter: iterations at most (8-20 are typical); a RuntimeWarning names layers that
            did not converge.
        tol: stop a layer once ``max |gradient| <= tol`` for the objective divided by ``n``
            (scikit-learn's ``tol``, whose default is 1e-4), or at the float32 noise floor.

    Returns:
        ``(coef [L, d], intercept [L])``: float64, original space; ``X[l] @ coef[l] +
        intercept[l]`` are layer ``l``'s logits.

    >>> import torch
    >>> X = torch.randn(3, 500, 16); y = (X[-1, :, 0] > 0).long()
    >>> coef, intercept = fit_logistic_layers(X, y, C=1.0)
    >>> coef.shape, intercept.shape
    (torch.Size([3, 16]), torch.Size([3]))
    >>> (predict_layers(coef, intercept, X) == y).double().mean(1)[-1].item() > 0.95
    True
    """
    X = as_tensor(X)
    if X.ndim != 3:
        raise ValueError(f"X must be [layers, n, d], got shape {tuple(X.shape)}")
    L, n, d = X.shape
    y = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if y.ndim == 2:
        if y.shape[0] != L:
            raise ValueError(f"y has labels for {y.shape[0]} layers but X has {L}")
        classes, y01 = binary_labels(y.reshape(-1), L * n)
        y01 = y01.reshape(L, n)
        single = np.flatnonzero(y01.min(1) == y01.max(1))
        if len(single):
            raise ValueError(f"y has a single class in layers {single[:10].tolist()}")
    else:
        classes, y01 = binary_labels(y, n)
        y01 = np.tile(y01, (L, 1))
    fit = fit_logistic(X, torch.as_tensor(y01), C, standardize, fit_intercept, max_iter, tol)
    return fit.coef, fit.intercept


def decision_layers(coef: torch.Tensor, intercept: torch.Tensor, X: Any) -> torch.Tensor:
    """Per-layer logits ``X[l] @ coef[l] + intercept[l]``: float64 ``[L, n]``.

    >>> import torch
    >>> decision_layers(torch.ones(2, 3), torch.zeros(2), torch.ones(2, 4, 3)).shape
    torch.Size([2, 4])
    """
    X = as_tensor(X)
    coef, intercept = as_tensor(coef), as_tensor(intercept)
    if X.ndim != 3 or coef.shape != (X.shape[0], X.shape[2]) or intercept.shape != (X.shape[0],):
        raise ValueError(f"expected X [L, n, d], coef [L, d], intercept [L]; got {tuple(X.shape)}, "
                         f"{tuple(coef.shape)}, {tuple(intercept.shape)}")
    dt = compute_dtype(X)
    coef, intercept = coef.to(X.device), intercept.to(device=X.device, dtype=_F64)
    # One layer at a time: a float16 X is upcast a layer, not a whole stack, at a time.
    return torch.stack([(X[i].to(dt) @ coef[i].to(dt)).to(_F64) + intercept[i] for i in range(len(X))])


def predict_layers(coef: torch.Tensor, intercept: torch.Tensor, X: Any) -> torch.Tensor:
    """Per-layer 0/1 predictions (1 = the positive class, ``classes_[1]``): long ``[L, n]``.

    Args:
        coef: ``[L, d]`` as returned by :func:`fit_logistic_layers`.
        intercept: ``[L]``.
        X: ``[L, n, d]`` activations, e.g. a held-out split.

    >>> import torch
    >>> predict_layers(torch.tensor([[1.0], [-1.0]]), torch.zeros(2), torch.tensor([[[2.0]], [[2.0]]]))
    tensor([[1],
            [0]])
    """
    return (decision_layers(coef, intercept, X) > 0).long()
