"""Cheap probes of frozen features: linear and kNN cross-validated accuracy, head confidence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

# Inverse L2 strength of the linear probe: scikit-learn's default, kept fixed because on
# standardized features it is a sane middle and tuning it would need a nested CV per backbone.
PROBE_INVERSE_REGULARIZATION = 1.0
# lbfgs iterations for the probe: the default 100 often stops short on 1000+ dim features.
PROBE_MAX_ITER = 1000
# Stratified k-fold needs at least one sample of every class in each of at least two folds.
MIN_FOLDS = 2


def effective_folds(labels: np.ndarray, folds: int) -> int:
    """Number of CV folds to use: `folds`, reduced to the smallest class count, at least 2."""
    if folds < MIN_FOLDS:
        raise ValueError(f"folds must be at least {MIN_FOLDS}, got {folds}")
    classes, counts = np.unique(np.asarray(labels).reshape(-1), return_counts=True)
    if classes.size < 2:
        raise ValueError(f"probes need at least 2 classes, got {classes.size}")
    smallest = int(counts.min())
    if smallest < MIN_FOLDS:
        rare = classes[counts < MIN_FOLDS].tolist()
        raise ValueError(
            f"classes {rare} have fewer than {MIN_FOLDS} samples; "
            f"add images or drop those classes before probing"
        )
    return min(folds, smallest)


def cross_validated_accuracy(
    make_classifier: Callable[[int], ClassifierMixin],
    features: np.ndarray,
    labels: np.ndarray,
    folds: int,
    seed: int,
) -> float:
    """Fraction of samples predicted correctly when each is held out once (stratified k-fold).

    `make_classifier` gets the training-fold size and returns a fresh, unfitted estimator.
    """
    feats = np.asarray(features, dtype=np.float64)
    labels_flat = np.asarray(labels).reshape(-1)
    if feats.ndim != 2 or feats.shape[0] != labels_flat.shape[0]:
        raise ValueError(
            f"features must be (samples, dims) with one label per row; "
            f"got features {feats.shape} and {labels_flat.shape[0]} labels"
        )
    splitter = StratifiedKFold(
        n_splits=effective_folds(labels_flat, folds), shuffle=True, random_state=seed
    )
    correct = 0
    for train, test in splitter.split(feats, labels_flat):
        classifier = make_classifier(train.size)
        classifier.fit(feats[train], labels_flat[train])
        correct += int((classifier.predict(feats[test]) == labels_flat[test]).sum())
    return correct / labels_flat.shape[0]


def probe_accuracy(
    features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0
) -> float:
    """CV accuracy of a multinomial logistic-regression probe on standardized features."""

    def make_probe(_: int) -> ClassifierMixin:
        # The scaler sits inside the pipeline so its statistics come from the training fold only.
        return make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=PROBE_INVERSE_REGULARIZATION, solver="lbfgs", max_iter=PROBE_MAX_ITER
            ),
        )

    return cross_validated_accuracy(make_probe, features, labels, folds, seed)


def knn_accuracy(
    features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0
) -> float:
    """CV accuracy of a cosine k-nearest-neighbour classifier (features L2-normalised)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")

    def make_knn(train_size: int) -> ClassifierMixin:
        # On unit vectors Euclidean distance ranks neighbours exactly as cosine similarity does.
        return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=min(k, train_size)))

    return cross_validated_accuracy(make_knn, features, labels, folds, seed)


def head_confidence(logits: np.ndarray) -> dict[str, float]:
    """How sure the original (ImageNet) head is on these images: softmax max-prob and entropy."""
    scores = np.asarray(logits, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (samples, classes) array, got {scores.shape}")
    num_classes = scores.shape[1]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes of logits, got {num_classes}")
    shifted = scores - scores.max(axis=1, keepdims=True)  # avoids exp overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    probs = np.exp(log_probs)
    entropy = -(probs * log_probs).sum(axis=1)
    mean_entropy = float(entropy.mean())
    return {
        "mean_max_prob": float(probs.max(axis=1).mean()),
        "mean_entropy": mean_entropy,
        "normalized_entropy": mean_entropy / float(np.log(num_classes)),
    }
