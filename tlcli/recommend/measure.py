"""Measurements behind `recommend`: dataset size, hygiene (duplicates, leakage), and how
similar the data is to the backbone's pretraining domain, from real features of a bounded,
class-stratified sample (probes on the last and earlier stages, LogME, the original head's
confidence)."""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.batches import batch_indices, gather
from tlcli.data.cache import decode_images
from tlcli.data.duplicates import duplicate_groups
from tlcli.data.scan import FolderScan, Sample, no_readable_images
from tlcli.errors import DataError
from tlcli.models import create_model, data_spec_of
from tlcli.progress import Reporter
from tlcli.recommend.logme import logme_score
from tlcli.recommend.probes import MIN_FOLDS, head_confidence, knn_accuracy, probe_accuracy
from tlcli.strategy import model_stages


@dataclass(frozen=True)
class Budget:
    per_class: int  # images sampled per class for the feature probes
    total: int  # and at most this many overall: bounds the time on big folders
    folds: int  # cross-validation folds of the probes
    header_sample: int  # files whose headers are read for size/mode statistics


BUDGETS = {
    "quick": Budget(per_class=100, total=600, folds=5, header_sample=300),
    "thorough": Budget(per_class=200, total=3000, folds=5, header_sample=3000),
}
BUDGETS["race"] = BUDGETS["quick"]  # the race starts from quick's probes
# Earlier stages are pooled to a 2x2 grid: global pooling throws away the layout that
# shape-like (dissimilar) data depends on.
STAGE_POOL_GRID = 2
MAX_EXAMPLES = 5


@dataclass
class SizeStats:
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    per_class: dict[str, int]  # train images per class
    per_class_min: int
    per_class_median: float
    per_class_max: int
    imbalance_ratio: float  # largest / smallest class
    image_size_median: tuple[int, int]
    image_size_min: tuple[int, int]
    image_size_max: tuple[int, int]
    modes: dict[str, int]
    formats: dict[str, int]
    skipped: int
    skipped_examples: list[dict[str, str]]


@dataclass
class Duplicates:
    exact_groups: int
    exact_files: int
    near_groups: int
    near_files: int
    cross_split_groups: int  # groups with members in train and in val/test: leakage
    label_conflict_groups: int  # the same picture filed under different classes
    examples: list[list[str]] = field(default_factory=list)
    cross_split_examples: list[list[str]] = field(default_factory=list)
    label_conflict_examples: list[list[str]] = field(default_factory=list)


@dataclass
class StageProbe:
    stage: str  # the module timm reports for this feature level
    dims: int
    accuracy: float


@dataclass
class Similarity:
    model: str
    num_sampled: int
    feature_dim: int
    probe_accuracy: float
    knn_accuracy: float
    logme: float
    stage_probes: list[StageProbe]
    head_confidence: dict[str, float] | None  # None when the model has no pretrained head
    seconds_per_image: float
    stage_names: list[str]  # backbone stages as strategy.py plans them, input first
    label_issues: int | None = None  # of the sample, by doctor's out-of-fold heads + cleanlab


def stratified_sample(
    samples: Sequence[Sample], num_classes: int, per_class: int, total: int, seed: int
) -> list[Sample]:
    """Up to per_class images of each class, shrunk evenly to fit `total`."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    quota = max(2, min(per_class, total // max(num_classes, 1)))
    chosen: list[Sample] = []
    for label in range(num_classes):
        members = sorted(by_class.get(label, []), key=lambda s: str(s.path))
        rng.shuffle(members)
        chosen.extend(members[:quota])
    return chosen


def measure_size(
    scan: FolderScan,
    train: Sequence[Sample],
    val: Sequence[Sample],
    header_sample: int,
    seed: int = 0,
) -> SizeStats:
    counts = Counter(s.label for s in train)
    per_class = {name: counts.get(i, 0) for i, name in enumerate(scan.classes)}
    values = list(per_class.values())
    everything = [s for split in scan.splits.values() for s in split]
    rng = random.Random(seed)
    sampled = rng.sample(everything, min(header_sample, len(everything)))
    sizes, modes, formats = [], Counter(), Counter()
    for sample in sampled:
        with Image.open(sample.path) as img:
            sizes.append(img.size)
            modes[img.mode] += 1
            formats[img.format or "?"] += 1
    areas = sorted(sizes, key=lambda wh: wh[0] * wh[1])
    return SizeStats(
        num_classes=len(scan.classes),
        num_train=len(train),
        num_val=len(val),
        num_test=len(scan.splits.get("test", [])),
        per_class=per_class,
        per_class_min=min(values),
        per_class_median=float(median(values)),
        per_class_max=max(values),
        imbalance_ratio=max(values) / max(min(values), 1),
        image_size_median=areas[len(areas) // 2] if areas else (0, 0),
        image_size_min=areas[0] if areas else (0, 0),
        image_size_max=areas[-1] if areas else (0, 0),
        modes=dict(modes),
        formats=dict(formats),
        skipped=len(scan.skipped),
        skipped_examples=[
            {"path": s.path, "reason": s.reason} for s in scan.skipped[:MAX_EXAMPLES]
        ],
    )


def find_duplicates(scan: FolderScan, workers: int, reporter: Reporter) -> Duplicates:
    """Exact (same bytes) and near (dHash within NEAR_DUPLICATE_BITS) duplicate groups."""
    entries = [(split, s) for split, samples in scan.splits.items() for s in samples]
    paths = [str(s.path) for _, s in entries]
    exact, near = hashed_duplicate_groups(paths, workers, reporter)
    cross = [g for g in near if len({entries[i][0] for i in g}) > 1]
    conflicts = [g for g in near if len({entries[i][1].label for i in g}) > 1]
    rel = [os.path.relpath(p, scan.root) for p in paths]
    return Duplicates(
        exact_groups=len(exact),
        exact_files=sum(len(g) for g in exact),
        near_groups=len(near),
        near_files=sum(len(g) for g in near),
        cross_split_groups=len(cross),
        label_conflict_groups=len(conflicts),
        examples=[[rel[i] for i in g] for g in near[:MAX_EXAMPLES]],
        cross_split_examples=[[rel[i] for i in g] for g in cross[:MAX_EXAMPLES]],
        label_conflict_examples=[[rel[i] for i in g] for g in conflicts[:MAX_EXAMPLES]],
    )


def hashed_duplicate_groups(
    paths: Sequence[str], workers: int, reporter: Reporter
) -> tuple[list[list[int]], list[list[int]]]:
    """duplicate_groups with a progress bar."""
    reporter.start("hash", len(paths), "hash images (duplicates)")
    groups = duplicate_groups(paths, workers, lambda: reporter.advance("hash"))
    reporter.finish("hash")
    return groups


def _pool_grid(feature_map: torch.Tensor) -> torch.Tensor:
    if feature_map.ndim == 3:  # ViT-style (B, tokens, C): mean over tokens
        return feature_map.mean(1)
    return F.adaptive_avg_pool2d(feature_map.float(), STAGE_POOL_GRID).flatten(1)


@torch.no_grad()
def extract_probe_features(
    model: torch.nn.Module,
    pixels: np.ndarray,
    augmenter: BatchAugmenter,
    batch_size: int,
    reporter: Reporter,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray | None, float]:
    """Penultimate features, pooled intermediate stages, original-head logits, s/image."""
    model.eval()
    device = torch.device("cpu")
    final, stages, logits = [], defaultdict(list), []
    has_intermediates = hasattr(model, "forward_intermediates")
    keeps_head = bool(getattr(model, "num_classes", 0))
    reporter.start("features", len(pixels), "extract features")
    started = time.perf_counter()
    for idx in batch_indices(len(pixels), batch_size, None):
        x = augmenter.center_crop(gather(pixels, idx, device))
        if has_intermediates:
            last, inter = model.forward_intermediates(x)
            for k, fmap in enumerate(inter):
                stages[k].append(_pool_grid(fmap).numpy())
        else:
            last = model.forward_features(x)
        final.append(model.forward_head(last, pre_logits=True).float().numpy())
        if keeps_head:
            logits.append(model.forward_head(last).float().numpy())
        reporter.advance("features", len(idx))
    seconds = (time.perf_counter() - started) / max(len(pixels), 1)
    reporter.finish("features")
    return (
        np.concatenate(final),
        [np.concatenate(stages[k]) for k in sorted(stages)],
        np.concatenate(logits) if logits else None,
        seconds,
    )


def require_probe_images(
    labels: np.ndarray,
    skipped: Sequence[Any],
    num_classes: int,
    classes: Sequence[str],
    reporter: Reporter,
) -> None:
    """Refuse, in one line, a sample whose readable images cannot be cross-validated: every
    class needs MIN_FOLDS of them (a decode that kept none crashed the probes before)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    short = [i for i in range(num_classes) if counts[i] < MIN_FOLDS]
    if not short:
        return
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}", "warning")
    if not len(labels):
        raise no_readable_images("the sampled train images", len(skipped))
    names = ", ".join(classes[i] if i < len(classes) else f"class {i}" for i in short)
    raise DataError(
        f"the probes need {MIN_FOLDS} readable images of each class; {names} "
        f"{'has' if len(short) == 1 else 'have'} fewer ({len(skipped)} sampled file(s) "
        "skipped, each named above); fix or add images, or remove the class"
    )


def measure_similarity(  # noqa: PLR0913 (keyword options with defaults)
    model_name: str,
    samples: Sequence[Sample],
    num_classes: int,
    budget: Budget,
    reporter: Reporter,
    seed: int = 0,
    workers: int = 1,
    disk_cache: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pretrained: bool = True,
    classes: Sequence[str] = (),
) -> Similarity:
    """Probe a pretrained backbone's frozen features on a class-stratified sample.

    pretrained=False measures a random-init backbone (tests, or a floor to compare with);
    classes name the labels in errors.
    """
    sample = stratified_sample(samples, num_classes, budget.per_class, budget.total, seed)
    model = create_model(model_name, None, pretrained=pretrained)
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(False)
    model.to(memory_format=torch.channels_last)
    spec = data_spec_of(model)
    reporter.start("decode-sample", len(sample), "decode sample")
    decoded = decode_images(
        sample,
        spec.cache_size,
        spec.interpolation,
        max_pixels,
        workers,
        disk_cache,
        lambda n: reporter.advance("decode-sample", n),
    )
    reporter.finish("decode-sample")
    require_probe_images(decoded.labels, decoded.skipped, num_classes, classes, reporter)
    augmenter = BatchAugmenter(PRESETS["none"], spec.input_size, spec.mean, spec.std, num_classes)
    final, stages, logits, seconds = extract_probe_features(
        model, decoded.pixels, augmenter, 32, reporter
    )
    labels = decoded.labels
    reporter.start("probes", None, "fit probes")
    feature_info = getattr(model, "feature_info", None) or []
    names = [
        f.get("module", f"stage{k}") if isinstance(f, dict) else f"stage{k}"
        for k, f in enumerate(feature_info)
    ]
    stage_probes = [
        StageProbe(
            names[k] if k < len(names) else f"stage{k}",
            feats.shape[1],
            probe_accuracy(feats, labels, budget.folds, seed),
        )
        for k, feats in enumerate(stages)
    ]
    result = Similarity(
        model=model_name,
        num_sampled=len(labels),
        feature_dim=int(final.shape[1]),
        probe_accuracy=probe_accuracy(final, labels, budget.folds, seed),
        knn_accuracy=knn_accuracy(final, labels, folds=budget.folds, seed=seed),
        logme=logme_score(final, labels),
        stage_probes=stage_probes,
        head_confidence=head_confidence(logits) if logits is not None else None,
        seconds_per_image=seconds,
        stage_names=[s.name for s in model_stages(model)[:-1]],
        label_issues=sample_label_issues(final, labels, num_classes, budget.folds, seed),
    )
    reporter.finish("probes")
    return result


def sample_label_issues(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int
) -> int | None:
    """How many sampled images doctor would flag as label issues; None when a class has too
    few images for the folds or cleanlab is not installed."""
    from tlcli.errors import ConfigError
    from tlcli.recommend.doctor import count_label_issues

    if np.bincount(labels, minlength=num_classes).min() < folds:
        return None
    try:
        return count_label_issues(features, labels, num_classes, folds, seed)
    except ConfigError:
        return None


def to_plain(value: Any) -> Any:
    """Dataclasses/tuples -> JSON-ready dicts/lists."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return to_plain(asdict(value))
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, np.floating | np.integer):
        return value.item()
    return value
