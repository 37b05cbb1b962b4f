"""PNG figures for `tlcli evaluate` and `tlcli train`: confusion matrix, reliability, curves.

Each function takes plain values (lists, arrays, the report dicts of `tlcli.metrics`), writes one
PNG and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Figures, not pyplot: they only go to files, so no GUI backend is chosen (the CLI runs on
# servers without a display) and no process-wide matplotlib state is set.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from mpl_toolkits.axes_grid1 import make_axes_locatable

from tlcli.errors import printable

# Screen-friendly resolution; a 50-class matrix at this DPI is still under 3000 px wide.
DPI = 120

# Inches per matrix cell: room for a 3-digit count at the smallest annotation font.
CM_CELL_INCHES = 0.4
# Floor on the matrix side so a 2-class matrix does not turn into a postage stamp.
CM_MIN_SIDE_INCHES = 5.0
# Font shrinks with the class count; 8 pt still fits a 4-digit count in a 0.4-inch cell.
CM_MAX_FONT = 11.0
CM_MIN_FONT = 8.0
CM_FONT_STEP_PER_CLASS = 0.1
# Past this many classes zero cells stay blank, so the few real confusions stand out.
CM_ANNOTATE_ZEROS_UP_TO = 20
# Past this many classes the PNG shows only the most confused ones: 400 classes made a
# 19,200 px figure with 160,000 annotations (out of memory). 50 x 0.4 in x 120 dpi = 2400 px.
CM_MAX_PLOTTED_CLASSES = 50
# Colour fraction above which the annotation switches to white to stay legible on dark cells.
CM_DARK_CELL = 0.5

# The lecture's rule of thumb: an update/weight ratio near 1e-3 per step means a healthy LR.
TARGET_UPDATE_RATIO = 1e-3


def save_figure(fig: Figure, path: Path) -> Path:
    """Write the figure as a PNG (parents made) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # bbox_inches="tight" grows the canvas to fit long tick labels instead of clipping them.
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def most_confused_classes(counts: np.ndarray, limit: int) -> list[int]:
    """Indices of the `limit` classes with the most errors (as true or as predicted class),
    in their original order; ties go to the earlier class."""
    errors = counts.sum(axis=0) + counts.sum(axis=1) - 2 * np.diag(counts)
    ranked = sorted(range(len(counts)), key=lambda i: (-int(errors[i]), i))
    return sorted(ranked[:limit])


def _label(text: str) -> str:
    """A name as a plot label: printable (FreeType cannot draw a non-UTF-8 byte's surrogate)
    and with $ taken literally (matplotlib reads $...$ as math, and bad math fails the plot)."""
    return printable(text).replace("$", r"\$")


def plot_confusion_matrix(
    cm: list[list[int]] | np.ndarray,
    classes: list[str],
    path: Path,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Heatmap of true (rows) vs predicted (columns) with the count in every cell.

    With `normalize` the colour is the row fraction (the per-class recall on the diagonal), so
    rare classes are as visible as common ones; the annotations always show raw counts.
    """
    counts = np.asarray(cm, dtype=np.int64)
    classes, title = [_label(c) for c in classes], _label(title)
    n = len(classes)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {n} classes")
    colour = _row_normalised(counts) if normalize else counts.astype(np.float64)
    vmax = 1.0 if normalize else max(float(colour.max()), 1.0)
    if n > CM_MAX_PLOTTED_CLASSES:  # colours stay fractions of the whole true class
        keep = most_confused_classes(counts, CM_MAX_PLOTTED_CLASSES)
        counts, colour = counts[np.ix_(keep, keep)], colour[np.ix_(keep, keep)]
        title = (
            f"{title}\nthe {len(keep)} most confused of {n} classes "
            "(the whole matrix is in report.json)"
        )
        classes, n = [classes[i] for i in keep], len(keep)

    font = float(np.clip(CM_MAX_FONT - CM_FONT_STEP_PER_CLASS * n, CM_MIN_FONT, CM_MAX_FONT))
    side = max(CM_MIN_SIDE_INCHES, CM_CELL_INCHES * n)
    # The matrix fills the whole figure so its cells have a known size; labels, title and
    # colour bar lie outside it and bbox_inches="tight" in save_figure grows the PNG to hold them.
    fig = Figure(figsize=(side, side))
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    image = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    bar_ax = make_axes_locatable(ax).append_axes("right", size=0.25, pad=0.2)
    bar = fig.colorbar(image, cax=bar_ax)
    bar.set_label("fraction of true class" if normalize else "count")

    for t in range(n):
        for p in range(n):
            if counts[t, p] == 0 and n > CM_ANNOTATE_ZEROS_UP_TO:
                continue
            ax.text(
                p,
                t,
                str(counts[t, p]),
                ha="center",
                va="center",
                fontsize=font,
                color="white" if colour[t, p] / vmax > CM_DARK_CELL else "black",
            )

    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(
        classes,
        rotation=45,
        ha="right",
        rotation_mode="anchor",
        fontsize=font,
    )
    ax.set_yticklabels(classes, fontsize=font)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    return save_figure(fig, path)


def plot_reliability_diagram(reliability: list[dict], ece: float, path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts underneath.

    Bars below the diagonal mean over-confidence; the red gap is what ECE averages.
    """
    lo = np.array([b["lo"] for b in reliability], dtype=np.float64)
    hi = np.array([b["hi"] for b in reliability], dtype=np.float64)
    width = hi - lo
    counts = np.array([b["count"] for b in reliability], dtype=np.int64)
    # Empty bins carry None; they are drawn as zero-height bars and get no gap bar.
    accuracy = np.array([b["accuracy"] or 0.0 for b in reliability], dtype=np.float64)
    confidence = np.array([b["confidence"] or 0.0 for b in reliability], dtype=np.float64)
    filled = counts > 0

    fig = Figure(figsize=(6, 7))
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1], "hspace": 0.08}
    )
    top.bar(
        lo,
        accuracy,
        width=width,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    gap_bottom = np.minimum(accuracy, confidence)
    # Hatch without fill so the gap reads the same above and on top of the accuracy bar.
    top.bar(
        lo[filled],
        np.abs(confidence - accuracy)[filled],
        bottom=gap_bottom[filled],
        width=width[filled],
        align="edge",
        facecolor="none",
        edgecolor="tab:red",
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.set_title(f"Reliability diagram (ECE = {ece:.3f})", pad=28)
    # Above the axes: bars fill the upper left when under-confident, the lower right always.
    top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize="small")
    top.grid(alpha=0.3)

    bottom.bar(lo, counts, width=width, align="edge", color="gray", edgecolor="black")
    bottom.set_xlabel("Confidence (max probability)")
    bottom.set_ylabel("Samples")
    bottom.grid(alpha=0.3)
    return save_figure(fig, path)


def _series(history: list[dict], key: str) -> np.ndarray:
    # Missing or None entries become NaN so matplotlib leaves a gap instead of failing.
    return np.array([np.nan if h.get(key) is None else h[key] for h in history], dtype=float)


def plot_training_curves(history: list[dict], path: Path) -> Path:
    """Loss, accuracy and learning rate (with the update/weight ratio) per epoch."""
    if not history:
        raise ValueError("no epochs to plot")
    epochs = _series(history, "epoch")
    marker = {"marker": "o", "markersize": 3}
    fig = Figure(figsize=(16, 4.5))
    loss_ax, acc_ax, lr_ax = fig.subplots(1, 3)

    loss_ax.plot(epochs, _series(history, "train_loss"), label="train", **marker)
    loss_ax.plot(epochs, _series(history, "val_loss"), label="val", **marker)
    loss_ax.set_title("Loss")
    loss_ax.set_ylabel("cross-entropy")

    acc_ax.plot(epochs, _series(history, "train_acc"), label="train", **marker)
    acc_ax.plot(epochs, _series(history, "val_acc"), label="val", **marker)
    ema = _series(history, "ema_val_acc")
    if not np.all(np.isnan(ema)):
        acc_ax.plot(epochs, ema, label="val (EMA weights)", linestyle="--", **marker)
    acc_ax.set_title("Accuracy")
    acc_ax.set_ylabel("top-1")

    lr_line = lr_ax.plot(epochs, _series(history, "lr"), color="tab:green", label="lr", **marker)
    lr_ax.set_title("Learning rate and update/weight ratio")
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    handles = list(lr_line)
    ratio = _series(history, "update_ratio")
    if np.any(np.isfinite(ratio) & (ratio > 0)):
        ratio_ax = lr_ax.twinx()
        handles += ratio_ax.plot(
            epochs, ratio, color="tab:purple", label="update/weight ratio", **marker
        )
        handles.append(
            ratio_ax.axhline(
                TARGET_UPDATE_RATIO,
                color="tab:purple",
                linestyle="--",
                alpha=0.6,
                label=f"target {TARGET_UPDATE_RATIO:g}",
            )
        )
        ratio_ax.set_yscale("log")
        ratio_ax.set_ylabel("update / weight")
    # Below the panel: two y scales make "best" placement blind to half the lines.
    lr_ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)

    for ax in (loss_ax, acc_ax, lr_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        # Half an epoch of margin keeps a single-epoch run on whole-number ticks.
        ax.set_xlim(np.nanmin(epochs) - 0.5, np.nanmax(epochs) + 0.5)
        ax.grid(alpha=0.3)
    loss_ax.legend(loc="best")
    acc_ax.legend(loc="best")
    fig.tight_layout()
    return save_figure(fig, path)
