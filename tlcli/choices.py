"""Every choice list of tlcli, declared once: one row per choice, with what it does.

Modelled on timm's `OptimInfo` registry (`timm/optim/_optim_factory.py`): the config's
validation, the CLI's option choices and help, and the dispatch tables of the library
(`train/optim.py`, `data/augment.py`, ...) are derived from these rows or checked against them
(tests/unit/test_declarations.py). Plain values only: `tlcli --help` imports this module, so
it must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Choice:
    name: str
    description: str


@dataclass(frozen=True)
class OptimInfo:
    """An optimizer of `--opt`: the timm factory name it maps to and what it takes."""

    name: str
    timm_name: str  # the name timm's create_optimizer_v2 knows
    description: str
    uses_momentum: bool = False  # optim.momentum is passed
    defaults: dict[str, Any] = field(default_factory=dict)  # more factory arguments


def names(rows: tuple[Choice | OptimInfo, ...]) -> tuple[str, ...]:
    return tuple(row.name for row in rows)


def described(rows: tuple[Choice | OptimInfo, ...]) -> str:
    """'a (what a does), b (...)': the choices as a help text lists them."""
    return ", ".join(f"{row.name} ({row.description})" for row in rows)


# "sgd" is plain SGD (momentum 0), the lecture's baseline; "momentum" and "nesterov" add velocity.
OPTIMIZER_INFOS = (
    OptimInfo("sgd", "sgd", "plain, no momentum", defaults={"momentum": 0.0, "nesterov": False}),
    OptimInfo("momentum", "momentum", "SGD with classical momentum", uses_momentum=True),
    OptimInfo("nesterov", "sgd", "SGD with Nesterov momentum", True, defaults={"nesterov": True}),
    OptimInfo("adagrad", "adagrad", "per-parameter LR from past gradients"),
    OptimInfo("rmsprop", "rmsprop", "running RMS of gradients", uses_momentum=True),
    OptimInfo("adam", "adam", "adaptive moments, L2 weight decay"),
    OptimInfo("adamw", "adamw", "Adam with decoupled weight decay"),
)
STRATEGY_CHOICES = (
    Choice("auto", "measure the data and pick, the CS231n 2x2 grid"),
    Choice("head-only", "a linear classifier on frozen features"),
    Choice("partial", "retrain the last --trainable-stages stages and the head"),
    Choice("full", "retrain everything"),
)
SCHEDULE_CHOICES = (
    Choice("cosine", "to lr x schedule.min_lr_ratio"),
    Choice("step", "x gamma every schedule.step_epochs"),
    Choice("exponential", "x gamma per epoch"),
    Choice("none", "constant after warmup"),
)
AUGMENT_CHOICES = (
    Choice("none", "center crop"),
    Choice("light", "crop+flip"),
    Choice("standard", "+colour"),
    Choice("strong", "+RandAugment, erasing, mixup/cutmix"),
)
STREAM_CHOICES_INFO = (
    Choice("auto", "only when the decoded set would not fit"),
    Choice("always", "read the files every epoch"),
    Choice("never", "always decode once into the cache"),
)
HEAD_FIT_CHOICES = (
    Choice("lbfgs", "full-batch L-BFGS on cached features"),
    Choice("epochs", "train the head epoch by epoch"),
)
BALANCE_CHOICES = (
    Choice("none", "train on the data as it is"),
    Choice("weights", "class-weighted loss"),
    Choice("sampler", "a class-balanced sampler"),
    Choice("logit-adjust", "logit adjustment, Menon et al. 2021"),
    Choice(
        "auto",
        "act only when the largest class has 3x the smallest's images, picking by a linear "
        "probe's val balanced accuracy",
    ),
)
DEVICE_CHOICES = (
    Choice("auto", "CUDA, else MPS, else CPU"),
    Choice("cpu", "the CPU"),
    Choice("cuda", "the first GPU; cuda:N picks one"),
    Choice("mps", "Apple GPUs"),
)

# Choices of command options that are not config keys.
EVAL_SPLIT_CHOICES = (
    Choice("auto", "test, else val, else all"),
    Choice("test", "the test/ folder"),
    Choice("val", "the val/ folder"),
    Choice("train", "the train/ folder"),
    Choice("all", "every image"),
)
WEIGHT_CHOICES_INFO = (
    Choice("best", "the EMA weights when they scored higher on val in training, else raw"),
    Choice("ema", "the EMA weights"),
    Choice("raw", "the raw weights"),
)
# The WiSE-FT mixes tried after LP-FT (train/averaging.py); a best.pt may hold any of them.
WISE_FT_ALPHAS = (0.25, 0.5, 0.75)  # weight of the fine-tuned end; 0 is the probe, 1 the end
EXPORT_FORMAT_CHOICES = (
    Choice("onnx", "ONNX, checked with onnxruntime"),
    Choice("torchscript", "TorchScript, checked with torch.jit"),
)
QUANTIZE_CHOICES_INFO = (Choice("int8", "static onnxruntime quantization"),)
PRUNER_CHOICES = (
    Choice("median", "Optuna's median pruner"),
    Choice("halving", "successive halving"),
    Choice("none", "no pruning"),
)
BUDGET_CHOICES = (
    Choice("quick", "<=600 sampled images"),
    Choice("thorough", "<=3000 sampled images"),
    Choice("race", "quick, then a short race between plans (trains each briefly)"),
)
AUTO_BUDGET_CHOICES = (
    Choice("quick", "the probes decide (recommend --budget quick)"),
    Choice("race", "a short race between plans; the winner's run is continued"),
)
TRACK_CHOICES = (
    Choice("mlflow", "pip install 'tlcli[mlflow]'"),
    Choice("tensorboard", "pip install 'tlcli[tensorboard]'"),
)

OPTIMIZERS = names(OPTIMIZER_INFOS)
STRATEGIES = names(STRATEGY_CHOICES)
SCHEDULES = names(SCHEDULE_CHOICES)
AUGMENTS = names(AUGMENT_CHOICES)
STREAM_CHOICES = names(STREAM_CHOICES_INFO)
HEAD_FITS = names(HEAD_FIT_CHOICES)
AUTO_BUDGETS = names(AUTO_BUDGET_CHOICES)
BALANCES = names(BALANCE_CHOICES)
DEVICES = names(DEVICE_CHOICES)
EVAL_SPLITS = names(EVAL_SPLIT_CHOICES)
WEIGHT_CHOICES = names(WEIGHT_CHOICES_INFO)
EXPORT_FORMATS = names(EXPORT_FORMAT_CHOICES)
QUANTIZE_CHOICES = names(QUANTIZE_CHOICES_INFO)
PRUNERS = names(PRUNER_CHOICES)
BUDGETS = names(BUDGET_CHOICES)
TRACKERS = names(TRACK_CHOICES)
