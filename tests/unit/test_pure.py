"""Table tests for the pure pieces: the LR schedules, the optimizer's parameter groups, the
monitor's diagnoses and the batch augmenter (whose center crop is timm's eval transform)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tlcli.config import OptimConfig, ScheduleConfig
from tlcli.train.monitor import (
    HEAD_RATIO_GRACE_EPOCHS,
    OVERFIT_GAP,
    UNDERFIT_ACC,
    UNDERFIT_GAP,
    UPDATE_RATIO_HIGH,
    UPDATE_RATIO_LOW,
    diagnose_gap,
    diagnose_update_ratio,
)
from tlcli.train.optim import create_optimizer, lr_factor, param_groups

# --- lr_factor: warmup, then each schedule --------------------------------------------------

# 5 epochs of 10 steps with a 1-epoch warmup (10 steps): steps 0..9 warm up, 10..49 decay.
SPE, TOTAL = 10, 50
WARM = [(0, 1 / 11), (4, 5 / 11), (9, 10 / 11)]  # (s + 1) / (warmup + 1): never 0, never 1


def cosine_at(progress: float, floor: float = 0.01) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


# (schedule settings, [(step, expected factor)])
SCHEDULE_TABLE = [
    # none: flat after the warmup.
    ({"name": "none"}, [*WARM, (10, 1.0), (30, 1.0), (49, 1.0)]),
    # cosine: from 1 at the end of the warmup to min_lr_ratio at total_steps (and after).
    (
        {"name": "cosine"},
        [*WARM, (10, 1.0), (30, cosine_at(0.5)), (49, cosine_at(39 / 40)), (50, 0.01), (60, 0.01)],
    ),
    ({"name": "cosine", "min_lr_ratio": 0.0}, [(30, 0.5), (50, 0.0)]),
    ({"name": "cosine", "min_lr_ratio": 1.0}, [(10, 1.0), (30, 1.0), (50, 1.0)]),
    # step: gamma every step_epochs whole epochs, counted from step 0 (as timm's StepLR).
    (
        {"name": "step", "step_epochs": 3, "gamma": 0.1},
        [*WARM, (10, 1.0), (29, 1.0), (30, 0.1), (49, 0.1), (60, 0.01)],
    ),
    ({"name": "step", "step_epochs": 1, "gamma": 0.5}, [(10, 0.5), (19, 0.5), (20, 0.25)]),
    # exponential: gamma per epoch, fractional epochs too, counted from step 0.
    (
        {"name": "exponential", "gamma": 0.5},
        [*WARM, (10, 0.5), (15, 0.5**1.5), (20, 0.25), (49, 0.5**4.9)],
    ),
    # No warmup: the schedule from step 0.
    ({"name": "cosine", "warmup_epochs": 0}, [(0, 1.0), (25, cosine_at(0.5)), (50, 0.01)]),
    ({"name": "none", "warmup_epochs": 0}, [(0, 1.0)]),
    ({"name": "exponential", "gamma": 0.5, "warmup_epochs": 0}, [(0, 1.0), (5, 0.5**0.5)]),
    # A fractional warmup rounds to whole steps: 0.5 epoch = 5 steps.
    ({"name": "none", "warmup_epochs": 0.5}, [(0, 1 / 6), (4, 5 / 6), (5, 1.0)]),
]


@pytest.mark.parametrize(
    "settings, expected", SCHEDULE_TABLE, ids=[str(row[0]) for row in SCHEDULE_TABLE]
)
def test_lr_factor_table(settings, expected):
    cfg = ScheduleConfig(**{"warmup_epochs": 1.0, **settings})
    got = [lr_factor(step, TOTAL, SPE, cfg) for step, _ in expected]
    assert got == pytest.approx([factor for _, factor in expected], abs=1e-12)


@pytest.mark.parametrize("name", ["none", "cosine", "step", "exponential"])
def test_a_warmup_longer_than_the_run_still_reaches_the_full_lr(name):
    """5 steps, a 3-epoch warmup (15 steps): warmup is clamped to total - 1 = 4 steps, so the
    last step runs at the schedule's start (1.0) instead of the run ending mid-warmup."""
    cfg = ScheduleConfig(name=name, warmup_epochs=3.0, step_epochs=1000, gamma=1.0)
    assert [lr_factor(s, 5, 5, cfg) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


@pytest.mark.parametrize("name", ["none", "cosine", "step", "exponential"])
def test_a_one_step_run_takes_the_full_lr(name):
    assert lr_factor(0, 1, 1, ScheduleConfig(name=name, warmup_epochs=5.0)) == 1.0


def test_cosine_falls_monotonically_from_one_to_the_floor():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=0, min_lr_ratio=0.05)
    factors = [lr_factor(s, TOTAL, SPE, cfg) for s in range(TOTAL + 1)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))


# --- param_groups: one group per (LR multiplier, decay or not) -------------------------------


class TinyNet(nn.Module):
    """Names and shapes of the cases: conv weight (4-D), biases, a norm's 1-D scale, a 2-D
    parameter named like a bias, a frozen layer and a parameter the plan leaves out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.extra = nn.Linear(2, 2)  # not in lr_mults: not trained
        self.odd = nn.Module()
        self.odd.bias = nn.Parameter(torch.zeros(2, 2))  # 2-D, but a bias by name: no decay


LR_MULTS = {
    "conv.weight": 0.1,
    "conv.bias": 0.1,
    "bn.weight": 0.1,
    "bn.bias": 0.1,
    "fc.weight": 1.0,
    "fc.bias": 1.0,
    "frozen.weight": 1.0,
    "frozen.bias": 1.0,
    "odd.bias": 1.0,
}
# (lr_mult, weight_decay, parameter names), in order of first appearance.
EXPECTED_GROUPS = [
    (0.1, 0.05, ["conv.weight"]),
    (0.1, 0.0, ["conv.bias", "bn.weight", "bn.bias"]),
    (1.0, 0.05, ["fc.weight"]),
    (1.0, 0.0, ["fc.bias", "odd.bias"]),
]


def test_param_groups_table():
    model = TinyNet()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, LR_MULTS, base_lr=1e-2, weight_decay=0.05)
    got = [(g["lr_mult"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in groups]
    assert got == EXPECTED_GROUPS
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])


def test_param_groups_of_a_fully_frozen_model_is_empty():
    model = TinyNet().requires_grad_(False)
    assert param_groups(model, LR_MULTS, 1e-2, 0.05) == []


def test_param_groups_with_per_stage_multipliers_keep_one_group_per_multiplier():
    """Layer decay gives each stage its own multiplier: as many decayed groups."""
    model = TinyNet()
    mults = {"conv.weight": 0.25, "fc.weight": 0.5, "odd.bias": 1.0}
    groups = param_groups(model, mults, 1.0, 0.1)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (0.25, 0.1, 1),
        (0.5, 0.1, 1),
        (1.0, 0.0, 1),
    ]


# (our optimizer name, torch class, the settings it must get)
OPTIMIZER_TABLE = [
    ("sgd", torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
    ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0.8}),
    ("adagrad", torch.optim.Adagrad, {}),
    ("adam", torch.optim.Adam, {}),
    ("adamw", torch.optim.AdamW, {}),
]


@pytest.mark.parametrize(
    "name, cls, settings", OPTIMIZER_TABLE, ids=[r[0] for r in OPTIMIZER_TABLE]
)
def test_create_optimizer_keeps_the_groups_and_their_initial_lr(name, cls, settings):
    cfg = OptimConfig(name=name, lr=1e-2, weight_decay=0.05, momentum=0.8)
    optimizer = create_optimizer(TinyNet(), LR_MULTS, cfg)
    assert type(optimizer) is cls
    groups = optimizer.param_groups
    assert [(g["lr_mult"], g["weight_decay"]) for g in groups] == [
        (mult, wd) for mult, wd, _ in EXPECTED_GROUPS
    ]
    # initial_lr is what set_lr scales: the base LR times the group's multiplier.
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])
    assert [g["lr"] for g in groups] == [g["initial_lr"] for g in groups]
    for key, value in settings.items():
        assert all(g[key] == value for g in groups), (key, [g[key] for g in groups])


# --- monitor: the train/val gap and the update/weight ratio ---------------------------------


def epochs(*accs: tuple[float, float]) -> list[dict]:
    return [{"train_acc": t, "val_acc": v} for t, v in accs]


EPS = 1e-9
# (history, the diagnosis's first word or None)
GAP_TABLE = [
    ("no epochs", [], None),
    ("one epoch, big gap: not yet growing", epochs((0.99, 0.5)), None),
    ("gap above and growing", epochs((0.80, 0.75), (0.95, 0.80)), "overfitting"),
    ("gap above but shrinking", epochs((0.95, 0.70), (0.95, 0.80)), None),
    ("gap above but equal", epochs((0.95, 0.80), (0.95, 0.80)), None),
    ("just above the gap", epochs((0.8, 0.8), (0.8 + OVERFIT_GAP + EPS, 0.8)), "overfitting"),
    ("at the gap", epochs((0.8, 0.8), (0.8 + OVERFIT_GAP - EPS, 0.8)), None),
    ("low and close", epochs((0.40, 0.41), (0.50, 0.49)), "underfitting"),
    ("low, val above train", epochs((0.40, 0.41), (0.50, 0.52)), "underfitting"),
    ("low and close after one epoch", epochs((0.50, 0.49)), None),
    ("close but at the accuracy", epochs((0.5, 0.5), (UNDERFIT_ACC, UNDERFIT_ACC)), None),
    (
        "close, just below the accuracy",
        epochs((0.5, 0.5), (UNDERFIT_ACC - EPS,) * 2),
        "underfitting",
    ),
    ("low but apart", epochs((0.3, 0.3), (0.5, 0.5 - UNDERFIT_GAP - EPS)), None),
    ("low, just within", epochs((0.3, 0.3), (0.5, 0.5 - UNDERFIT_GAP + EPS)), "underfitting"),
    ("high and close", epochs((0.9, 0.9), (0.95, 0.94)), None),
]


@pytest.mark.parametrize("case, history, word", GAP_TABLE, ids=[r[0] for r in GAP_TABLE])
def test_diagnose_gap_table(case, history, word):
    message = diagnose_gap(history)
    if word is None:
        assert message is None
        return
    assert message is not None and message.startswith(word + ":")
    last = history[-1]
    assert f"{last['train_acc']:.3f}" in message and f"{last['val_acc']:.3f}" in message
    assert "\n" not in message


AFTER_GRACE = HEAD_RATIO_GRACE_EPOCHS + 1
# (head ratio, backbone ratio, epoch, words in the message or None)
RATIO_TABLE = [
    (1e-3, 1e-4, AFTER_GRACE, None),
    (None, None, AFTER_GRACE, None),
    (1e-5, None, AFTER_GRACE, ["1.0e-05", "far below", "raise --lr"]),
    (1e-5, None, HEAD_RATIO_GRACE_EPOCHS, None),  # a zero-init head starts off the target
    (5e-2, None, 1, None),
    (5e-2, None, AFTER_GRACE, ["5.0e-02", "far above", "lower --lr"]),
    (UPDATE_RATIO_LOW, None, AFTER_GRACE, None),  # the bounds themselves are fine
    (UPDATE_RATIO_HIGH, None, AFTER_GRACE, None),
    (1e-3, 2e-2, AFTER_GRACE, ["pretrained layers", "2.0e-02", "--backbone-lr-mult"]),
    (1e-3, UPDATE_RATIO_HIGH, AFTER_GRACE, None),
    (1e-3, 1e-6, AFTER_GRACE, None),  # slow pretrained layers are the point of the multiplier
    (None, 2e-2, 1, ["pretrained layers"]),  # no grace for the backbone
    (1e-5, 2e-2, AFTER_GRACE, ["head update/weight ratio", "far below"]),  # the head first
]


@pytest.mark.parametrize("head, backbone, epoch, words", RATIO_TABLE)
def test_diagnose_update_ratio_table(head, backbone, epoch, words):
    message = diagnose_update_ratio(head, backbone, epoch)
    if words is None:
        assert message is None
        return
    assert message is not None and "\n" not in message
    for word in words:
        assert word in message, message
