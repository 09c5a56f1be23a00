"""Statistics every floor shares: the percentile bootstrap, and the paired tests that say
whether a difference between two conditions on the same examples is real.

- :func:`bootstrap_ci`: a seeded percentile interval of any statistic of per-example arrays;
- :func:`mcnemar_exact`: McNemar's exact test of a paired binary outcome (McNemar 1947);
- :func:`sign_flip_test`: a paired permutation test of a mean difference;
- :func:`benjamini_hochberg`: adjusted p-values over many comparisons (Benjamini & Hochberg 1995).

Evaluation comparisons (``workbench.evals.compare``, ``workbench.evals.effects``) and the
dose-response placebo tests (``workbench.patching.dose``) use these, so both say the same thing
about the same numbers.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.stats import binomtest

NAN = float("nan")
EXACT_MAX = 16  # nonzero differences up to which the sign-flip test enumerates every pattern
N_PERMUTATIONS = 9999


def bootstrap_ci(
    fn: Callable[..., float],
    arrays: list[np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``fn(*arrays)``, resampling examples with replacement.

    Efron & Tibshirani 1993, ch. 13. Resamples where ``fn`` is undefined (NaN) are dropped;
    with fewer than 2 examples, or no defined resample, the interval is ``(NaN, NaN)``.

    >>> lo, hi = bootstrap_ci(np.mean, [np.array([1, 0, 1, 1, 0, 1, 1, 1])], seed=0)
    >>> bool(lo < 0.75 < hi)
    True
    """
    n = len(arrays[0]) if arrays else 0
    if n < 2:
        return NAN, NAN
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = rng.integers(0, n, n)
        values[b] = fn(*(a[idx] for a in arrays))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return NAN, NAN
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def mcnemar_exact(to_refusal: int, to_answer: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (1.0 when both are 0).

    >>> round(mcnemar_exact(0, 6), 4), mcnemar_exact(0, 0)
    (0.0312, 1.0)
    """
    changed = to_refusal + to_answer
    return 1.0 if changed == 0 else float(binomtest(to_refusal, changed, 0.5).pvalue)


def sign_flip_test(diffs: np.ndarray, seed: int = 0) -> tuple[float, bool]:
    """Two-sided paired permutation test of ``mean(diffs) == 0``: ``(p, exact)``.

    Under the null each difference is as likely to have either sign; zero differences flip to
    themselves and are left out. Exact (every pattern) for at most :data:`EXACT_MAX` nonzero
    differences, else :data:`N_PERMUTATIONS` seeded random patterns, ``p = (1 + hits) / (1 + R)``.

    >>> sign_flip_test(np.array([1.0, 2.0, 3.0]))
    (0.25, True)
    """
    d = np.asarray(diffs, float)
    d = d[d != 0]
    m = len(d)
    if m == 0:
        return 1.0, True
    observed = abs(d.sum())
    tol = 1e-9 * np.abs(d).sum()  # sums equal in exact arithmetic count as ties
    if m <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2**m)[:, None] >> np.arange(m)) & 1)
        return float(np.mean(np.abs(signs @ d) >= observed - tol)), True
    rng = np.random.default_rng(seed)
    hits, done, chunk = 0, 0, max(1, 2_000_000 // m)
    while done < N_PERMUTATIONS:
        k = min(chunk, N_PERMUTATIONS - done)
        signs = rng.choice(np.array([-1.0, 1.0]), size=(k, m))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
        done += k
    return (hits + 1) / (N_PERMUTATIONS + 1), False


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (step-up; NaN entries are left out and stay NaN).

    >>> benjamini_hochberg([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.04, 0.04, nan]
    """
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        scaled = p[order] * ok.size / np.arange(1, ok.size + 1)
        out[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return out
