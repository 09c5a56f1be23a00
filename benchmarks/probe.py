"""Per-layer logistic probes: the batched Newton fit vs scikit-learn, measured in the same run.

Data: synthetic activations shaped like SmolLM2-135M's residual stream (30 layers x 576), one
[n, d] matrix per layer with a different random basis each, and a spectrum taken from the real
thing: the correlation eigenvalues of ``blocks.*.hook_resid_post`` over ~4k ToxiGen tokens fall
from ~20 to ~2.7 by the 50th and ~0.09 by the 500th (condition 1e3-1e5), which
``(k + 10) ** -1.2`` follows; a few "massive" dimensions with a large mean and scale. The two
balanced classes differ along one random direction by a Mahalanobis distance that grows with
depth, so the best possible accuracy rises from ~55% to ~90% across layers.

Compared on the same training rows, each layer standardized with its own training statistics:

1. ``fit_logistic_layers`` (all layers at once) + ``predict_layers`` on held-out rows;
2. scikit-learn ``StandardScaler`` + ``LogisticRegression(solver='lbfgs', max_iter=1000)`` per
   layer (the baseline), + ``score`` on held-out rows;
3. ``LinearProbe`` per layer (the same solver, one layer at a time), unless ``--skip-single``;
4. with ``--also-newton-cholesky``: scikit-learn's own Newton solver per layer.

Also printed: how far (1) and (2) are from the exact optimum (a tight ``newton-cholesky`` fit)
on the first and last layer.

(1) and (2) alternate ``--repeats`` times and the fastest run of each counts, so that other jobs
on a shared machine slow both alike. Needs scikit-learn (not a dependency of the workbench).

Goal: (1) >= 5x faster than (2), held-out accuracy within 1 point on every layer.

    .venv/bin/python benchmarks/probe.py                                # 30 x 10k x 576
    .venv/bin/python benchmarks/probe.py --layers 4 --n 2000 --d 128   # a quick look
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch


def synthetic_layers(layers: int, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``X [layers, n, d]`` float32 activations and balanced 0/1 labels ``y [n]`` shared by all layers."""
    from statistics import NormalDist

    gen = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=gen) % 2
    spectrum = (torch.arange(d, dtype=torch.float64) + 10.0) ** -1.2
    spectrum *= d / spectrum.sum()  # unit average variance
    basis, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=gen))
    X = torch.empty(layers, n, d)
    for layer in range(layers):
        # Each layer: the basis vectors get the spectrum in another order, with random signs.
        signs = torch.randint(0, 2, (d,), generator=gen) * 2 - 1
        mix = (basis[:, torch.randperm(d, generator=gen)] * signs * spectrum.sqrt()).float()
        # Mahalanobis distance between the class means for a Bayes accuracy of 55% .. 90%.
        accuracy = 0.55 + 0.35 * layer / max(layers - 1, 1)
        v = torch.randn(d, generator=gen)
        shift = mix @ (v / v.norm()) * 2 * NormalDist().inv_cdf(accuracy)
        x = torch.randn(n, d, generator=gen) @ mix.T + (y[:, None] - 0.5) * shift
        massive = torch.randperm(d, generator=gen)[:4]
        x[:, massive] = 20 * x[:, massive] + 50  # a few huge-mean, huge-scale dimensions
        X[layer] = x
    return X.numpy(), y.numpy()


def sklearn_per_layer(Xtr, ytr, Xte, yte, C: float, solver: str = "lbfgs", tol: float = 1e-4, layers=None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    coefs, accs, iters = [], [], []
    for layer in range(len(Xtr)) if layers is None else layers:
        scaler = StandardScaler().fit(Xtr[layer])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning, reported via n_iter_ instead
            model = LogisticRegression(C=C, solver=solver, tol=tol, max_iter=1000).fit(scaler.transform(Xtr[layer]), ytr)
        coefs.append(model.coef_[0] / scaler.scale_)  # back to the original space
        accs.append(model.score(scaler.transform(Xte[layer]), yte))
        iters.append(int(model.n_iter_[0]))
    return np.array(coefs), np.array(accs), np.array(iters)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--n", type=int, default=10_000, help="training rows per layer")
    parser.add_argument("--d", type=int, default=576)
    parser.add_argument("--test", type=int, default=2_500, help="held-out rows per layer")
    parser.add_argument("--C", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate the two fits this many times; the fastest of each counts")
    parser.add_argument("--skip-single", action="store_true", help="skip the LinearProbe-per-layer row")
    parser.add_argument("--also-newton-cholesky", action="store_true",
                        help="also time scikit-learn's newton-cholesky solver per layer")
    args = parser.parse_args()

    from workbench.probing.estimators import LinearProbe
    from workbench.probing.logistic import fit_logistic_layers, predict_layers

    t0 = time.perf_counter()
    X, y = synthetic_layers(args.layers, args.n + args.test, args.d, args.seed)
    Xtr, Xte, ytr, yte = X[:, :args.n], X[:, args.n:], y[:args.n], y[args.n:]
    print(f"data: {args.layers} layers x {args.n} train (+{args.test} held-out) x {args.d}, "
          f"float32, made in {time.perf_counter() - t0:.1f}s; torch threads {torch.get_num_threads()}")

    def ours():
        coef, intercept = fit_logistic_layers(torch.from_numpy(Xtr), torch.from_numpy(ytr), C=args.C)
        correct = predict_layers(coef, intercept, torch.from_numpy(Xte)) == torch.from_numpy(yte)
        return coef.numpy(), correct.double().mean(1).numpy()

    # Warm-up on a sliver of the data, so neither side pays for imports or first calls.
    fit_logistic_layers(torch.from_numpy(Xtr[:1, :200]), torch.from_numpy(ytr[:200]))
    sklearn_per_layer(Xtr[:1, :200], ytr[:200], Xte[:1], yte, args.C)

    # Alternated, so that a colleague's job slowing the machine hits both sides alike.
    ours_times, sk_times = [], []
    for _ in range(args.repeats):
        (coef, ours_acc), seconds = timed(ours)
        ours_times.append(seconds)
        (sk_coef, sk_acc, sk_iter), seconds = timed(sklearn_per_layer, Xtr, ytr, Xte, yte, args.C)
        sk_times.append(seconds)
    ours_s, sk_s = min(ours_times), min(sk_times)

    newton_s = None
    if args.also_newton_cholesky:
        (_, newton_acc, _), newton_s = timed(sklearn_per_layer, Xtr, ytr, Xte, yte, args.C, solver="newton-cholesky")

    single_s = None
    if not args.skip_single:
        start = time.perf_counter()
        for layer in range(args.layers):
            LinearProbe(C=args.C).fit(Xtr[layer], ytr).score(Xte[layer], yte)
        single_s = time.perf_counter() - start

    # Who is nearer the exact optimum: a tight newton-cholesky fit of the first and last layer.
    check = sorted({0, args.layers - 1})
    exact, _, _ = sklearn_per_layer(Xtr, ytr, Xte, yte, args.C, solver="newton-cholesky", tol=1e-10, layers=check)
    ours_err = max(np.abs(coef[i] - e).max() / np.abs(e).max() for i, e in zip(check, exact, strict=True))
    sk_err = max(np.abs(sk_coef[i] - e).max() / np.abs(e).max() for i, e in zip(check, exact, strict=True))

    diff = np.abs(ours_acc - sk_acc)
    rel_coef = np.abs(coef - sk_coef).max(1) / np.abs(sk_coef).max(1)
    print(f"\n{'layer':>5} {'acc ours':>9} {'acc sklearn':>11} {'sklearn iters':>13} {'max|dcoef|/max|coef|':>21}")
    for layer in sorted(set(np.linspace(0, args.layers - 1, min(args.layers, 6)).astype(int))):
        print(f"{layer:>5} {ours_acc[layer]:>9.4f} {sk_acc[layer]:>11.4f} {sk_iter[layer]:>13} {rel_coef[layer]:>21.1e}")
    runs = lambda times: ", ".join(f"{t:.2f}" for t in times)  # noqa: E731
    print(f"\nbatched Newton (fit_logistic_layers + predict_layers): {ours_s:8.2f} s  (runs: {runs(ours_times)})")
    print(f"sklearn lbfgs per layer (StandardScaler + fit + score): {sk_s:8.2f} s  (runs: {runs(sk_times)}; "
          f"lbfgs iterations per layer: median {int(np.median(sk_iter))}, max {sk_iter.max()})")
    if single_s is not None:
        print(f"LinearProbe per layer (same solver, L=1 each):          {single_s:8.2f} s")
    if newton_s is not None:
        print(f"sklearn newton-cholesky per layer (+ scaler, score):    {newton_s:8.2f} s "
              f"(max |accuracy difference| to ours {100 * np.abs(newton_acc - ours_acc).max():.2f} points)")
    print(f"\nspeed ratio sklearn / batched (fastest runs): {sk_s / ours_s:.1f}x (goal >= 5x)")
    print(f"max |held-out accuracy difference| over layers: {100 * diff.max():.2f} points (goal <= 1); "
          f"max relative coefficient difference {rel_coef.max():.1e}")
    print(f"distance to the exact optimum (newton-cholesky, tol=1e-10) on layers {check}, "
          f"max|dcoef|/max|coef|: ours {ours_err:.1e}, sklearn lbfgs {sk_err:.1e}")


if __name__ == "__main__":
    main()
