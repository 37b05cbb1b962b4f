"""Babysitting the run, as the lecture says: the train/val gap and the update/weight ratio."""

from __future__ import annotations

import torch

# Train accuracy this far above val accuracy (and growing) is overfitting.
OVERFIT_GAP = 0.10
# No gap but train accuracy below this is underfitting: the model cannot fit the data.
UNDERFIT_GAP = 0.03
UNDERFIT_ACC = 0.70
# The lecture: update size / weight size per step should be about 1e-3; warn a decade off.
TARGET_UPDATE_RATIO = 1e-3
UPDATE_RATIO_LOW = 1e-4
UPDATE_RATIO_HIGH = 1e-2


class UpdateRatioMeter:
    """||w_after - w_before|| / ||w_before|| over a set of parameters, sampled every k steps."""

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.before: list[torch.Tensor] | None = None
        self.samples: list[float] = []

    def snapshot(self) -> None:
        self.before = [p.detach().clone() for p in self.params]

    def measure(self) -> None:
        if self.before is None:
            return
        update = sum(float((p.detach() - b).float().pow(2).sum()) for p, b in zip(
            self.params, self.before, strict=True))
        weight = sum(float(b.float().pow(2).sum()) for b in self.before)
        if weight > 0:
            self.samples.append((update / weight) ** 0.5)
        self.before = None

    def epoch_median(self) -> float | None:
        if not self.samples:
            return None
        values = sorted(self.samples)
        self.samples = []
        return values[len(values) // 2]


def diagnose_gap(history: list[dict]) -> str | None:
    """A sentence when the train/val curves show over- or underfitting, else None."""
    if not history:
        return None
    last = history[-1]
    gap = last["train_acc"] - last["val_acc"]
    growing = len(history) >= 2 and gap > history[-2]["train_acc"] - history[-2]["val_acc"]
    if gap > OVERFIT_GAP and growing:
        return (
            f"overfitting: train accuracy {last['train_acc']:.3f} is {gap:.3f} above val "
            f"{last['val_acc']:.3f} and the gap grew; try --augment strong, more weight decay, "
            "--ema, fewer trainable stages, or more data"
        )
    if abs(gap) < UNDERFIT_GAP and last["train_acc"] < UNDERFIT_ACC and len(history) >= 2:
        return (
            f"underfitting: train accuracy {last['train_acc']:.3f} is low and close to val "
            f"{last['val_acc']:.3f}; train more of the network (--strategy partial/full), "
            "raise --lr, or train longer"
        )
    return None


def diagnose_update_ratio(ratio: float | None) -> str | None:
    if ratio is None:
        return None
    if ratio < UPDATE_RATIO_LOW:
        return (
            f"update/weight ratio {ratio:.1e} is far below ~{TARGET_UPDATE_RATIO:.0e}: the "
            "trained layers barely move; the learning rate may be too low"
        )
    if ratio > UPDATE_RATIO_HIGH:
        return (
            f"update/weight ratio {ratio:.1e} is far above ~{TARGET_UPDATE_RATIO:.0e}: the "
            "learning rate may be too high (watch for a loss that jumps or becomes NaN)"
        )
    return None
