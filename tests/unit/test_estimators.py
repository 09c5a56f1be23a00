"""Probe estimators and the batched logistic solver: hand-computed optima, scikit-learn agreement, the contract."""

import math

import numpy as np
import pytest
import torch

from workbench.probing.estimators import LinearProbe, MassMeanProbe, NotFittedError, RidgeProbe, unit_direction
from workbench.probing.logistic import decision_layers, fit_logistic_layers, predict_layers


def make_data(n=300, d=8, seed=0, shift=1.0, offset=0.0):
    """Correlated Gaussian features with unequal scales and a linear (noisy) label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * rng.uniform(0.2, 5.0, size=d) + offset
    w = rng.normal(size=d)
    y = ((X - X.mean(0)) @ w / np.linalg.norm(w) / X.std() + shift * rng.normal(size=n) > 0).astype(int)
    return X, y


def objective_gradient(X, y01, coef, intercept, C):
    """Gradient of sum_i logloss + ||w||^2 / (2C) (scikit-learn's objective) in (w, b)."""
    z = X @ coef + intercept
    r = 1 / (1 + np.exp(-z)) - y01
    return np.r_[X.T @ r + coef / C, r.sum()]


# --- hand-computed cases ----------------------------------------------------------------------


def test_two_point_logistic_optimum_solves_its_equation():
    # x = -1 (y=0) and x = +1 (y=1), C = 1: by symmetry b = 0, and the objective
    # 2 log(1 + e^-w) + w^2 / 2 is stationary where w = 2 / (1 + e^w).
    lo, hi = 0.0, 2.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mid < 2 / (1 + math.exp(mid)) else (lo, mid)
    probe = LinearProbe(C=1.0, standardize=False, tol=1e-12).fit(np.array([[-1.0], [1.0]]), [0, 1])
    assert probe.coef_[0] == pytest.approx(lo, abs=1e-9)
    assert probe.intercept_ == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("standardize", [False, True])
def test_gradient_is_zero_at_the_solution_1d(standardize):
    X = np.array([[-3.0], [-2.0], [-1.5], [-1.0], [0.0], [0.5], [1.0], [2.0], [2.5], [4.0]])
    y = np.array([0, 0, 1, 0, 0, 1, 1, 0, 1, 1])  # overlapping classes: a finite optimum
    probe = LinearProbe(C=0.7, standardize=standardize, tol=1e-12).fit(X, y)
    if standardize:  # the penalty is on the standardized coefficient w_std = coef * scale
        Xs = (X - X.mean(0)) / X.std(0)
        grad = objective_gradient(Xs, y, probe.coef_ * probe.scale_, probe.intercept_ + probe.mean_ @ probe.coef_, 0.7)
    else:
        grad = objective_gradient(X, y, probe.coef_, probe.intercept_, 0.7)
    assert np.abs(grad).max() < 1e-9
    assert probe.coef_[0] > 0


def test_gradient_is_zero_without_intercept():
    X, y = make_data(n=200, d=5, seed=3)
    probe = LinearProbe(C=0.3, standardize=False, fit_intercept=False, tol=1e-12).fit(X, y)
    assert probe.intercept_ == 0.0
    assert np.abs(objective_gradient(X, y, probe.coef_, 0.0, 0.3)[:-1]).max() < 1e-8


def test_mass_mean_two_points_by_hand():
    probe = MassMeanProbe().fit(np.array([[0.0, 0.0], [2.0, 4.0]]), np.array([0, 1]))
    # direction = (2, 4) - (0, 0); threshold = midpoint (1, 2) . (2, 4) = 10
    np.testing.assert_allclose(probe.coef_, [2.0, 4.0])
    assert probe.intercept_ == pytest.approx(-10.0)
    np.testing.assert_allclose(probe.decision_function([[0.0, 0.0], [2.0, 4.0], [1.0, 2.0]]), [-10.0, 10.0, 0.0])
    np.testing.assert_allclose(unit_direction(probe), np.array([2.0, 4.0]) / math.sqrt(20))


def test_mass_mean_four_points_by_hand():
    X = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    probe = MassMeanProbe().fit(X, ["a", "a", "b", "b"])
    # means (2, 0) and (0, 3): direction (-2, 3); midpoint (1, 1.5) . (-2, 3) = 2.5
    np.testing.assert_allclose(probe.coef_, [-2.0, 3.0])
    assert probe.intercept_ == pytest.approx(-2.5)
    assert probe.predict(X).tolist() == ["a", "a", "b", "b"]


def test_mass_mean_covariance_variant_is_inverse_within_class_covariance():
    X, y = make_data(n=200, d=4, seed=1)
    probe = MassMeanProbe(covariance=True).fit(X, y)
    mu0, mu1 = X[y == 0].mean(0), X[y == 1].mean(0)
    within = X - np.where(y[:, None] == 1, mu1, mu0)
    direction = np.linalg.solve(within.T @ within / len(X), mu1 - mu0)
    np.testing.assert_allclose(probe.coef_, direction, rtol=1e-8)
    assert probe.intercept_ == pytest.approx(-0.5 * (mu0 + mu1) @ direction)
    assert probe.score(X, y) >= MassMeanProbe().fit(X, y).score(X, y) - 0.02


def test_ridge_exact_line():
    X = np.arange(10.0)[:, None]
    probe = RidgeProbe(alpha=0.0, standardize=False).fit(X, 3 * X[:, 0] - 2)
    assert probe.coef_[0] == pytest.approx(3.0)
    assert probe.intercept_ == pytest.approx(-2.0)
    assert probe.score(X, 3 * X[:, 0] - 2) == pytest.approx(1.0)


# --- agreement with scikit-learn --------------------------------------------------------------


@pytest.mark.parametrize("C", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_sklearn_logistic_regression(C, standardize):
    sklearn = pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    X, y = make_data(n=400, d=10, seed=2)
    Xtest, _ = make_data(n=100, d=10, seed=7)
    scaler = StandardScaler().fit(X) if standardize else None
    fit_X = scaler.transform(X) if standardize else X
    ref = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(fit_X, y)
    ref_coef = ref.coef_[0] / scaler.scale_ if standardize else ref.coef_[0]
    ref_proba = ref.predict_proba(scaler.transform(Xtest) if standardize else Xtest)
    assert sklearn  # (imported for the skip)

    tight = LinearProbe(C=C, standardize=standardize, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(tight.coef_, ref_coef, rtol=1e-6, atol=1e-9 * np.abs(ref_coef).max())
    np.testing.assert_allclose(tight.predict_proba(Xtest), ref_proba, atol=1e-8)

    default = LinearProbe(C=C, standardize=standardize).fit(X, y)  # the default tolerance
    np.testing.assert_allclose(default.predict_proba(Xtest), ref_proba, atol=1e-3)
    np.testing.assert_allclose(default.coef_, ref_coef, rtol=0, atol=1e-3 * np.abs(ref_coef).max())
    assert default.score(X, y) == pytest.approx(ref.score(fit_X, y), abs=0.01)


def test_matches_sklearn_without_intercept():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    X, y = make_data(n=300, d=6, seed=4, offset=0.5)
    ref = LogisticRegression(C=0.5, fit_intercept=False, solver="newton-cholesky", tol=1e-12).fit(X, y)
    probe = LinearProbe(C=0.5, standardize=False, fit_intercept=False, tol=1e-12).fit(X, y)
    np.testing.assert_allclose(probe.coef_, ref.coef_[0], rtol=1e-6)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("alpha", [0.01, 1.0, 100.0])
def test_ridge_matches_sklearn(alpha, standardize):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    X, _ = make_data(n=150, d=12, seed=5, offset=3.0)
    target = X @ rng.normal(size=12) + rng.normal(size=150)
    scaler = StandardScaler().fit(X) if standardize else None
    fit_X = scaler.transform(X) if standardize else X
    ref = Ridge(alpha=alpha).fit(fit_X, target)
    probe = RidgeProbe(alpha=alpha, standardize=standardize).fit(X, target)
    ref_coef = ref.coef_ / scaler.scale_ if standardize else ref.coef_
    np.testing.assert_allclose(probe.coef_, ref_coef, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(probe.predict(X), ref.predict(fit_X), rtol=1e-8, atol=1e-8)
    assert probe.score(X, target) == pytest.approx(ref.score(fit_X, target), abs=1e-10)


def test_probes_work_with_sklearn_clone_and_cross_validation():
    pytest.importorskip("sklearn")
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    probe = LinearProbe(C=0.3, standardize=False)
    copy = clone(probe)
    assert copy is not probe and copy.get_params() == probe.get_params()
    assert repr(copy) == "LinearProbe(C=0.3, standardize=False)"
    X, y = make_data(n=200, d=5, seed=6)
    for estimator in (LinearProbe(), MassMeanProbe()):
        scores = cross_val_score(estimator, X, y, cv=4)
        assert len(scores) == 4 and scores.mean() > 0.6


# --- batched layers ---------------------------------------------------------------------------


@pytest.mark.parametrize("one_layer_chunks", [False, True])
def test_batched_layers_equal_per_layer_fits(one_layer_chunks, monkeypatch):
    if one_layer_chunks:
        monkeypatch.setattr("workbench.probing.logistic._CPU_CHUNK_BYTES", 1)
    rng = np.random.default_rng(8)
    X = np.stack([make_data(n=250, d=7, seed=10 + i, offset=i)[0] for i in range(3)])
    y = (rng.random(250) < 0.4).astype(int)
    X[:, y == 1, 0] += np.array([0.2, 1.0, 3.0])[:, None]  # a signal that grows with depth
    coef, intercept = fit_logistic_layers(X, y, C=0.5, tol=1e-12)
    assert coef.shape == (3, 7) and intercept.shape == (3,) and coef.dtype == torch.float64
    for layer in range(3):
        probe = LinearProbe(C=0.5, tol=1e-12).fit(X[layer], y)
        np.testing.assert_allclose(coef[layer].numpy(), probe.coef_, rtol=1e-7, atol=1e-10)
        assert intercept[layer].item() == pytest.approx(probe.intercept_, rel=1e-7, abs=1e-10)
        expected = (probe.decision_function(X[layer]) > 0).astype(int)
        assert predict_layers(coef, intercept, X).numpy()[layer].tolist() == expected.tolist()
    logits = decision_layers(coef, intercept, torch.from_numpy(X).float())
    assert logits.shape == (3, 250)


def test_batched_layers_accept_per_layer_labels_and_float16():
    X, y = make_data(n=200, d=6, seed=9)
    X2 = np.stack([X, -X])
    Y = np.stack([y, 1 - y])
    coef, intercept = fit_logistic_layers(torch.from_numpy(X2).half(), Y)
    # layer 1 is layer 0 mirrored with flipped labels: the same probe
    np.testing.assert_allclose(coef[0].numpy(), coef[1].numpy(), rtol=1e-4, atol=1e-5)
    ref = LinearProbe().fit(torch.from_numpy(X).half().float(), y)  # the same rounded data
    np.testing.assert_allclose(coef[0].numpy(), ref.coef_, rtol=1e-4, atol=1e-6)


# --- the estimator contract -------------------------------------------------------------------


def test_standardize_uses_only_the_fit_rows():
    X, y = make_data(n=300, d=5, seed=11, offset=2.0)
    A, yA, B = X[:200], y[:200], X[200:] * 10 + 7
    probe = LinearProbe().fit(A, yA)
    np.testing.assert_allclose(probe.mean_, A.mean(0), rtol=1e-6)
    np.testing.assert_allclose(probe.scale_, A.std(0), rtol=1e-6)
    before = (probe.coef_.copy(), probe.intercept_, probe.mean_.copy())
    probe.predict(B), probe.score(B, y[200:])  # using other rows changes nothing
    assert np.array_equal(before[0], probe.coef_) and before[1] == probe.intercept_
    assert np.array_equal(before[2], probe.mean_)
    # ... and the fit on A is the fit on A's own standardization, reported in raw space
    Xs = (A - A.mean(0)) / A.std(0)
    raw = LinearProbe(standardize=False, tol=1e-12).fit(Xs, yA)
    np.testing.assert_allclose(LinearProbe(tol=1e-12).fit(A, yA).coef_, raw.coef_ / A.std(0), rtol=1e-6)


def test_coefficients_are_in_the_original_space():
    X, y = make_data(n=200, d=6, seed=12, offset=40.0)
    for probe in (LinearProbe(), LinearProbe(standardize=False), MassMeanProbe(), MassMeanProbe(covariance=True)):
        probe.fit(X, y)
        np.testing.assert_allclose(X @ probe.coef_ + probe.intercept_, probe.decision_function(X), rtol=1e-6, atol=1e-6)
        proba = probe.predict_proba(X)
        assert proba.shape == (200, 2)
        np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-probe.decision_function(X))))
        np.testing.assert_allclose(proba.sum(1), 1.0)
        assert probe.score(X, y) > 0.7
        u = unit_direction(probe)
        assert np.linalg.norm(u) == pytest.approx(1.0)
        np.testing.assert_allclose(u, probe.coef_ / np.linalg.norm(probe.coef_))


def test_large_offsets_do_not_change_the_direction():
    # Massive-activation-like features: a huge mean is absorbed by the intercept.
    X, y = make_data(n=300, d=6, seed=13)
    a = LinearProbe(standardize=False, tol=1e-10).fit(X, y)
    b = LinearProbe(standardize=False, tol=1e-10).fit(X + 1e4, y)
    np.testing.assert_allclose(b.coef_, a.coef_, rtol=1e-6)
    assert b.intercept_ == pytest.approx(a.intercept_ - 1e4 * a.coef_.sum(), rel=1e-6)


def test_probabilities_of_extreme_scores_do_not_overflow():
    probe = MassMeanProbe().fit(np.array([[0.0], [1.0]]), [0, 1])
    with np.errstate(over="raise"):
        np.testing.assert_allclose(probe.predict_proba(np.array([[-1e4], [1e4]])), [[1, 0], [0, 1]])


def test_any_two_labels_and_torch_input():
    X, y = make_data(n=120, d=4, seed=14)
    labels = np.where(y == 1, "true", "false")
    probe = LinearProbe().fit(torch.from_numpy(X).float(), labels)
    assert probe.classes_.tolist() == ["false", "true"]
    assert set(probe.predict(X).tolist()) <= {"false", "true"}
    assert probe.score(X, labels) == pytest.approx(LinearProbe().fit(X, y).score(X, y), abs=0.01)
    assert LinearProbe().fit(X, y == 1).classes_.tolist() == [False, True]
    assert probe.fit(X, labels) is probe  # fit returns self


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_constant_feature_gets_zero_weight(dtype):
    X, y = make_data(n=1000, d=3, seed=15)
    X[:, 1] = 1234.567
    X = torch.from_numpy(X).to(dtype)
    probe = LinearProbe().fit(X, y)
    assert probe.scale_[1] == 1.0 and probe.coef_[1] == 0.0
    without = LinearProbe().fit(X[:, [0, 2]], y)  # the same fit as without the column
    np.testing.assert_allclose(probe.coef_[[0, 2]], without.coef_, rtol=1e-5)


def test_ridge_standardizes_with_fit_rows_and_scores_r2():
    rng = np.random.default_rng(16)
    X = rng.normal(size=(80, 3)) * [1.0, 10.0, 0.1] + [0, 5, -5]
    target = X @ [1.0, 0.1, 10.0] + 0.01 * rng.normal(size=80)
    probe = RidgeProbe(alpha=1e-6).fit(X, target)
    np.testing.assert_allclose(probe.mean_, X.mean(0))
    np.testing.assert_allclose(probe.coef_, [1.0, 0.1, 10.0], rtol=1e-2)
    assert probe.score(X, target) > 0.999
    assert RidgeProbe(alpha=1e6).fit(X, target).score(X, target) < 0.1  # all shrunk away


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [LinearProbe, MassMeanProbe])
def test_single_class_is_an_error(make):
    with pytest.raises(ValueError, match="single class"):
        make().fit(np.ones((5, 2)), [1, 1, 1, 1, 1])


def test_three_classes_is_an_error():
    with pytest.raises(ValueError, match="3 classes"):
        LinearProbe().fit(np.ones((3, 2)), [0, 1, 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_counted(bad):
    X, y = make_data(n=50, d=4, seed=17)
    X[[3, 9], 1] = bad
    for probe in (LinearProbe(), LinearProbe(standardize=False, fit_intercept=False), MassMeanProbe(), RidgeProbe()):
        for data in (X, torch.from_numpy(X).float(), torch.from_numpy(X).half()):
            with pytest.raises(ValueError, match="2 of 50 rows .*first: row 3"):
                probe.fit(data, y)
    fitted = LinearProbe().fit(np.nan_to_num(X, posinf=0, neginf=0), y)
    with pytest.raises(ValueError, match="2 of 50 rows"):
        fitted.predict(X)


@pytest.mark.parametrize("one_layer_chunks", [False, True])
def test_non_finite_rows_in_layers_name_the_layers(one_layer_chunks, monkeypatch):
    if one_layer_chunks:  # the layers are prepared one at a time; the message still counts all
        monkeypatch.setattr("workbench.probing.logistic._CPU_CHUNK_BYTES", 1)
    X = np.random.default_rng(18).normal(size=(3, 40, 4))
    X[2, 5, 0] = np.nan
    X[1, 7, 3] = np.inf
    with pytest.raises(ValueError, match=r"2 of 40 rows .* in 2 of 3 layers .*first: row 5"):
        fit_logistic_layers(X, np.arange(40) % 2)


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        LinearProbe().fit(np.zeros((10, 2)), [0, 1] * 4 + [0])
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        RidgeProbe().fit(np.zeros((10, 2)), np.zeros(9))
    with pytest.raises(ValueError, match="rows"):
        fit_logistic_layers(np.zeros((2, 10, 3)), [0, 1] * 4)


def test_bad_inputs_and_unfitted_probes():
    with pytest.raises(ValueError, match="C must be"):
        LinearProbe(C=0).fit(np.eye(2), [0, 1])
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        LinearProbe().fit(np.zeros(4), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="features"):
        LinearProbe().fit(np.eye(4), [0, 1, 0, 1]).predict(np.eye(3))
    with pytest.raises(NotFittedError, match="not fitted"):
        LinearProbe().predict(np.eye(2))
    with pytest.raises(NotFittedError):
        unit_direction(MassMeanProbe())
    with pytest.raises(ValueError, match="no parameter"):
        LinearProbe().set_params(alpha=1)


def test_non_convergence_warns():
    X, y = make_data(n=100, d=5, seed=19)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        LinearProbe(max_iter=1).fit(X, y)
