"""Each plot writes a PNG that opens; long class names grow the canvas instead of being clipped."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlcli.metrics import expected_calibration_error
from tlcli.plots import plot_confusion_matrix, plot_reliability_diagram, plot_training_curves

# Every figure is at least a few inches at the module's DPI; anything smaller means a broken plot.
MIN_SIDE_PX = 300


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= MIN_SIDE_PX and height >= MIN_SIDE_PX
    return width, height


def random_confusion(num_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 5, (num_classes, num_classes)) + np.diag(
        rng.integers(20, 60, num_classes)
    )


def test_no_backend_whatever_the_environment_asks(tmp_path: Path) -> None:
    """tlcli draws on Figures without pyplot: a user's MPLBACKEND or matplotlibrc (TkAgg,
    MacOSX on a desktop) can neither open windows nor need a display, and tlcli sets no
    backend for the rest of the process. A GUI backend falls back to Agg by itself on a
    headless machine, so the test asks for svg, which matplotlib honours everywhere; a fresh
    process, since this one has imported matplotlib already."""
    script = (
        "import sys, matplotlib\n"
        "from tlcli.plots import plot_training_curves\n"
        "rows = [{'epoch': 1, 'train_loss': 1.0, 'val_loss': 1.0, 'train_acc': 0.5, "
        "'val_acc': 0.5, 'lr': 1e-3}]\n"
        "plot_training_curves(rows, __import__('pathlib').Path(sys.argv[1]))\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**os.environ, "MPLBACKEND": "svg"}
    path = tmp_path / "curves.png"
    proc = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["svg", "False"]  # the user's choice, untouched and unused
    assert_png(path)


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_png(tmp_path: Path, normalize: bool) -> None:
    path = tmp_path / "sub" / "cm.png"
    returned = plot_confusion_matrix(
        random_confusion(3).tolist(), ["a", "b", "c"], path, normalize=normalize
    )
    assert returned == path
    assert_png(path)


def test_confusion_matrix_long_names_grow_canvas(tmp_path: Path) -> None:
    cm = random_confusion(10)
    short = assert_png(plot_confusion_matrix(cm, [f"c{i}" for i in range(10)], tmp_path / "s.png"))
    long_names = [f"longsleeve-category-name-{i}" for i in range(10)]
    long = assert_png(plot_confusion_matrix(cm, long_names, tmp_path / "l.png"))
    # bbox_inches="tight" must widen (y labels) and heighten (rotated x labels) the image
    assert long[0] > short[0] + 100 and long[1] > short[1] + 100


def test_confusion_matrix_grows_with_classes(tmp_path: Path) -> None:
    small = assert_png(
        plot_confusion_matrix(random_confusion(10), list("abcdefghij"), tmp_path / "10.png")
    )
    names = [f"k{i}" for i in range(30)]
    large = assert_png(plot_confusion_matrix(random_confusion(30), names, tmp_path / "30.png"))
    assert large[0] > 1.5 * small[0]


def test_confusion_matrix_rejects_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shape"):
        plot_confusion_matrix(np.zeros((3, 3)), ["a", "b"], tmp_path / "cm.png")


def test_reliability_diagram_png_with_empty_bins(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(4, 0.3), size=200)
    labels = rng.integers(0, 4, 200)
    ece, reliability = expected_calibration_error(probs, labels, n_bins=15)
    assert any(b["count"] == 0 for b in reliability)  # first bins lie below 1/C
    path = plot_reliability_diagram(reliability, ece, tmp_path / "rel.png")
    assert_png(path)


def history(epochs: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "val_loss": 2.2 / e,
            "train_acc": 1 - 0.5 / e,
            "val_acc": 0.9 - 0.5 / e,
            "lr": 1e-3 / e,
            "ema_val_acc": None if e == 1 else 0.9 - 0.4 / e,
            "update_ratio": None if e == 1 else 2e-3 / e,
        }
        for e in range(1, epochs + 1)
    ]


def test_training_curves_png(tmp_path: Path) -> None:
    width, height = assert_png(plot_training_curves(history(8), tmp_path / "curves.png"))
    assert width > 2 * height  # three panels side by side


def test_training_curves_without_optional_keys(tmp_path: Path) -> None:
    rows = [
        {k: v for k, v in h.items() if k not in ("ema_val_acc", "update_ratio")} for h in history(1)
    ]
    assert_png(plot_training_curves(rows, tmp_path / "one.png"))


def test_training_curves_reject_empty_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves([], tmp_path / "empty.png")


def test_confusion_matrix_png_stays_bounded_with_many_classes(tmp_path: Path) -> None:
    """400 classes made a 19,200 px figure (out of memory): past CM_MAX_PLOTTED_CLASSES the
    PNG shows the most confused classes only, at a bounded size."""
    from tlcli.plots import CM_MAX_PLOTTED_CLASSES, DPI

    n = 120
    cm = np.diag(np.full(n, 10))
    cm[7, 90] = cm[90, 7] = 3  # two confused pairs among many clean classes
    cm[100, 5] = 1
    width, height = assert_png(
        plot_confusion_matrix(cm, [f"k{i}" for i in range(n)], tmp_path / "cm.png")
    )
    limit = (CM_MAX_PLOTTED_CLASSES * 0.4 + 4) * DPI  # the cells plus labels and colour bar
    assert width < limit and height < limit, (width, height)


def test_most_confused_classes_ranks_by_errors_then_order() -> None:
    from tlcli.plots import most_confused_classes

    cm = np.diag([5, 5, 5, 5, 5])
    cm[3, 1] = 4  # classes 3 and 1: 4 errors each
    cm[4, 0] = 1  # classes 4 and 0: 1 each
    assert most_confused_classes(cm, 2) == [1, 3]
    assert most_confused_classes(cm, 3) == [0, 1, 3]  # the tie 0 / 4 goes to the earlier
    assert most_confused_classes(cm, 10) == [0, 1, 2, 3, 4]
