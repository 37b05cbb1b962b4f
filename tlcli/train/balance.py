"""Class imbalance: loss weights, a class-balanced sampler, or logit adjustment.

- weights: cross-entropy weighted by N / (C * n_c) (scikit-learn's "balanced"), so every
  class carries the same total weight;
- sampler: each epoch draws N train images with replacement, class c with probability 1/C;
- logit-adjust (Menon et al., ICLR 2021): train on logits + tau * log(prior), predict with
  the plain logits, which then estimate the balanced (uniform-prior) posterior;
- auto: nothing unless the largest class has IMBALANCE_RATIO_AUTO x the smallest's images,
  then the method whose linear probe scores the highest val balanced accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tlcli.choices import BALANCES

METHODS = tuple(name for name in BALANCES if name != "auto")  # auto picks one of these
# Largest / smallest class in train above which auto acts. Below it a balanced loss mostly
# trades accuracy for nothing; clothing_small (795 t-shirts vs 112 skirts) is 7.1.
IMBALANCE_RATIO_AUTO = 3.0
# Candidates auto compares on the probe; the sampler is left out: on a full-batch fit it is
# the weighted loss again, and in training it is the same objective with more noise.
AUTO_CANDIDATES = ("none", "weights", "logit-adjust")
LOGIT_ADJUST_TAU = 1.0  # Menon et al.'s default


def class_counts(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def imbalance_ratio(counts: np.ndarray) -> float:
    present = counts[counts > 0]
    return float(present.max() / present.min()) if len(present) else 1.0


def class_weights(counts: np.ndarray) -> torch.Tensor:
    """N / (C * n_c) per class: a class with half the images gets twice the weight."""
    counts = np.maximum(counts.astype(np.float64), 1.0)
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def logit_adjustment(counts: np.ndarray, tau: float = LOGIT_ADJUST_TAU) -> torch.Tensor:
    """tau * log(prior) per class, added to the logits in the training loss only."""
    prior = np.maximum(counts.astype(np.float64), 1.0) / max(counts.sum(), 1)
    return torch.tensor(tau * np.log(prior), dtype=torch.float32)


def sample_weights(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-image draw probability of the class-balanced sampler (sums to 1)."""
    per_class = 1.0 / np.maximum(counts.astype(np.float64), 1.0)
    weights = per_class[np.asarray(labels, dtype=np.int64)]
    return weights / weights.sum()


@dataclass(frozen=True)
class LossBalance:
    """What the training loss and the data order need for one method."""

    method: str
    class_weight: torch.Tensor | None = None  # cross-entropy weight per class
    logit_bias: torch.Tensor | None = None  # added to the logits in the loss only
    sample_weights: np.ndarray | None = None  # sampler: per-image probabilities


def loss_balance(method: str, labels: np.ndarray, num_classes: int) -> LossBalance:
    counts = class_counts(labels, num_classes)
    if method == "weights":
        return LossBalance(method, class_weight=class_weights(counts))
    if method == "logit-adjust":
        return LossBalance(method, logit_bias=logit_adjustment(counts))
    if method == "sampler":
        return LossBalance(method, sample_weights=sample_weights(labels, counts))
    return LossBalance("none")


def needs_balance(counts: np.ndarray) -> bool:
    return imbalance_ratio(counts) >= IMBALANCE_RATIO_AUTO


def balanced_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes present in labels."""
    recalls = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            recalls.append((pred[mask] == c).double().mean().item())
    return float(np.mean(recalls)) if recalls else 0.0
