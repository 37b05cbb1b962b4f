"""head-only / partial / full: which stages are frozen and which learning rate each group gets.

Stages come from timm's coarse `group_matcher` (stem, stages, head), so this works for any
timm architecture. The plan is a pure function of the stage list (table-tested); applying
it sets `requires_grad` and keeps frozen modules, BatchNorm statistics included, in eval mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from timm.models import group_parameters
from torch import nn

from tlcli.errors import ConfigError
from tlcli.models import classifier_param_names

HEAD_STAGE = "head"


@dataclass(frozen=True)
class Stage:
    name: str
    params: tuple[str, ...]
    num_params: int  # number of scalar weights


@dataclass(frozen=True)
class StagePlan:
    name: str
    trainable: bool
    lr_mult: float  # multiplies optim.lr
    num_params: int


@dataclass(frozen=True)
class FreezePlan:
    strategy: str  # head-only | partial | full
    trainable_stages: int  # backbone stages retrained (0 for head-only)
    stages: tuple[StagePlan, ...]  # backbone stages in input-to-output order, then the head

    @property
    def trainable_params(self) -> int:
        return sum(s.num_params for s in self.stages if s.trainable)

    @property
    def total_params(self) -> int:
        return sum(s.num_params for s in self.stages)

    @property
    def frozen_stage_names(self) -> list[str]:
        return [s.name for s in self.stages if not s.trainable]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [asdict(s) for s in self.stages]
        return data


def _stage_name(params: list[str]) -> str:
    """A readable name: the shared dotted prefix (blocks.3), else the top-level modules."""
    parts = [p.split(".") for p in params]
    prefix: list[str] = []
    for tokens in zip(*(p[:-1] for p in parts), strict=False):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    if prefix:
        return ".".join(prefix[:2])
    tops = []
    for p in parts:
        top = ".".join(p[:2]) if len(p) > 2 and p[1].isdigit() else p[0]
        if top not in tops:
            tops.append(top)
    return "+".join(tops[:3]) + ("+..." if len(tops) > 3 else "")


def model_stages(model: nn.Module) -> list[Stage]:
    """Backbone stages in order (timm coarse groups) and the classifier head last."""
    head = set(classifier_param_names(model))
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    groups = group_parameters(model, model.group_matcher(coarse=True))
    stages = []
    for group_id in sorted(groups):
        params = [n for n in groups[group_id] if n not in head]
        if params:
            # timm's group 0 is always the stem, however its modules are named.
            name = "stem" if not stages else _stage_name(params)
            stages.append(Stage(name, tuple(params), sum(sizes[n] for n in params)))
    stages.append(Stage(HEAD_STAGE, tuple(sorted(head)), sum(sizes[n] for n in head)))
    return stages


def plan_strategy(
    stage_sizes: list[tuple[str, int]],
    strategy: str,
    trainable_stages: int,
    backbone_lr_mult: float,
    layer_decay: float = 1.0,
) -> FreezePlan:
    """Decide what trains. stage_sizes: backbone stages in order, then the head (last).

    Retrained backbone stages get backbone_lr_mult (the lecture: ~1/10 of the head's LR or
    less), times layer_decay for each stage further from the head.
    """
    *backbone, head = stage_sizes
    if strategy == "head-only":
        k = 0
    elif strategy == "full":
        k = len(backbone)
    elif strategy == "partial":
        if trainable_stages < 1:
            raise ConfigError("--trainable-stages must be >= 1 for partial")
        k = min(trainable_stages, len(backbone))
    else:
        raise ConfigError(f"strategy {strategy!r} must be head-only, partial or full here")
    first_trained = len(backbone) - k
    plans = []
    for i, (name, size) in enumerate(backbone):
        trainable = i >= first_trained
        depth_from_head = len(backbone) - 1 - i
        mult = backbone_lr_mult * layer_decay**depth_from_head if trainable else 0.0
        plans.append(StagePlan(name, trainable, mult, size))
    plans.append(StagePlan(head[0], True, 1.0, head[1]))
    return FreezePlan(strategy, k, tuple(plans))


def plan_for_model(
    model: nn.Module,
    strategy: str,
    trainable_stages: int,
    backbone_lr_mult: float,
    layer_decay: float = 1.0,
) -> FreezePlan:
    stages = model_stages(model)
    return plan_strategy(
        [(s.name, s.num_params) for s in stages],
        strategy,
        trainable_stages,
        backbone_lr_mult,
        layer_decay,
    )


def apply_plan(model: nn.Module, plan: FreezePlan) -> dict[str, float]:
    """Set requires_grad per the plan; returns {param name: lr multiplier} of trainable ones."""
    stages = model_stages(model)
    if [s.name for s in stages] != [s.name for s in plan.stages]:
        raise ConfigError("the saved strategy plan does not match this model's stages")
    trainable: dict[str, float] = {}
    by_name = dict(model.named_parameters())
    for stage, stage_plan in zip(stages, plan.stages, strict=True):
        for name in stage.params:
            by_name[name].requires_grad_(stage_plan.trainable)
            if stage_plan.trainable:
                trainable[name] = stage_plan.lr_mult
    return trainable


def set_train_mode(model: nn.Module) -> None:
    """model.train(), but every module with no trainable parameter below it stays in eval.

    Frozen BatchNorm must not update its running statistics, and frozen dropout/drop-path
    would only add noise: the lecture's "frozen BN layers stay in inference mode".
    """
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()
