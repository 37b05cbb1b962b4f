"""LogME: how well frozen features explain the labels, as Bayesian linear-model evidence.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021. Each one-hot label column y is modelled as y = F w + noise with
w ~ N(0, alpha^-1 I) and noise ~ N(0, beta^-1 I); alpha and beta are set by the paper's
fixed-point iteration and the score is the log evidence log p(y | F, alpha, beta) / n,
averaged over the classes. Higher is better; values are comparable between backbones on
the same data set, not across data sets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Starting point of the fixed-point iteration; the paper's Algorithm 1 starts from 1, 1.
INITIAL_ALPHA = 1.0
INITIAL_BETA = 1.0
# Keeps alpha and beta finite when a target lies exactly in (or orthogonal to) the feature
# span; the reference implementation adds the same 1e-5 to both denominators.
DENOMINATOR_EPS = 1e-5
# Gram eigenvalues below this fraction of the largest (times the matrix size) are rounding
# noise, not directions of F: the same cut-off numpy.linalg.matrix_rank uses.
RANK_RTOL = np.finfo(np.float64).eps


@dataclass(frozen=True)
class FeatureSpectrum:
    """The part of F the evidence needs: squared singular values and the targets in F's basis."""

    sigma: np.ndarray  # (k,) nonzero eigenvalues of F^T F, k = rank(F)
    projected: np.ndarray  # (k, T) U^T Y: each target's coordinates in F's left singular basis
    residual_sq: np.ndarray  # (T,) ||Y - U U^T Y||^2: each target's energy outside F's span
    num_samples: int


@dataclass(frozen=True)
class EvidenceFit:
    """One target's maximised evidence and the precisions that maximise it."""

    alpha: float  # prior precision of the linear weights
    beta: float  # precision of the observation noise
    evidence: float  # log p(y | F, alpha, beta) / n


def one_hot_targets(labels: np.ndarray) -> np.ndarray:
    """(n, C) float64 indicator matrix; any label values, mapped to 0..C-1 in sorted order."""
    _, codes = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
    num_classes = int(codes.max()) + 1
    return (codes[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)


def feature_spectrum(features: np.ndarray, targets: np.ndarray) -> FeatureSpectrum:
    """Decompose F once via the Gram matrix of its smaller side and project every target."""
    feats = np.asarray(features, dtype=np.float64)
    num_samples, num_dims = feats.shape
    if num_samples <= num_dims:
        # F F^T = U diag(sigma) U^T is n x n: cheap when there are fewer samples than dims.
        sigma, basis = np.linalg.eigh(feats @ feats.T)
        keep = _nonzero_eigenvalues(sigma)
        sigma, left = sigma[keep], basis[:, keep]
        projected = left.T @ targets
    else:
        # F^T F = V diag(sigma) V^T is d x d, and U^T y = diag(sigma)^-1/2 V^T F^T y.
        sigma, basis = np.linalg.eigh(feats.T @ feats)
        keep = _nonzero_eigenvalues(sigma)
        sigma, right = sigma[keep], basis[:, keep]
        projected = (right.T @ (feats.T @ targets)) / np.sqrt(sigma)[:, None]
    residual_sq = np.maximum((targets**2).sum(axis=0) - (projected**2).sum(axis=0), 0.0)
    return FeatureSpectrum(sigma, projected, residual_sq, num_samples)


def _nonzero_eigenvalues(sigma: np.ndarray) -> np.ndarray:
    """Mask of Gram eigenvalues that are real directions of F, not rounding noise."""
    if sigma.size == 0 or sigma.max() <= 0.0:
        return np.zeros(sigma.shape, dtype=bool)
    return sigma > sigma.max() * sigma.size * RANK_RTOL


def posterior_fit_terms(
    sigma: np.ndarray, projected: np.ndarray, residual_sq: float, alpha: float, beta: float
) -> tuple[float, float, float]:
    """gamma, ||m||^2 and ||y - F m||^2 for the posterior mean m = beta A^-1 F^T y."""
    ratio = alpha / beta
    gamma = float((sigma / (sigma + ratio)).sum())  # effective number of well-fit directions
    weight_sq = float((sigma * projected**2 / (sigma + ratio) ** 2).sum())
    misfit_sq = float((projected**2 * (ratio / (sigma + ratio)) ** 2).sum() + residual_sq)
    return gamma, weight_sq, misfit_sq


def log_evidence(
    sigma: np.ndarray,
    projected: np.ndarray,
    residual_sq: float,
    num_samples: int,
    alpha: float,
    beta: float,
) -> float:
    """log N(y | 0, beta^-1 I + alpha^-1 F F^T) / n, from the spectrum in O(rank) time."""
    _, weight_sq, misfit_sq = posterior_fit_terms(sigma, projected, residual_sq, alpha, beta)
    # d/2 log(alpha) - 1/2 log|alpha I + beta F^T F| summed only over the rank of F: the d - k
    # null directions contribute log(alpha) to both and cancel (the reference's fixed-point
    # variant drops only one of them and is wrong when rank(F) < d, thuml/LogME issue #23).
    log_det_ratio = -0.5 * float(np.log1p(sigma * beta / alpha).sum())
    total = (
        0.5 * num_samples * np.log(beta)
        + log_det_ratio
        - 0.5 * beta * misfit_sq
        - 0.5 * alpha * weight_sq
        - 0.5 * num_samples * np.log(2.0 * np.pi)
    )
    return float(total) / num_samples


def fit_target_evidence(
    sigma: np.ndarray,
    projected: np.ndarray,
    residual_sq: float,
    num_samples: int,
    max_iter: int = 11,
    tol: float = 1e-3,
) -> EvidenceFit:
    """MacKay's fixed point for alpha, beta (paper's Algorithm 1), then the evidence there."""
    alpha, beta = INITIAL_ALPHA, INITIAL_BETA
    for _ in range(max_iter):
        ratio = alpha / beta
        gamma, weight_sq, misfit_sq = posterior_fit_terms(
            sigma, projected, residual_sq, alpha, beta
        )
        alpha = gamma / (weight_sq + DENOMINATOR_EPS)
        beta = (num_samples - gamma) / (misfit_sq + DENOMINATOR_EPS)
        if abs(alpha / beta - ratio) <= tol * ratio:
            break
    # Evaluate at the final alpha, beta with the posterior mean recomputed for them, so the
    # number is exactly the Gaussian marginal likelihood at those precisions.
    evidence = log_evidence(sigma, projected, residual_sq, num_samples, alpha, beta)
    return EvidenceFit(alpha=float(alpha), beta=float(beta), evidence=evidence)


def logme_fits(
    features: np.ndarray, labels: np.ndarray, max_iter: int = 11, tol: float = 1e-3
) -> list[EvidenceFit]:
    """One EvidenceFit per class (sorted label order) for the one-hot targets of `labels`."""
    feats = np.asarray(features, dtype=np.float64)
    labels_flat = np.asarray(labels).reshape(-1)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-D (samples, dims) array, got shape {feats.shape}")
    if labels_flat.shape[0] != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} feature rows but {labels_flat.shape[0]} labels")
    if feats.shape[0] == 0:
        raise ValueError("LogME needs at least one sample")
    targets = one_hot_targets(labels_flat)
    spectrum = feature_spectrum(feats, targets)
    if spectrum.sigma.size == 0:
        raise ValueError("features are all zero: LogME is undefined for a rank-0 feature matrix")
    return [
        fit_target_evidence(
            spectrum.sigma,
            spectrum.projected[:, column],
            float(spectrum.residual_sq[column]),
            spectrum.num_samples,
            max_iter=max_iter,
            tol=tol,
        )
        for column in range(targets.shape[1])
    ]


def logme_score(
    features: np.ndarray, labels: np.ndarray, max_iter: int = 11, tol: float = 1e-3
) -> float:
    """LogME of (n, d) features for integer labels: mean per-sample log evidence over classes."""
    fits = logme_fits(features, labels, max_iter=max_iter, tol=tol)
    return float(np.mean([fit.evidence for fit in fits]))
