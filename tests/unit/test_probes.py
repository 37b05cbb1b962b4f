"""Probes on synthetic Gaussian blobs: separable vs noise, fold reduction, head confidence."""

from __future__ import annotations

import numpy as np
import pytest

from tlcli.recommend.probes import (
    effective_folds,
    head_confidence,
    knn_accuracy,
    probe_accuracy,
)

NUM_CLASSES = 4
CHANCE = 1.0 / NUM_CLASSES


def _blobs(seed: int, num_per_class: int = 30, num_dims: int = 16, spread: float = 0.5):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), num_per_class)
    centers = rng.normal(size=(NUM_CLASSES, num_dims)) * 3.0
    return centers[labels] + rng.normal(size=(labels.size, num_dims)) * spread, labels


def _noise(seed: int, num_per_class: int = 50, num_dims: int = 16):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(NUM_CLASSES), num_per_class)
    return rng.normal(size=(labels.size, num_dims)), labels


@pytest.mark.parametrize("accuracy", [probe_accuracy, knn_accuracy])
def test_separable_blobs_are_probed_accurately(accuracy):
    features, labels = _blobs(seed=0)
    assert accuracy(features, labels) > 0.95


@pytest.mark.parametrize("accuracy", [probe_accuracy, knn_accuracy])
def test_pure_noise_is_near_chance(accuracy):
    features, labels = _noise(seed=1)
    assert abs(accuracy(features, labels) - CHANCE) < 0.12


@pytest.mark.parametrize("accuracy", [probe_accuracy, knn_accuracy])
def test_accuracy_is_reproducible_for_a_seed(accuracy):
    features, labels = _noise(seed=2, num_per_class=15)
    assert accuracy(features, labels, seed=3) == accuracy(features, labels, seed=3)


def test_knn_uses_cosine_so_feature_scale_per_sample_does_not_matter():
    features, labels = _blobs(seed=4, spread=1.5)
    scales = np.random.default_rng(5).uniform(0.1, 10.0, size=(labels.size, 1))
    assert knn_accuracy(features * scales, labels) == knn_accuracy(features, labels)


def test_labels_may_be_arbitrary_values():
    features, labels = _blobs(seed=6)
    renamed = np.array(["cat", "dog", "owl", "yak"])[labels]
    assert probe_accuracy(features, renamed) == probe_accuracy(features, labels)


@pytest.mark.parametrize(
    ("class_counts", "folds", "expected"),
    [
        ((10, 10, 10), 5, 5),  # enough samples: folds unchanged
        ((10, 3, 10), 5, 3),  # reduced to the smallest class
        ((2, 8), 5, 2),  # the minimum
        ((7, 9), 2, 2),
    ],
)
def test_effective_folds(class_counts, folds, expected):
    labels = np.repeat(np.arange(len(class_counts)), class_counts)
    assert effective_folds(labels, folds) == expected


def test_probes_run_when_a_class_is_smaller_than_folds():
    features, labels = _blobs(seed=7, num_per_class=10)
    keep = np.concatenate([np.flatnonzero(labels != 0), np.flatnonzero(labels == 0)[:3]])
    assert probe_accuracy(features[keep], labels[keep], folds=5) > 0.9
    assert knn_accuracy(features[keep], labels[keep], k=5, folds=5) > 0.9


@pytest.mark.parametrize("accuracy", [probe_accuracy, knn_accuracy])
def test_class_with_one_sample_is_a_clear_error(accuracy):
    features, labels = _blobs(seed=8, num_per_class=6)
    labels = labels.copy()
    labels[0] = 99  # a class with a single image
    with pytest.raises(ValueError, match=r"classes \[99\] have fewer than 2 samples"):
        accuracy(features, labels)


def test_single_class_and_bad_folds_are_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        effective_folds(np.zeros(10, dtype=int), 5)
    with pytest.raises(ValueError, match="folds must be at least 2"):
        effective_folds(np.repeat([0, 1], 5), 1)


def test_head_confidence_one_hot_like_logits():
    logits = np.full((8, 1000), -20.0)
    logits[np.arange(8), np.arange(8) * 7] = 20.0
    confidence = head_confidence(logits)
    assert confidence["mean_max_prob"] > 0.999
    assert confidence["mean_entropy"] < 1e-3
    assert confidence["normalized_entropy"] < 1e-3


def test_head_confidence_uniform_logits():
    confidence = head_confidence(np.full((5, 1000), 3.7))
    assert confidence["mean_max_prob"] == pytest.approx(1e-3)
    assert confidence["mean_entropy"] == pytest.approx(np.log(1000))
    assert confidence["normalized_entropy"] == pytest.approx(1.0)


def test_head_confidence_two_classes_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]; entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) nats.
    confidence = head_confidence(np.array([[0.0, np.log(3.0)]]))
    entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
    assert confidence["mean_max_prob"] == pytest.approx(0.75)
    assert confidence["mean_entropy"] == pytest.approx(entropy)
    assert confidence["normalized_entropy"] == pytest.approx(entropy / np.log(2))


def test_head_confidence_is_stable_for_huge_logits():
    confidence = head_confidence(np.array([[1e4, 0.0, -1e4]]))
    assert all(np.isfinite(value) for value in confidence.values())
    assert confidence["mean_max_prob"] == pytest.approx(1.0)
