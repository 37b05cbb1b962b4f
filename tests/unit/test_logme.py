"""LogME against closed-form and direct Gaussian evidence, plus ranking sanity checks."""

from __future__ import annotations

import numpy as np
import pytest

from tlcli.recommend.logme import logme_fits, logme_score, one_hot_targets

# A tiny data set small enough to check by hand: one feature, six samples, two classes.
TINY_FEATURE = np.array([[1.0], [2.0], [-1.0], [0.5], [-2.0], [3.0]])
TINY_LABELS = np.array([1, 1, 0, 1, 0, 1])
# Tight convergence for the exactness tests, so "converged alpha, beta" means a stationary point.
TIGHT = {"max_iter": 500, "tol": 1e-12}


def direct_log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float):
    """log N(y | 0, beta^-1 I + alpha^-1 F F^T) / n on the full n x n covariance."""
    n = features.shape[0]
    covariance = np.eye(n) / beta + features @ features.T / alpha
    _, logdet = np.linalg.slogdet(covariance)
    quadratic = target @ np.linalg.solve(covariance, target)
    return (-0.5 * (n * np.log(2 * np.pi) + logdet + quadratic)) / n


def closed_form_one_feature(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The d = 1 case by hand: determinant lemma and Sherman-Morrison on beta^-1 I + f f^T/alpha."""
    n = f.shape[0]
    s = f @ f  # ||f||^2
    fy = f @ y
    logdet = -n * np.log(beta) + np.log1p(beta * s / alpha)
    quadratic = beta * (y @ y) - beta**2 * fy**2 / (alpha + beta * s)
    return (-0.5 * (n * np.log(2 * np.pi) + logdet + quadratic)) / n


def test_tiny_case_matches_closed_form_and_direct_gaussian():
    fits = logme_fits(TINY_FEATURE, TINY_LABELS, **TIGHT)
    targets = one_hot_targets(TINY_LABELS)
    assert len(fits) == 2
    for fit, target in zip(fits, targets.T, strict=True):
        by_hand = closed_form_one_feature(TINY_FEATURE[:, 0], target, fit.alpha, fit.beta)
        direct = direct_log_evidence(TINY_FEATURE, target, fit.alpha, fit.beta)
        assert fit.evidence == pytest.approx(by_hand, abs=1e-9)
        assert fit.evidence == pytest.approx(direct, abs=1e-9)
    score = logme_score(TINY_FEATURE, TINY_LABELS, **TIGHT)
    assert score == pytest.approx(np.mean([fit.evidence for fit in fits]), abs=1e-12)


def test_tiny_case_fixed_point_for_one_feature_by_hand():
    # For d = 1 the MacKay updates are scalar: gamma = s / (s + a/b), m = f.y / (s + a/b),
    # alpha = gamma / m^2, beta = (n - gamma) / ||y - f m||^2; at the fixed point they reproduce
    # themselves (up to the 1e-5 guard in the denominators).
    f = TINY_FEATURE[:, 0]
    n = f.shape[0]
    fits = logme_fits(TINY_FEATURE, TINY_LABELS, **TIGHT)
    for fit, y in zip(fits, one_hot_targets(TINY_LABELS).T, strict=True):
        s, ratio = f @ f, fit.alpha / fit.beta
        gamma = s / (s + ratio)
        m = (f @ y) / (s + ratio)
        assert fit.alpha == pytest.approx(gamma / (m**2 + 1e-5), rel=1e-8)
        assert fit.beta == pytest.approx((n - gamma) / (((y - f * m) ** 2).sum() + 1e-5), rel=1e-8)


@pytest.mark.parametrize(
    ("num_samples", "num_dims", "duplicate_column"),
    [(12, 3, False), (5, 9, False), (15, 4, True)],
    ids=["n>d", "n<d", "rank-deficient"],
)
def test_evidence_equals_direct_gaussian_at_converged_precisions(
    num_samples, num_dims, duplicate_column
):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(num_samples, num_dims))
    if duplicate_column:
        features[:, -1] = features[:, 0]  # rank < d with n > d: the null space must not count
    labels = np.arange(num_samples) % 3
    fits = logme_fits(features, labels, **TIGHT)
    for fit, target in zip(fits, one_hot_targets(labels).T, strict=True):
        direct = direct_log_evidence(features, target, fit.alpha, fit.beta)
        assert fit.evidence == pytest.approx(direct, abs=1e-6)


def test_fixed_point_maximises_the_evidence():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 6))
    labels = (features[:, 0] > 0).astype(int)
    target = one_hot_targets(labels)[:, 1]
    fit = logme_fits(features, labels, **TIGHT)[1]
    at_fit = direct_log_evidence(features, target, fit.alpha, fit.beta)
    for alpha_mult, beta_mult in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)]:
        moved = direct_log_evidence(features, target, fit.alpha * alpha_mult, fit.beta * beta_mult)
        assert moved < at_fit


def test_default_iterations_are_close_to_converged():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(60, 8))
    labels = rng.integers(0, 3, size=60)
    assert logme_score(features, labels) == pytest.approx(
        logme_score(features, labels, **TIGHT), abs=1e-3
    )


def _blobs(rng: np.random.Generator, num_per_class: int, num_dims: int, spread: float):
    labels = np.repeat(np.arange(3), num_per_class)
    centers = rng.normal(size=(3, num_dims)) * 4.0
    features = centers[labels] + rng.normal(size=(labels.size, num_dims)) * spread
    return features, labels


def test_separable_features_score_higher_than_noise():
    rng = np.random.default_rng(3)
    separable, labels = _blobs(rng, num_per_class=30, num_dims=10, spread=0.5)
    noise = rng.normal(size=separable.shape) * separable.std()
    assert logme_score(separable, labels) > logme_score(noise, labels)


def test_adding_an_informative_column_raises_the_score():
    rng = np.random.default_rng(4)
    labels = np.repeat(np.arange(2), 40)
    noise = rng.normal(size=(labels.size, 8))
    informative = (labels * 2.0 - 1.0)[:, None] + rng.normal(size=(labels.size, 1)) * 0.1
    assert logme_score(np.hstack([noise, informative]), labels) > logme_score(noise, labels)


def test_invariant_to_renaming_and_permuting_labels():
    rng = np.random.default_rng(5)
    features, labels = _blobs(rng, num_per_class=20, num_dims=5, spread=1.0)
    renamed = np.array([7, -3, 42])[labels]  # arbitrary ints, different order of class ids
    permuted_classes = np.array([2, 0, 1])[labels]
    order = rng.permutation(labels.size)  # shuffling samples together with their labels
    score = logme_score(features, labels)
    assert logme_score(features, renamed) == pytest.approx(score, abs=1e-10)
    assert logme_score(features, permuted_classes) == pytest.approx(score, abs=1e-10)
    assert logme_score(features[order], labels[order]) == pytest.approx(score, abs=1e-10)


def test_float32_features_are_computed_in_float64():
    rng = np.random.default_rng(6)
    features, labels = _blobs(rng, num_per_class=15, num_dims=4, spread=1.0)
    as_float32 = features.astype(np.float32)
    assert logme_score(as_float32, labels) == pytest.approx(
        logme_score(as_float32.astype(np.float64), labels), abs=1e-12
    )


def test_rejects_mismatched_or_degenerate_input():
    with pytest.raises(ValueError, match="labels"):
        logme_score(np.ones((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match="2-D"):
        logme_score(np.ones(4), np.array([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="all zero"):
        logme_score(np.zeros((4, 2)), np.array([0, 1, 0, 1]))
