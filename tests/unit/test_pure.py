"""Table tests for the pure pieces: the LR schedules, the optimizer's parameter groups, the
monitor's diagnoses and the batch augmenter (whose center crop is timm's eval transform)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn

from tlcli.config import OptimConfig, ScheduleConfig
from tlcli.data.augment import PRESETS, AugmentSpec, BatchAugmenter
from tlcli.data.cache import RESAMPLE
from tlcli.data.decode import decode_square, resize_center_square
from tlcli.models import DataSpec, data_spec_of
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


class TokenNet(TinyNet):
    """A ViT's extra parameters: 2-D and 3-D, decayed by the shape rule, but the model's
    no_weight_decay() names them (timm's ViTs list pos_embed and cls_token)."""

    def __init__(self):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.proj = nn.Linear(8, 8)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}


def test_param_groups_leave_the_models_no_weight_decay_names_undecayed():
    model = TokenNet()
    mults = {"pos_embed": 1.0, "cls_token": 1.0, "proj.weight": 1.0, "proj.bias": 1.0}
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, mults, 1.0, 0.1)
    got = {(g["weight_decay"], tuple(names[id(p)] for p in g["params"])) for g in groups}
    assert got == {(0.1, ("proj.weight",)), (0.0, ("pos_embed", "cls_token", "proj.bias"))}


def test_a_timm_vit_decays_neither_pos_embed_nor_cls_token():
    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1, num_classes=2
    )
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, {name: 1.0 for name in names.values()}, 1.0, 0.1)
    undecayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {"pos_embed", "cls_token"} <= undecayed
    assert "patch_embed.proj.weight" in decayed and "head.weight" in decayed


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


# --- BatchAugmenter ---------------------------------------------------------------------------

# Real models' preprocessing, created without weights: the ImageNet weights in ../shared
# (tf_efficientnet_lite0: 224 px, crop_pct 0.875, bicubic, mean = std = 0.5) and the tiny
# test model's (160 px, crop_pct 0.95, bilinear, ImageNet mean and std).
PREPROCESSING_MODELS = ["tf_efficientnet_lite0", "test_resnet"]
# Normalized inputs, where one uint8 level is 1 / (255 * std), 0.0078 at std 0.5 and at
# least 0.0153 at ImageNet's. The tolerance is float rounding ((x - 255 m) / (255 s) here,
# (x / 255 - m) / s in timm's Normalize): equal within it means every pixel is the same.
# The photos need no JPEG DCT scaling or PIL reducing_gap (a 3x downscale or more), where
# tlcli trades exactness for speed.
SAME_PIXELS_ATOL = 1e-5
PHOTOS = ["astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png"]
PHOTOS += ["rocket.jpg"]
# Sizes whose rounding tripped the decode (451x300: the long side rounded up instead of
# truncated; 741x500: the offset floored instead of rounded half to even), both orientations.
IMAGE_SIZES = [(256, 256), (451, 300), (300, 451), (741, 500), (640, 427), (600, 400), (333, 250)]


@functools.cache
def eval_pipelines(model_name: str) -> tuple[DataSpec, BatchAugmenter, Callable]:
    """A model's DataSpec and eval augmenter as tlcli builds them, and timm's eval transform."""
    model = timm.create_model(model_name, pretrained=False, num_classes=2)
    spec = data_spec_of(model)
    augmenter = BatchAugmenter(PRESETS["none"], spec.input_size, spec.mean, spec.std, 2)
    return spec, augmenter, create_transform(**resolve_data_config({}, model=model))


def tlcli_eval(model_name: str, square: np.ndarray) -> torch.Tensor:
    _, augmenter, _ = eval_pipelines(model_name)
    return augmenter.center_crop(torch.from_numpy(square.copy())[None])[0]


def smooth_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth waves plus a little noise, so a shift shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    waves = [np.sin(xx / (5.0 + k) + k) + np.cos(yy / (7.0 + k) - k) for k in range(3)]
    pixels = np.stack(waves, -1) * 55 + 128 + rng.normal(0, 8, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def assert_same_pixels(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    worst = float((got - expected).abs().max())
    assert worst <= SAME_PIXELS_ATOL, f"max |difference| {worst:.4f} (normalized units)"


@pytest.mark.parametrize("model_name", PREPROCESSING_MODELS)
@pytest.mark.parametrize("size", IMAGE_SIZES, ids=[f"{w}x{h}" for w, h in IMAGE_SIZES])
def test_center_crop_is_timms_eval_transform(model_name, size):
    spec, _, timm_eval = eval_pipelines(model_name)
    img = smooth_photo(*size)
    square = resize_center_square(img, spec.cache_size, RESAMPLE[spec.interpolation])
    assert_same_pixels(tlcli_eval(model_name, square), timm_eval(img))


@pytest.mark.xfail(strict=True, reason="crop_pct 0.95 at 224 px: the cache side 235 is odd")
def test_center_crop_is_one_pixel_off_where_cache_and_crop_differ_by_an_odd_side():
    """224 / 0.95 = 235: the crop offset 5.5 rounds half to even to 6 in torchvision and is
    floored to 5 here. Exact for this needs the input size in the decode (its cache key)."""
    spec, _, timm_eval = eval_pipelines("resnet18")
    assert spec.cache_size - spec.input_size == 11
    img = smooth_photo(300, 300)
    square = resize_center_square(img, spec.cache_size, RESAMPLE[spec.interpolation])
    assert_same_pixels(tlcli_eval("resnet18", square), timm_eval(img))


@pytest.mark.integration
@pytest.mark.parametrize("photo", PHOTOS)
def test_center_crop_is_timms_eval_transform_on_a_real_photo(shared_dir, photo):
    """The whole decode (PIL open, EXIF, RGB, JPEG draft, resize) of the photos in ../shared."""
    path = shared_dir / "weights" / "photos" / photo
    spec, _, timm_eval = eval_pipelines("tf_efficientnet_lite0")
    square = decode_square(path, spec.cache_size, RESAMPLE[spec.interpolation], 10**9)
    with Image.open(path) as img:
        expected = timm_eval(img.convert("RGB"))
    assert_same_pixels(tlcli_eval("tf_efficientnet_lite0", square), expected)


SIDE, CROP = 40, 32
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def uint8_batch(batch: int = 4, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, SIDE, SIDE, 3), dtype=np.uint8))


def augment(spec: AugmentSpec, images: torch.Tensor, seed: int = 0, classes: int = 3):
    augmenter = BatchAugmenter(spec, CROP, MEAN, STD, classes)
    labels = torch.arange(images.shape[0]) % classes
    return augmenter(images, labels, torch.Generator().manual_seed(seed))


def test_center_crop_takes_the_middle_and_normalizes():
    images = uint8_batch()
    augmenter = BatchAugmenter(PRESETS["none"], CROP, MEAN, STD, 3)
    offset = (SIDE - CROP) // 2
    middle = images[:, offset : offset + CROP, offset : offset + CROP].permute(0, 3, 1, 2)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = (middle.float() / 255 - mean) / std
    assert torch.allclose(augmenter.center_crop(images), expected, atol=1e-5)


# (augmentation, what the batch must equal, given the center crop `center` of the same images)
EXACT_TABLE = [
    ("none: training without augmentation is the eval transform", PRESETS["none"], lambda c: c),
    ("flip always", AugmentSpec(crop_scale=None, hflip=1.0), lambda c: c.flip(-1)),
    ("flip never", AugmentSpec(crop_scale=None, hflip=0.0), lambda c: c),
]


@pytest.mark.parametrize("case, spec, expected", EXACT_TABLE, ids=[r[0] for r in EXACT_TABLE])
def test_augmenter_exact_table(case, spec, expected):
    images = uint8_batch()
    center = BatchAugmenter(PRESETS["none"], CROP, MEAN, STD, 3).center_crop(images)
    x, labels = augment(spec, images)
    assert torch.equal(x, expected(center))
    assert torch.equal(labels, torch.arange(4) % 3)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_augmenter_is_reproducible_from_its_generator(preset):
    images = uint8_batch(batch=3)  # odd: no mixup, so the labels stay hard for every preset
    torch.manual_seed(0)  # RandAugment draws from the global generator
    first, labels = augment(PRESETS[preset], images, seed=1)
    torch.manual_seed(0)
    again, _ = augment(PRESETS[preset], images, seed=1)
    torch.manual_seed(0)
    other, _ = augment(PRESETS[preset], images, seed=2)
    assert first.shape == (3, 3, CROP, CROP)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(labels, torch.arange(3) % 3)


def test_colour_jitter_keeps_a_grey_image_grey_and_in_range():
    """Brightness, contrast and saturation move along the grey axis only; clamped to 0..255."""
    grey = uint8_batch()[..., :1].expand(-1, -1, -1, 3).contiguous()
    x, _ = augment(AugmentSpec(crop_scale=None, color_jitter=0.9), grey)
    pixels = x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    pixels = pixels * 255
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-3)
    assert torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-3)
    assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
    center = BatchAugmenter(PRESETS["none"], CROP, MEAN, STD, 3).center_crop(grey)
    assert not torch.allclose(x, center)  # it did jitter


def test_erasing_changes_a_box_of_every_chosen_image():
    images = uint8_batch()
    center = BatchAugmenter(PRESETS["none"], CROP, MEAN, STD, 3).center_crop(images)
    x, _ = augment(AugmentSpec(crop_scale=None, erase_prob=1.0), images)
    changed = (x != center).any(1)  # (B, H, W): the erased pixels
    for image in changed:
        rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
        box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.float().mean() > 0.9  # one rectangle, not scattered pixels


@pytest.mark.parametrize("batch, soft", [(4, True), (3, False)])
def test_mixup_mixes_even_batches_into_soft_labels(batch, soft):
    """strong's mixup/cutmix pairs images: an odd batch (the last one) keeps hard labels."""
    x, labels = augment(PRESETS["strong"], uint8_batch(batch), classes=3)
    assert x.shape == (batch, 3, CROP, CROP)
    if soft:
        assert labels.shape == (batch, 3)
        assert torch.allclose(labels.sum(1), torch.ones(batch))
    else:
        assert torch.equal(labels, torch.arange(batch) % 3)
