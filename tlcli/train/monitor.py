"""Babysitting the run, as the lecture says: the train/val gap and the update/weight ratio."""

from __future__ import annotations

import torch

# Train accuracy this far above val accuracy (and growing) is overfitting.
OVERFIT_GAP = 0.10
# No gap but train accuracy below this is underfitting: the model cannot fit the data.
UNDERFIT_GAP = 0.03
UNDERFIT_ACC = 0.70
# The lecture: update size / weight size per step should be about 1e-3; warn a decade off.
# That rule is for layers trained from scratch: here the new head. Pretrained layers train
# at lr * backbone_lr_mult on purpose, so only a from-scratch-sized ratio is flagged there.
TARGET_UPDATE_RATIO = 1e-3
UPDATE_RATIO_LOW = 1e-4
UPDATE_RATIO_HIGH = 1e-2


class UpdateRatioMeter:
    """||w_after - w_before|| / ||w_before|| per parameter set, sampled every k steps."""

    def __init__(self, param_sets: dict[str, list[torch.nn.Parameter]]):
        self.param_sets = {k: v for k, v in param_sets.items() if v}
        self.before: dict[str, list[torch.Tensor]] = {}
        self.samples: dict[str, list[float]] = {k: [] for k in self.param_sets}

    def snapshot(self) -> None:
        self.before = {k: [p.detach().clone() for p in v] for k, v in self.param_sets.items()}

    def measure(self) -> None:
        for key, before in self.before.items():
            params = self.param_sets[key]
            update = sum(
                float((p.detach() - b).float().pow(2).sum())
                for p, b in zip(params, before, strict=True)
            )
            weight = sum(float(b.float().pow(2).sum()) for b in before)
            if weight > 0:  # a zero-initialised head has no ratio at its first step
                self.samples[key].append((update / weight) ** 0.5)
        self.before = {}

    def medians(self) -> dict[str, float | None]:
        """Median ratio per set since the last call (None when nothing was sampled)."""
        result = {}
        for key, values in self.samples.items():
            values.sort()
            result[key] = values[len(values) // 2] if values else None
            self.samples[key] = []
        return result


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


# A zero-initialised head has tiny weights at first, so its ratio starts large by design.
HEAD_RATIO_GRACE_EPOCHS = 2


def diagnose_update_ratio(head: float | None, backbone: float | None, epoch: int) -> str | None:
    """A sentence when the head's ratio is a decade off 1e-3, or the pretrained layers move
    as fast as a from-scratch model would."""
    if epoch <= HEAD_RATIO_GRACE_EPOCHS:
        head = None
    if head is not None and head < UPDATE_RATIO_LOW:
        return (
            f"head update/weight ratio {head:.1e} is far below ~{TARGET_UPDATE_RATIO:.0e}: "
            "the head barely moves; the learning rate may be too low (raise --lr)"
        )
    if head is not None and head > UPDATE_RATIO_HIGH:
        return (
            f"head update/weight ratio {head:.1e} is far above ~{TARGET_UPDATE_RATIO:.0e}: "
            "the learning rate may be too high (lower --lr; watch for a loss that jumps or NaN)"
        )
    if backbone is not None and backbone > UPDATE_RATIO_HIGH:
        return (
            f"pretrained layers' update/weight ratio {backbone:.1e} is above "
            f"{UPDATE_RATIO_HIGH:.0e}: they move like a from-scratch model and lose what they "
            "learned; lower --backbone-lr-mult or --lr"
        )
    return None
