"""The epoch loop: one readable training loop, as in the PyTorch examples.

Batches are gathered from the decoded uint8 cache and augmented batch-wise on the device.
Per epoch: train, validate the raw and (optional) EMA weights, monitor, checkpoint. Every
random draw comes from a generator seeded by (seed, epoch), and the global RNG state is
saved in `last`, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlcli.data.augment import BatchAugmenter, to_device
from tlcli.data.batches import batch_indices, prefetched, sorted_labels
from tlcli.inference import autocast, predict_logits
from tlcli.progress import Reporter
from tlcli.strategy import set_train_mode
from tlcli.train.balance import LossBalance
from tlcli.train.distributed import SINGLE, World, shard_batches, sum_over_ranks, unwrap
from tlcli.train.monitor import UpdateRatioMeter, diagnose_gap, diagnose_update_ratio
from tlcli.train.optim import lr_factor, set_lr

# Distinct streams for data order and augmentation per epoch, reproducible on resume.
EPOCH_SEED_STRIDE = 1_000_003


@dataclass
class LoopState:
    """Everything that changes while training; `last` checkpoints save it."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0
    best_weights: str = "raw"
    epochs_since_best: int = 0
    stopped_early: bool = False
    balance: str = "none"  # the class-balance method in use (auto resolved)
    averages: list[dict[str, Any]] = field(default_factory=list)  # SWA/WiSE-FT tried on val
    finalized: bool = False  # averaging, calibration and summary done after the last epoch


@dataclass
class LoopSetup:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    augmenter: BatchAugmenter
    device: torch.device
    train_pixels: np.ndarray
    train_labels: np.ndarray
    val_pixels: np.ndarray
    val_labels: np.ndarray
    epochs: int
    batch_size: int
    seed: int
    schedule: Any  # ScheduleConfig
    label_smoothing: float
    clip_grad_norm: float
    monitor_every: int
    ratio_params: dict[str, list[nn.Parameter]]  # {"head": [...], "backbone": [...]}
    head_warmup_epochs: int = 0  # two-phase recipe: backbone frozen for these first epochs
    ema: Any = None  # timm ModelEmaV3
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    world: World = SINGLE  # torchrun data parallel: this rank's slice of every global batch
    balance: LossBalance | None = None  # class weights, logit adjustment or sampler weights
    frozen_norm_stats: bool = False  # BatchNorm keeps its running statistics (LP-FT)


def freeze_norm_stats(model: nn.Module) -> None:
    """BatchNorm in eval mode while its weights train: the running statistics the fitted
    head was fit on are not pulled towards augmented batches."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def loss_fn(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float,
    balance: LossBalance | None = None,
) -> torch.Tensor:
    logits = logits.float()
    weight = None
    if balance is not None and balance.logit_bias is not None:
        logits = logits + balance.logit_bias.to(logits.device)  # in the loss only
    if balance is not None and balance.class_weight is not None:
        weight = balance.class_weight.to(logits.device)
    if targets.ndim == 2:  # mixup/cutmix soft targets, smoothing already applied
        per_sample = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1)
        if weight is None:
            return per_sample.mean()
        sample_weight = targets @ weight  # a mixed image: the mix of its classes' weights
        return (per_sample * sample_weight).sum() / sample_weight.sum()
    return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)


def evaluate_split(
    setup: LoopSetup, model: nn.Module, reporter: Reporter, task: str
) -> tuple[float, float]:
    reporter.start(task, len(setup.val_labels), "validate")
    logits = predict_logits(
        model,
        setup.val_pixels,
        setup.augmenter,
        setup.device,
        setup.batch_size * 2,
        setup.amp_dtype,
        lambda n: reporter.advance(task, n),
    )
    reporter.finish(task)
    labels = torch.from_numpy(setup.val_labels)
    loss = F.cross_entropy(logits, labels).item()
    return loss, top1(logits, labels)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction right, exact (count / n in float64): a float32 mean rounds 145/153 up to
    0.94771242..., above the probe's 0.94771241..., and a tie would count as a gain."""
    return int((logits.argmax(1) == labels).sum()) / len(labels)


def raise_if_diverged(loss: torch.Tensor, step: int) -> None:
    """FloatingPointError when the loss (or a sum of losses) is inf or nan."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss.item()} by step {step}")


def forward_backward(
    setup: LoopSetup, x: torch.Tensor, targets: torch.Tensor, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward (and clipping) for one batch; the caller steps the optimizer
    and checks the loss with raise_if_diverged (a check is a GPU sync: not every step)."""
    with autocast(setup.device, setup.amp_dtype):
        logits = setup.model(x)
    loss = loss_fn(logits, targets, setup.label_smoothing, setup.balance)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if setup.clip_grad_norm > 0:
        params = [p for g in setup.optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, setup.clip_grad_norm)
    return loss.detach(), logits.detach()


def train_step(
    setup: LoopSetup,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    lr_scale: float,
    step: int,
    meter: UpdateRatioMeter | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch already on the device, the same in training and in
    lr-find (fastai's LRFinder runs inside the fit loop, so it cannot drift from it): augment,
    channels_last, each group's LR at lr_scale x its initial LR, forward/backward, step, EMA.
    meter: the update/weight ratio is measured around this step. Returns (loss, logits,
    targets), detached; the caller checks the loss with raise_if_diverged."""
    x, targets = setup.augmenter(images, labels, generator)
    if setup.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    set_lr(setup.optimizer, lr_scale)
    loss, logits = forward_backward(setup, x, targets, step)
    if meter is not None:
        meter.snapshot()
    setup.optimizer.step()
    if meter is not None:
        meter.measure()
    if setup.ema is not None:
        setup.ema.update(unwrap(setup.model), step=step)
    return loss, logits, targets


def train_one_epoch(setup: LoopSetup, state: LoopState, reporter: Reporter) -> dict[str, float]:
    model, optimizer = setup.model, setup.optimizer
    world = setup.world
    epoch_seed = setup.seed * EPOCH_SEED_STRIDE + state.epoch
    generator = torch.Generator().manual_seed(epoch_seed)
    # Every rank draws the same order and takes its part of each global batch; augmentation
    # then draws from a per-rank stream (one process: the same generator, as before).
    sampler = setup.balance.sample_weights if setup.balance is not None else None
    global_batches = batch_indices(
        len(setup.train_labels), setup.batch_size * world.size, generator, sampler
    )
    batches = shard_batches(global_batches, world)
    aug_generator = generator
    if world.distributed:
        aug_generator = torch.Generator().manual_seed(epoch_seed * world.size + world.rank)
    total_steps = len(batches) * setup.epochs
    # Two-phase recipe (the lecture): train the fresh head on a frozen backbone first, so its
    # large early gradients do not disturb the pretrained layers; then unfreeze.
    head_phase = state.epoch < setup.head_warmup_epochs
    for param in setup.ratio_params.get("backbone", []):
        param.requires_grad_(not head_phase)
    meter = UpdateRatioMeter(setup.ratio_params)
    set_train_mode(model)
    if setup.frozen_norm_stats:
        freeze_norm_stats(model)
    # Summed on the device: reading a value (.item()) waits for the GPU, so it is done only
    # every monitor_every steps on CUDA, and the next batch is prepared while the GPU works.
    loss_sum = torch.zeros((), dtype=torch.float64, device=setup.device)
    correct = torch.zeros((), dtype=torch.int64, device=setup.device)
    seen = 0
    reporter.start("train", len(setup.train_labels), f"epoch {state.epoch + 1}/{setup.epochs}")
    for idx, batch in prefetched(setup.train_pixels, batches, setup.device):
        images = to_device(batch, setup.device)
        labels = sorted_labels(setup.train_labels, idx, setup.device)
        lr_scale = lr_factor(state.step, total_steps, len(batches), setup.schedule)
        sample_ratio = (state.step + 1) % setup.monitor_every == 0
        loss, logits, targets = train_step(
            setup,
            images,
            labels,
            aug_generator,
            lr_scale,
            state.step,
            meter if sample_ratio else None,
        )
        state.step += 1
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        correct += (logits.argmax(1) == hard).sum()
        loss_sum += loss.double() * len(idx)
        seen += len(idx)
        if setup.device.type != "cuda" or sample_ratio:
            raise_if_diverged(loss_sum, state.step)
        reporter.advance("train", len(idx))
    raise_if_diverged(loss_sum, state.step)
    reporter.finish("train")
    loss_sum, correct, seen = sum_over_ranks([loss_sum.item(), int(correct), seen], world)
    ratios = meter.medians()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_acc": correct / max(seen, 1),
        "lr": max(g["lr"] for g in optimizer.param_groups),
        "update_ratio": ratios.get("head"),
        "backbone_update_ratio": ratios.get("backbone"),
    }


class EpochHook(Protocol):
    """Called after every epoch, in list order (Lightning's callbacks): return why training
    should stop (a one-line note), or None. The loop sets state.stopped_early as soon as one
    does, so a hook later in the list (the checkpoint) saves the stop."""

    def on_epoch_end(self, state: LoopState, improved: bool) -> str | None: ...


@dataclass(frozen=True)
class EarlyStopping:
    """Stop after `patience` epochs without a val gain (0: never)."""

    patience: int

    def on_epoch_end(self, state: LoopState, improved: bool) -> str | None:
        if not self.patience or state.epochs_since_best < self.patience:
            return None
        return (
            f"early stop: no val gain for {self.patience} epochs "
            f"(best {state.best_acc:.4f} at epoch {state.best_epoch})"
        )


def record_epoch(state: LoopState, row: dict[str, Any]) -> bool:
    """Add an epoch's row to the state and track the best; True when val improved."""
    state.epoch += 1
    state.history.append(row)
    best_now = max(row["val_acc"], row["ema_val_acc"] or -1.0)
    if best_now <= state.best_acc:
        state.epochs_since_best += 1
        return False
    state.best_acc, state.best_epoch = best_now, state.epoch
    ema_better = row["ema_val_acc"] is not None and row["ema_val_acc"] > row["val_acc"]
    state.best_weights = "ema" if ema_better else "raw"
    state.epochs_since_best = 0
    return True


def call_hooks(hooks: Sequence[EpochHook], state: LoopState, improved: bool) -> list[str]:
    """Every hook in order, once an epoch's row is in state.history; the reasons to stop
    (state.stopped_early is set at the first, before the later hooks see the state)."""
    stops = []
    for hook in hooks:
        stop = hook.on_epoch_end(state, improved)
        if stop:
            state.stopped_early = True
            stops.append(stop)
    return stops


def run_epochs(
    setup: LoopSetup, state: LoopState, reporter: Reporter, hooks: Sequence[EpochHook]
) -> None:
    """Train until setup.epochs, or until a hook stops it (EpochHook)."""
    warned: set[str] = set()
    while state.epoch < setup.epochs and not state.stopped_early:
        started = time.perf_counter()
        row: dict[str, Any] = {"epoch": state.epoch + 1}
        row.update(train_one_epoch(setup, state, reporter))
        row["val_loss"], row["val_acc"] = evaluate_split(setup, setup.model, reporter, "val")
        row["ema_val_loss"] = row["ema_val_acc"] = None
        if setup.ema is not None:
            row["ema_val_loss"], row["ema_val_acc"] = evaluate_split(
                setup, setup.ema.module, reporter, "val-ema"
            )
        row["seconds"] = time.perf_counter() - started
        # The hooks (the checkpoint) before reporting: a Ctrl-C then keeps the epoch.
        stops = call_hooks(hooks, state, record_epoch(state, row))
        reporter.epoch(row)
        diagnoses = (
            diagnose_gap(state.history),
            diagnose_update_ratio(row["update_ratio"], row["backbone_update_ratio"], state.epoch),
        )
        for message in diagnoses:
            kind = re.split(r"\d", message, maxsplit=1)[0] if message else None
            if kind and kind not in warned:  # each kind once per run: a warning, not a log
                warned.add(kind)
                reporter.note(message, "warning")
        for stop in stops:
            reporter.note(stop)
