"""The CS231n 2x2 grid as a pure decision: measured size and similarity in, a plan and the
reasons (sentences quoting the numbers) out.

|              | similar                      | dissimilar                                      |
| little data  | head-only                    | partial with care: from the best earlier stage, |
|              |                              | else the top few stages                         |
| more data    | partial, the last few stages | the same below LOTS_PER_CLASS; full above       |
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from tlcli.config import Config

# "Little data" is per class (the lecture): median train images per class below this.
SMALL_PER_CLASS = 150
# "Lots": enough per class that retraining everything pays off rather than overfits.
LOTS_PER_CLASS = 1000
# Chance-corrected linear-probe accuracy, (acc - 1/C) / (1 - 1/C), at or above which the
# frozen features already separate the classes well: the data is "similar". Calibrated with
# bench/recommend_check.py: clothing_small scores 0.79, and there retraining the top 2 stages
# (0.883) beat the dissimilar recipe, 4 stages with the head first (0.859); was 0.80.
SIMILAR_PROBE_SCORE = 0.75
# An earlier stage beating the last features by more than this (absolute accuracy) says
# the late layers are too specific to the pretraining domain.
EARLIER_STAGE_MARGIN = 0.02
# The original (ImageNet) head's mean max-probability below this: it recognises little.
LOW_HEAD_CONFIDENCE = 0.20
# With a probe this good, a puzzled original head alone does not make the data dissimilar.
STRONG_PROBE_SCORE = 0.95
# Stages retrained by partial when the data is similar and plentiful: the top of the net.
FEW_STAGES = 2
# Baseline recipe: the defaults the benchmarks measured (docs/benchmarks.md).
HEAD_LR = 1e-3
BACKBONE_LR_MULT = 0.1
EPOCHS_SMALL = 15  # few images per epoch: more passes
EPOCHS_LARGE = 10
Z_95 = 1.96


@dataclass(frozen=True)
class Signals:
    """What the decision reads; None where a measurement was not taken."""

    num_classes: int
    num_train: int
    per_class_median: float
    stage_names: tuple[str, ...]  # the model's backbone stages (strategy.py), input first
    probe_accuracy: float | None = None
    num_sampled: int = 0
    logme: float | None = None
    stage_probes: tuple[tuple[str, float], ...] = ()  # (timm module, accuracy), input first
    head_max_prob: float | None = None


@dataclass
class Recommendation:
    strategy: str
    trainable_stages: int
    lr: float
    backbone_lr_mult: float
    epochs: int
    augment: str
    # Two-phase recipe (head first, then unfreeze). decide() gives 0: a head-first epoch
    # cost digits 3.1 points (docs/benchmarks.md). Kept in the JSON and applied if set.
    head_warmup_epochs: int
    size: str  # "small" | "large"
    similarity: str  # "similar" | "dissimilar" | "unknown"
    expected_head_only: tuple[float, float] | None
    reasons: list[str] = field(default_factory=list)


def chance_corrected(accuracy: float, num_classes: int) -> float:
    chance = 1.0 / num_classes
    return (accuracy - chance) / (1.0 - chance)


def best_earlier_stage(signals: Signals) -> tuple[str, float] | None:
    """The earlier stage whose probe beats the last stage's by the margin, if any."""
    if len(signals.stage_probes) < 2:
        return None
    *earlier, last = signals.stage_probes
    name, acc = max(earlier, key=lambda p: p[1])
    reference = max(last[1], signals.probe_accuracy or 0.0)
    return (name, acc) if acc > reference + EARLIER_STAGE_MARGIN else None


def stages_after(module: str, stage_names: tuple[str, ...]) -> int:
    """Number of backbone stages after the one containing timm module `module`."""
    for i, name in enumerate(stage_names):
        if any(part == module or part.startswith(module + ".") for part in name.split("+")):
            return len(stage_names) - 1 - i
    return math.ceil(len(stage_names) / 2)


def decide(signals: Signals) -> Recommendation:
    """Place the data in the 2x2 grid and pick a plan; every reason quotes its numbers."""
    reasons: list[str] = []
    small = signals.per_class_median < SMALL_PER_CLASS
    size_word = "little" if small else "enough"
    reasons.append(
        f"{signals.per_class_median:g} train images per class (median of {signals.num_classes} "
        f"classes) is {'below' if small else 'at least'} {SMALL_PER_CLASS}: {size_word} data"
    )
    similarity = _similarity(signals, reasons)
    strategy, k = _plan(signals, small, similarity, reasons)
    if strategy == "head-only":
        epochs = EPOCHS_LARGE
    else:
        epochs = EPOCHS_SMALL if small else EPOCHS_LARGE
    return Recommendation(
        strategy=strategy,
        trainable_stages=k,
        lr=HEAD_LR,
        backbone_lr_mult=BACKBONE_LR_MULT,
        epochs=epochs,
        # The default preset everywhere: strong augmentation (RandAugment, erasing, mixup)
        # cost little dissimilar data (digits) 18 points in 5 epochs (docs/benchmarks.md).
        augment="standard",
        head_warmup_epochs=0,
        size="small" if small else "large",
        similarity=similarity,
        expected_head_only=_expected_head_only(signals),
        reasons=reasons,
    )


def _similarity(signals: Signals, reasons: list[str]) -> str:
    """similar, dissimilar (any of the probe, an earlier stage or the original head votes so)
    or unknown (no probe); appends the reasons."""
    if signals.probe_accuracy is None:
        return "unknown"
    dissimilar_votes: list[str] = []
    score = chance_corrected(signals.probe_accuracy, signals.num_classes)
    good = score >= SIMILAR_PROBE_SCORE
    reasons.append(
        f"a linear probe on frozen features reaches {signals.probe_accuracy:.3f} "
        f"(chance-corrected {score:.2f}, {'at least' if good else 'below'} "
        f"{SIMILAR_PROBE_SCORE}) on {signals.num_sampled} sampled images"
    )
    if not good:
        dissimilar_votes.append("probe")
    earlier = best_earlier_stage(signals)
    if earlier is not None:
        last_name, last_acc = signals.stage_probes[-1]
        reasons.append(
            f"an earlier stage ({earlier[0]}: {earlier[1]:.3f}) beats the last "
            f"({last_name}: {last_acc:.3f}): the late layers are too specific for this data"
        )
        dissimilar_votes.append("earlier-stage")
    elif len(signals.stage_probes) >= 2:
        name, acc = max(signals.stage_probes[:-1], key=lambda p: p[1])
        last_name, last_acc = signals.stage_probes[-1]
        reasons.append(
            f"no earlier stage beats the last by more than {EARLIER_STAGE_MARGIN} "
            f"(best earlier {name}: {acc:.3f}, last {last_name}: {last_acc:.3f})"
        )
    if signals.head_max_prob is not None and signals.head_max_prob < LOW_HEAD_CONFIDENCE:
        reasons.append(
            f"the original head is unsure on these images (mean max probability "
            f"{signals.head_max_prob:.2f} < {LOW_HEAD_CONFIDENCE}): far from its classes"
        )
        if score < STRONG_PROBE_SCORE:
            dissimilar_votes.append("head")
    return "dissimilar" if dissimilar_votes else "similar"


def _expected_head_only(signals: Signals) -> tuple[float, float] | None:
    """The probe accuracy's 95% interval on the sample (normal approximation)."""
    if signals.probe_accuracy is None or not signals.num_sampled:
        return None
    p = signals.probe_accuracy
    half = Z_95 * math.sqrt(max(p * (1 - p), 1e-4) / signals.num_sampled)
    return (max(0.0, p - half), min(1.0, p + half))


def _plan(signals: Signals, small: bool, similarity: str, reasons: list[str]) -> tuple[str, int]:
    """(strategy, trainable stages): the grid's cell; appends the reason."""
    n_stages = len(signals.stage_names)
    if similarity != "dissimilar" and small:
        reasons.append(
            "small and similar: the lecture's case for a linear classifier on the "
            "frozen features (head-only); fine-tuning would overfit"
        )
        return "head-only", 0
    if similarity != "dissimilar":
        k = min(FEW_STAGES, n_stages)
        reasons.append(
            f"enough data and similar: retrain the top {k} stages and the head "
            "(partial) at a lowered LR"
        )
        return "partial", k
    if not small and signals.per_class_median >= LOTS_PER_CLASS:
        reasons.append(
            "lots of data and dissimilar: retrain everything (full); the "
            "pretrained weights mainly speed up convergence"
        )
        return "full", n_stages
    # Below "lots", the lecture's "partial with care": retrain from the stage whose
    # features still fit, else only the top stages. Calibrated on digits with 144 and
    # 162 train images per class (bench/recommend_check.py): 4 stages with a head-first
    # epoch did worse than the top 2 both times (0.911 and 0.935 vs 0.967 and 0.957),
    # and strong augmentation far worse (0.735).
    earlier = best_earlier_stage(signals)
    k_from_probe = stages_after(earlier[0], signals.stage_names) if earlier else 0
    k = min(max(k_from_probe, FEW_STAGES), n_stages)
    where = f"after {earlier[0]}, the best earlier stage" if earlier else "at the top"
    case = (
        "little dissimilar data, the hardest case"
        if small
        else f"dissimilar data, but not lots (< {LOTS_PER_CLASS} per class)"
    )
    reasons.append(
        f"{case}: retrain {k} of {n_stages} stages ({where}) and the head at a lowered "
        "LR, with care: too little data to retrain more"
    )
    return ("partial" if k < n_stages else "full"), k


def apply_recommendation(cfg: Config, rec: Recommendation) -> Config:
    """Follow the recommendation's strategy; settings the user changed from the defaults win."""
    defaults = Config()
    strategy = dataclasses.replace(cfg.strategy, name=rec.strategy)
    if cfg.strategy.trainable_stages == defaults.strategy.trainable_stages:
        strategy = dataclasses.replace(strategy, trainable_stages=max(rec.trainable_stages, 1))
    if cfg.strategy.head_warmup_epochs == defaults.strategy.head_warmup_epochs:
        strategy = dataclasses.replace(strategy, head_warmup_epochs=rec.head_warmup_epochs)
    return dataclasses.replace(cfg, strategy=strategy)
