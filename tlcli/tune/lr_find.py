"""The LR range test (Smith 2017, "Cyclical learning rates"; fastai's `lr_find`).

One pass of mini-batches with the learning rate growing geometrically from 1e-7 to 10: while
the LR is too small the loss stays flat, in the useful range it falls, and past it the loss
explodes (the lecture's two symptoms, on one plot). The loss is smoothed (an exponential
moving average with bias correction) and the test stops once it diverges. Two suggestions
are read off the smoothed curve: the steepest descent and fastai's "valley".

The steps are the training loop's own (`train_step` on the job's model, optimizer and
augmentation), so only the strategy's trainable groups move and the backbone multiplier
applies. The model, optimizer and RNG state are restored afterwards.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from tlcli.atomic import check_new_file
from tlcli.config import Config
from tlcli.data.batches import batch_indices, gather, sorted_labels
from tlcli.errors import ConfigError
from tlcli.progress import NullReporter, Reporter
from tlcli.strategy import set_train_mode
from tlcli.train.distributed import SINGLE
from tlcli.train.loop import LoopSetup, LoopState, train_step
from tlcli.train.optim import create_optimizer

if TYPE_CHECKING:
    from tlcli.train.run import TrainingJob

# The range fastai and Smith sweep: from "nothing moves" to "everything explodes".
START_LR = 1e-7
END_LR = 10.0
NUM_ITER = 100
# fastai's AvgSmoothLoss: an EMA of the batch loss, bias-corrected like Adam's moments.
SMOOTH_BETA = 0.98
# Stop once the smoothed loss is this many times its minimum: the LR is far too high.
DIVERGE_FACTOR = 4.0
# The suggestions ignore the first tenth of the steps (an EMA over few, noisy batches) and
# the last few (the blow-up), as fastai does.
SKIP_START_FRACTION = 0.1
SKIP_END = 5
# Fewer points than this in the trimmed window: use the whole curve instead.
MIN_WINDOW = 5
# Below this many planned steps the curve is too coarse to read a slope from.
MIN_NUM_ITER = 20


@dataclass(frozen=True)
class Suggestions:
    steepest: float  # LR where the smoothed loss falls fastest per decade
    steepest_loss: float
    valley: float  # middle of the longest descending stretch (fastai's default since 2.5)
    valley_loss: float


@dataclass
class RangeTest:
    lrs: list[float]  # head LR at each step (backbone groups keep their multiplier)
    losses: list[float]  # raw batch losses
    smoothed: list[float]
    stop_reason: str  # finished | diverged | non-finite loss
    num_iter: int  # steps planned


@dataclass
class LRFindResult:
    test: RangeTest
    suggestions: Suggestions
    model: str
    strategy: str
    trainable_stages: int
    optimizer: str
    backbone_lr_mult: float
    configured_lr: float  # optim.lr of the config the test ran with
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "suggested_lr": self.suggestions.valley,
            **asdict(self.suggestions),
            "configured_lr": self.configured_lr,
            "model": self.model,
            "strategy": self.strategy,
            "trainable_stages": self.trainable_stages,
            "optimizer": self.optimizer,
            "backbone_lr_mult": self.backbone_lr_mult,
            "steps": len(self.test.lrs),
            "num_iter": self.test.num_iter,
            "stop_reason": self.test.stop_reason,
            "seconds": round(self.seconds, 2),
            "curve": {
                "lr": self.test.lrs,
                "loss": self.test.losses,
                "smoothed_loss": self.test.smoothed,
            },
        }


def lr_schedule(start_lr: float, end_lr: float, num_iter: int) -> np.ndarray:
    """Geometric steps from start_lr to end_lr inclusive (a straight line on a log axis)."""
    return start_lr * (end_lr / start_lr) ** (np.arange(num_iter) / max(num_iter - 1, 1))


def is_diverged(smoothed: float, best: float, factor: float = DIVERGE_FACTOR) -> bool:
    return not np.isfinite(smoothed) or smoothed > factor * best


def suggestion_window(num_points: int, num_iter: int) -> slice:
    """The points the suggestions read: fastai's [num_iter // 10 : -5], or all if too few."""
    start = int(num_iter * SKIP_START_FRACTION)
    stop = num_points - SKIP_END
    if stop - start < MIN_WINDOW:
        return slice(0, num_points)
    return slice(start, stop)


def suggest_steepest(lrs: np.ndarray, losses: np.ndarray) -> int:
    """Index of the most negative slope of loss vs log(lr) (the slope's left point)."""
    grads = np.diff(losses) / np.diff(np.log(lrs))
    return int(np.argmin(grads))


def suggest_valley(losses: np.ndarray) -> int:
    """fastai's valley: the longest strictly decreasing run of losses (a longest decreasing
    subsequence), then a point in its middle: past the flat start, well before the minimum."""
    n = len(losses)
    length = [1] * n  # longest decreasing subsequence ending at i
    best_end, best_start = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
        if length[i] > length[best_end]:
            best_end = i
            best_start = i - length[i]
    # best_start is one before the run (fastai's arithmetic): -1 when it starts at index 0.
    third = (best_end - best_start) / 3
    return min(max(best_start + int(third) + int(third / 2), 0), n - 1)


def suggest_lrs(lrs: list[float], smoothed: list[float], num_iter: int) -> Suggestions:
    if len(lrs) < 3:
        raise ConfigError(
            f"the LR range test diverged after {len(lrs)} steps; lower --start-lr "
            "or check the data (labels, augmentation)"
        )
    window = suggestion_window(len(lrs), num_iter)
    lr_w = np.asarray(lrs)[window]
    loss_w = np.asarray(smoothed)[window]
    steep = suggest_steepest(lr_w, loss_w)
    valley = suggest_valley(loss_w)
    return Suggestions(
        float(lr_w[steep]), float(loss_w[steep]), float(lr_w[valley]), float(loss_w[valley])
    )


def range_test(
    setup: LoopSetup,
    base_lr: float,
    num_iter: int = NUM_ITER,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    reporter: Reporter | None = None,
) -> RangeTest:
    """Step setup.optimizer with the head LR going start_lr -> end_lr; restore everything.

    Each group's LR is its `initial_lr` (base_lr x its multiplier) scaled by lr / base_lr, so
    the backbone keeps its fraction of the head's LR. Batches cycle over the train set.
    """
    reporter = reporter or NullReporter()
    model, optimizer = setup.model, setup.optimizer
    saved_model = copy.deepcopy(model.state_dict())
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_modes = {module: module.training for module in model.modules()}
    saved_rng = torch.get_rng_state()
    generator = torch.Generator().manual_seed(setup.seed)
    schedule = lr_schedule(start_lr, end_lr, num_iter)
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best, stop_reason = 0.0, float("inf"), "finished"
    batches: list[np.ndarray] = []
    reporter.start("lr-find", num_iter, "LR range test")
    try:
        set_train_mode(model)
        for step, lr in enumerate(schedule):
            if not batches:  # another pass over the (reshuffled) train set
                batches = batch_indices(len(setup.train_labels), setup.batch_size, generator)
            idx = batches.pop(0)
            images = gather(setup.train_pixels, idx, setup.device)
            labels = sorted_labels(setup.train_labels, idx, setup.device)
            loss, _, _ = train_step(setup, images, labels, generator, float(lr) / base_lr, step)
            if not torch.isfinite(loss):  # the model is restored below: the step is undone
                stop_reason = "non-finite loss"
                break
            avg = SMOOTH_BETA * avg + (1 - SMOOTH_BETA) * loss.item()
            smooth = avg / (1 - SMOOTH_BETA ** (step + 1))
            lrs.append(float(lr))
            losses.append(loss.item())
            smoothed.append(smooth)
            reporter.advance("lr-find")
            if step > 0 and is_diverged(smooth, best):
                stop_reason = "diverged"
                break
            best = min(best, smooth)
    finally:
        reporter.finish("lr-find")
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        for module, training in saved_modes.items():
            module.train(training)
        torch.set_rng_state(saved_rng)
    return RangeTest(lrs, losses, smoothed, stop_reason, num_iter)


def plot_path(out: Path | None, default_name: str = "lr_find.png") -> Path:
    """Where the plot goes: a .png file, or default_name in a folder; never overwritten."""
    path = Path(default_name) if out is None else Path(out)
    if out is not None and (path.is_dir() or path.suffix == ""):
        path = path / default_name
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the plot is a PNG; give a .png file or a folder")
    check_new_file(path, option="--out", advice="pass another --out (lr-find never overwrites)")
    return path


def range_test_setup(job: TrainingJob) -> LoopSetup:
    """The training loop's setup for a prepared job (run.loop_setup, as finetune's), from the
    zero head with a fresh optimizer at the plan's LR multipliers."""
    from tlcli.train.run import loop_setup

    optimizer = create_optimizer(job.model, job.lr_mults, job.cfg.optim)
    return loop_setup(job, optimizer, None, LoopState(), job.lr_mults, False, SINGLE)


def find_lr(
    data_dir: Path,
    cfg: Config,
    reporter: Reporter | None = None,
    num_iter: int = NUM_ITER,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
) -> LRFindResult:
    """Prepare the job as finetune would (data, model, strategy) and run the range test."""
    from tlcli.recommend.advise import auto_strategy
    from tlcli.train.run import prepare_job

    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr {start_lr:g} must be > 0 and below --end-lr {end_lr:g}")
    if num_iter < MIN_NUM_ITER:
        raise ConfigError(
            f"--num-iter {num_iter} is too few steps for a range test; use >= {MIN_NUM_ITER}"
        )
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    job = prepare_job(data_dir, cfg, reporter, choose_strategy=auto_strategy)
    cfg = job.cfg  # auto strategy resolved
    if job.plan.strategy == "head-only" and cfg.strategy.head_fit == "lbfgs":
        reporter.note(
            "head-only fits its head with L-BFGS, which takes no learning rate; the suggestion "
            "applies with --set strategy.head_fit=epochs",
            "warning",
        )
    setup = range_test_setup(job)
    test = range_test(setup, cfg.optim.lr, num_iter, start_lr, end_lr, reporter)
    return LRFindResult(
        test=test,
        suggestions=suggest_lrs(test.lrs, test.smoothed, num_iter),
        model=cfg.model.name,
        strategy=job.plan.strategy,
        trainable_stages=job.plan.trainable_stages,
        optimizer=cfg.optim.name,
        backbone_lr_mult=cfg.optim.backbone_lr_mult,
        configured_lr=cfg.optim.lr,
        seconds=time.perf_counter() - started,
    )
