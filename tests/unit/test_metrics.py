"""Hand-computed checks of tlcli.metrics, then sklearn as an independent second opinion."""

import json
import math

import numpy as np
import pytest

from tlcli.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    per_class_metrics,
)

CLASSES = ["cat", "dog", "fox"]


def one_hot_probs(pred: list[int], num_classes: int, confidence: float) -> np.ndarray:
    """Rows giving `confidence` to the predicted class and the rest spread evenly."""
    rest = (1.0 - confidence) / (num_classes - 1)
    probs = np.full((len(pred), num_classes), rest)
    probs[np.arange(len(pred)), pred] = confidence
    return probs


# labels 0,0,0,1,1,2 predicted as 0,1,1,1,0,2:
#   confusion rows (true) = [1,2,0], [1,1,0], [0,0,1]; column sums (predicted) = 2,3,1
#   precision 1/2, 1/3, 1   recall 1/3, 1/2, 1   F1 2/5, 2/5, 1
LABELS = np.array([0, 0, 0, 1, 1, 2])
PRED = [0, 1, 1, 1, 0, 2]


@pytest.fixture
def report() -> dict:
    probs = one_hot_probs(PRED, 3, confidence=0.6)
    return classification_report(probs, LABELS, CLASSES, paths=[f"img{i}.jpg" for i in range(6)])


def test_confusion_matrix_rows_are_true_columns_predicted() -> None:
    cm = confusion_matrix(np.array(PRED), LABELS, 3)
    assert cm.tolist() == [[1, 2, 0], [1, 1, 0], [0, 0, 1]]


def test_per_class_precision_recall_f1_by_hand(report: dict) -> None:
    expected = [
        ("cat", 1 / 2, 1 / 3, 2 / 5, 3),
        ("dog", 1 / 3, 1 / 2, 2 / 5, 2),
        ("fox", 1.0, 1.0, 1.0, 1),
    ]
    for row, (name, precision, recall, f1, support) in zip(
        report["per_class"], expected, strict=True
    ):
        assert row["class"] == name
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support


def test_summary_numbers_by_hand(report: dict) -> None:
    assert report["n"] == 6
    assert report["top1"] == pytest.approx(3 / 6)
    assert report["top5"] is None  # only 3 classes
    assert report["macro_f1"] == pytest.approx((0.4 + 0.4 + 1.0) / 3)
    assert report["weighted_f1"] == pytest.approx((3 * 0.4 + 2 * 0.4 + 1 * 1.0) / 6)
    assert report["balanced_accuracy"] == pytest.approx((1 / 3 + 1 / 2 + 1) / 3)
    # 3 right at p=0.6, 3 wrong with the true class at p=0.2
    assert report["loss"] == pytest.approx(-(3 * math.log(0.6) + 3 * math.log(0.2)) / 6)
    # every confidence is 0.6 in one bin whose accuracy is 0.5
    assert report["ece"] == pytest.approx(0.1)
    assert report["confusion_matrix"] == [[1, 2, 0], [1, 1, 0], [0, 0, 1]]


def test_most_confused_sorted_by_count(report: dict) -> None:
    assert report["most_confused"] == [
        {"true": "cat", "predicted": "dog", "count": 2},
        {"true": "dog", "predicted": "cat", "count": 1},
    ]
    probs = one_hot_probs(PRED, 3, confidence=0.6)
    assert len(classification_report(probs, LABELS, CLASSES, top_confused=1)["most_confused"]) == 1


def test_misclassified_most_confident_first_with_paths() -> None:
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1])
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    wrong = classification_report(probs, labels, ["x", "y"], paths=paths)["misclassified"]
    assert [w["path"] for w in wrong] == ["c.jpg", "b.jpg", "d.jpg"]
    assert wrong[0] == {"path": "c.jpg", "true": "x", "predicted": "y", "confidence": 0.8}
    limited = classification_report(probs, labels, ["x", "y"], max_misclassified=2)
    assert [w["confidence"] for w in limited["misclassified"]] == [0.8, 0.7]
    assert limited["misclassified"][0]["path"] is None


def test_top5_counts_true_class_in_five_most_probable() -> None:
    # 6 classes; sample 0's true class is ranked 5th, sample 1's is ranked last
    probs = np.array(
        [
            [0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
            [0.30, 0.25, 0.20, 0.15, 0.07, 0.03],
        ]
    )
    labels = np.array([4, 5])
    report = classification_report(probs, labels, [f"c{i}" for i in range(6)])
    assert report["top1"] == 0.0
    assert report["top5"] == pytest.approx(0.5)


def test_ece_all_confidence_08_half_right_is_03() -> None:
    probs = np.tile([0.8, 0.2], (4, 1))
    labels = np.array([0, 0, 1, 1])
    ece, reliability = expected_calibration_error(probs, labels, n_bins=15)
    assert ece == pytest.approx(0.3)
    filled = [b for b in reliability if b["count"]]
    assert len(filled) == 1
    assert filled[0]["lo"] < 0.8 <= filled[0]["hi"]
    assert filled[0]["confidence"] == pytest.approx(0.8)
    assert filled[0]["accuracy"] == pytest.approx(0.5)
    assert len(reliability) == 15
    assert all(b["confidence"] is None for b in reliability if not b["count"])


def test_ece_weights_bins_by_count() -> None:
    # two right at 0.9 (gap 0.1), two wrong at 0.6 (gap 0.6): ECE = 0.5*0.1 + 0.5*0.6
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 0])
    ece, reliability = expected_calibration_error(probs, labels, n_bins=10)
    assert ece == pytest.approx(0.35)
    assert sum(b["count"] for b in reliability) == 4


def test_zero_division_and_absent_classes() -> None:
    # 4 classes: "fox" never true but predicted once, "owl" neither true nor predicted
    labels = np.array([0, 0, 1, 1])
    probs = one_hot_probs([0, 2, 1, 1], 4, confidence=0.7)
    report = classification_report(probs, labels, ["cat", "dog", "fox", "owl"])
    fox, owl = report["per_class"][2], report["per_class"][3]
    assert fox == {"class": "fox", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert owl["precision"] == 0.0 and owl["support"] == 0
    assert report["balanced_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # fox, owl left out
    assert report["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # owl left out


def test_per_class_metrics_matches_report_building_block() -> None:
    rows = per_class_metrics(np.array([[2, 0], [1, 1]]), ["a", "b"])
    assert rows[0]["precision"] == pytest.approx(2 / 3)
    assert rows[1]["recall"] == pytest.approx(1 / 2)


def test_report_is_json_serialisable(report: dict) -> None:
    decoded = json.loads(json.dumps(report))
    assert decoded["confusion_matrix"] == report["confusion_matrix"]
    assert set(report) == {
        "n", "top1", "top5", "loss", "balanced_accuracy", "macro_f1", "weighted_f1",
        "per_class", "confusion_matrix", "most_confused", "ece", "reliability", "misclassified",
    }  # fmt: skip


def test_rejects_mismatched_class_names() -> None:
    with pytest.raises(ValueError, match="class names"):
        classification_report(one_hot_probs(PRED, 3, 0.6), LABELS, ["cat", "dog"])


@pytest.mark.parametrize("seed,starve_last_class", [(0, False), (1, True)])
def test_agrees_with_sklearn(seed: int, starve_last_class: bool) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, c = 300, 7
    probs = rng.dirichlet(np.full(c, 0.5), size=n)
    if starve_last_class:  # never predicted: exercises precision's zero division
        probs[:, -1] = 1e-4
        probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, c, size=n)
    pred = probs.argmax(axis=1)
    report = classification_report(probs, labels, [f"c{i}" for i in range(c)])
    every = list(range(c))

    assert report["confusion_matrix"] == sk.confusion_matrix(labels, pred, labels=every).tolist()
    precision, recall, f1, support = sk.precision_recall_fscore_support(
        labels, pred, labels=every, zero_division=0
    )
    assert [r["precision"] for r in report["per_class"]] == pytest.approx(precision)
    assert [r["recall"] for r in report["per_class"]] == pytest.approx(recall)
    assert [r["f1"] for r in report["per_class"]] == pytest.approx(f1)
    assert [r["support"] for r in report["per_class"]] == support.tolist()
    assert report["macro_f1"] == pytest.approx(
        sk.f1_score(labels, pred, average="macro", zero_division=0)
    )
    assert report["weighted_f1"] == pytest.approx(
        sk.f1_score(labels, pred, average="weighted", zero_division=0)
    )
    assert report["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(labels, pred))
    assert report["top1"] == pytest.approx(sk.accuracy_score(labels, pred))
    assert report["top5"] == pytest.approx(
        sk.top_k_accuracy_score(labels, probs, k=5, labels=every)
    )
    assert report["loss"] == pytest.approx(sk.log_loss(labels, probs, labels=every))
