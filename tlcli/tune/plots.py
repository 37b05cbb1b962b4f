"""PNG figures of the search: the LR range test curve, and val accuracy vs LR and weight decay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from tlcli.plots import save_figure

# The y axis shows the fall of the smoothed loss (its highest point before the minimum down
# to the minimum) with margins in units of that fall. The blow-up after the minimum leaves
# the plot at the top: drawn in full it would squash the useful part into a thin band.
Y_MARGIN_BELOW = 0.15
Y_MARGIN_ABOVE = 0.6
# The tune plot's x axis: the searched range, widened by this factor on a log scale.
RANGE_MARGIN = 1.3


def loss_axis_limits(smooth: np.ndarray) -> tuple[float, float]:
    low = float(smooth.min())
    high = float(smooth[: int(smooth.argmin()) + 1].max())
    fall = high - low or abs(low) * 0.1 or 1.0
    return low - Y_MARGIN_BELOW * fall, high + Y_MARGIN_ABOVE * fall


def plot_lr_find(result: dict[str, Any], path: Path) -> Path:
    """Loss vs LR (log x): raw batch losses faint, the smoothed loss, both suggestions."""
    curve = result["curve"]
    lrs, raw, smooth = (np.asarray(curve[k]) for k in ("lr", "loss", "smoothed_loss"))
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    ax.plot(lrs, raw, color="tab:blue", alpha=0.25, linewidth=1, label="batch loss")
    ax.plot(lrs, smooth, color="tab:blue", linewidth=2, label="smoothed loss")
    marks = (
        ("valley", "tab:green", "o", "valley (suggested)"),
        ("steepest", "tab:red", "v", "steepest descent"),
    )
    for key, colour, marker, label in marks:
        ax.plot(
            result[key],
            result[f"{key}_loss"],
            marker=marker,
            markersize=10,
            color=colour,
            linestyle="none",
            label=f"{label}: {result[key]:.2e}",
        )
    ax.axvline(
        result["configured_lr"],
        color="gray",
        linestyle=":",
        label=f"configured optim.lr {result['configured_lr']:.0e}",
    )
    ax.set_ylim(*loss_axis_limits(smooth))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate of the head (log scale)")
    ax.set_ylabel("training loss")
    backbone = (
        f", backbone x{result['backbone_lr_mult']:g}" if result["strategy"] != "head-only" else ""
    )
    ax.set_title(
        f"LR range test: {result['strategy']}{backbone}, {result['optimizer']}, "
        f"{result['steps']} steps ({result['stop_reason']})",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path)


def plot_tune_trials(
    rows: list[dict[str, Any]],
    path: Path,
    best: int | None,
    space: dict[str, Any] | None = None,
) -> Path:
    """Val accuracy vs LR and vs weight decay (log x, the searched range shaded); pruned
    trials at their last epoch. One legend under both panels, so it hides no point."""
    params = ("lr", "weight_decay")
    space = space or {}
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, len(params), sharey=True)
    styles = (
        ("COMPLETE", "tab:blue", "o", "complete"),
        ("PRUNED", "tab:gray", "x", "pruned (val acc at its last epoch)"),
    )
    handles: dict[str, Any] = {}
    for ax, name in zip(axes, params, strict=True):
        shown = [r for r in rows if r["value"] is not None and name in r["params"]]
        spec = space.get(name) or {}
        if spec.get("low") and spec.get("high"):
            low, high = spec["low"], spec["high"]
            handles["range"] = ax.axvspan(low, high, color="tab:green", alpha=0.07, lw=0)
            ax.set_xlim(low / RANGE_MARGIN, high * RANGE_MARGIN)
        for state, colour, marker, label in styles:
            points = [r for r in shown if r["state"] == state]
            if points:
                handles[label] = ax.scatter(
                    [r["params"][name] for r in points],
                    [r["value"] for r in points],
                    c=colour,
                    marker=marker,
                    label=label,
                )
        top = [r for r in shown if r["number"] == best]
        if top:
            handles["best"] = ax.scatter(
                top[0]["params"][name],
                top[0]["value"],
                s=220,
                marker="*",
                c="tab:red",
                label=f"best (trial {best})",
                zorder=3,
            )
        if shown:
            ax.set_xscale("log")
        else:
            ax.text(0.5, 0.5, f"{name} not searched", ha="center", transform=ax.transAxes)
        ax.set_xlabel(f"{name} (log scale)")
        ax.grid(True, which="both", alpha=0.3)
    if "range" in handles:
        handles["range"].set_label("searched range")
    axes[0].set_ylabel("val accuracy")
    fig.suptitle(f"tlcli tune: {len(rows)} trials", fontsize=11)
    if handles:
        fig.legend(
            handles=list(handles.values()),
            loc="lower center",
            ncol=len(handles),
            fontsize=8,
            frameon=False,
        )
        fig.subplots_adjust(bottom=0.2)
    return save_figure(fig, path)
