"""Classification metrics on plain numpy arrays: accuracy, F1, confusion, calibration.

Everything here is pure (arrays in, JSON-serialisable dicts out) so `tlcli evaluate` can write
the report to disk as-is and the tests can check each number by hand.
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped before the log so a confidently wrong prediction costs
# -log(1e-12) ~ 27.6 instead of an infinite mean loss.
PROB_FLOOR = 1e-12

# Top-5 is the conventional second accuracy (ImageNet); it is meaningless below 5 classes.
TOP_K = 5

# 15 equal-width bins is the setting of Guo et al. 2017, "On Calibration of Modern Neural
# Networks", which most reported ECE numbers follow.
DEFAULT_ECE_BINS = 15

# Enough off-diagonal cells to see the systematic confusions without listing noise.
DEFAULT_TOP_CONFUSED = 10


def _check_inputs(probs: np.ndarray, labels: np.ndarray) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C), got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be ({probs.shape[0]},), got shape {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    """Fraction of samples whose true class is among the k most probable; None when C < k."""
    if probs.shape[1] < k:
        return None
    top_k = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float(np.mean(np.any(top_k == labels[:, None], axis=1)))


def mean_nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (cross-entropy of the softmax output)."""
    p_true = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.clip(p_true, PROB_FLOOR, 1.0))))


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int counts; rows are the true class, columns the predicted class."""
    flat = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    counts = np.bincount(flat, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0/0 -> 0.0, the zero_division=0 convention of sklearn.
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _precision_recall_f1(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm)
    precision = _safe_ratio(tp, cm.sum(axis=0))
    recall = _safe_ratio(tp, cm.sum(axis=1))
    f1 = _safe_ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1


def per_class_metrics(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows = true)."""
    cm = np.asarray(cm)
    precision, recall, f1 = _precision_recall_f1(cm)
    support = cm.sum(axis=1)
    return [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that occur in the labels (support > 0)."""
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean F1 over classes that are true or predicted at least once.

    A class absent from both labels and predictions says nothing about the model, so it is left
    out, as sklearn does when it is not given an explicit label list.
    """
    cm = np.asarray(cm)
    _, _, f1 = _precision_recall_f1(cm)
    seen = (cm.sum(axis=1) + cm.sum(axis=0)) > 0
    return float(np.mean(f1[seen]))


def weighted_f1(cm: np.ndarray) -> float:
    """Mean F1 weighted by each class's support."""
    cm = np.asarray(cm)
    _, _, f1 = _precision_recall_f1(cm)
    support = cm.sum(axis=1)
    return float(np.sum(f1 * support) / support.sum())


def most_confused_pairs(cm: np.ndarray, classes: list[str], top: int) -> list[dict]:
    """Off-diagonal cells with count > 0, largest first (ties by true then predicted index)."""
    cm = np.asarray(cm)
    pairs = [
        (int(cm[t, p]), t, p)
        for t in range(len(cm))
        for p in range(len(cm))
        if t != p and cm[t, p] > 0
    ]
    pairs.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [
        {"true": classes[t], "predicted": classes[p], "count": count} for count, t, p in pairs[:top]
    ]


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_ECE_BINS
) -> tuple[float, list[dict]]:
    """ECE over equal-width bins of the max probability, and the per-bin reliability table.

    Bin i holds confidences in (lo, hi]; a confidence of exactly 0 goes to the first bin.
    Empty bins report None for confidence and accuracy.
    """
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    reliability = []
    for i in range(n_bins):
        in_bin = bin_index == i
        count = int(in_bin.sum())
        mean_conf = float(confidence[in_bin].mean()) if count else None
        mean_acc = float(correct[in_bin].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(mean_acc - mean_conf)
        reliability.append(
            {
                "lo": float(edges[i]),
                "hi": float(edges[i + 1]),
                "count": count,
                "confidence": mean_conf,
                "accuracy": mean_acc,
            }
        )
    return float(ece), reliability


def misclassified_samples(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    paths: list[str] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """Wrong predictions, most confident first: the likeliest label errors to inspect."""
    pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    if limit is not None:
        wrong = wrong[:limit]
    return [
        {
            "path": None if paths is None else str(paths[i]),
            "true": classes[labels[i]],
            "predicted": classes[pred[i]],
            "confidence": float(confidence[i]),
        }
        for i in wrong
    ]


def classification_report(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    paths: list[str] | None = None,
    n_bins: int = DEFAULT_ECE_BINS,
    top_confused: int = DEFAULT_TOP_CONFUSED,
    max_misclassified: int | None = None,
) -> dict:
    """Every evaluation number for (N, C) softmax probabilities and (N,) integer labels.

    The result holds only Python scalars, strings, None, lists and dicts, so it can be passed
    straight to `json.dumps`.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    _check_inputs(probs, labels)
    if len(classes) != probs.shape[1]:
        raise ValueError(f"{len(classes)} class names for {probs.shape[1]} probability columns")
    if paths is not None and len(paths) != len(labels):
        raise ValueError(f"{len(paths)} paths for {len(labels)} samples")

    pred = probs.argmax(axis=1)
    cm = confusion_matrix(pred, labels, len(classes))
    ece, reliability = expected_calibration_error(probs, labels, n_bins)
    return {
        "n": int(len(labels)),
        "top1": float(np.mean(pred == labels)),
        "top5": top_k_accuracy(probs, labels, TOP_K),
        "loss": mean_nll(probs, labels),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "weighted_f1": weighted_f1(cm),
        "per_class": per_class_metrics(cm, classes),
        "confusion_matrix": cm.tolist(),
        "most_confused": most_confused_pairs(cm, classes, top_confused),
        "ece": ece,
        "reliability": reliability,
        "misclassified": misclassified_samples(probs, labels, classes, paths, max_misclassified),
    }
