"""Optimizers (timm's factory, with our per-stage LR groups) and warmup + decay schedules."""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from torch import nn

from tlcli.choices import OPTIMIZER_INFOS
from tlcli.config import OptimConfig, ScheduleConfig

# Our optimizer names -> timm's factory names and extra arguments (tlcli.choices rows).
TIMM_OPT = {info.name: (info.timm_name, info.defaults) for info in OPTIMIZER_INFOS}
USES_MOMENTUM = {info.name for info in OPTIMIZER_INFOS if info.uses_momentum}


# Any non-zero value: timm's param_groups_weight_decay puts every parameter in the no-decay
# group when weight_decay is 0, and here it only sorts parameters into decay or not.
_SORT_WEIGHT_DECAY = 1.0


def no_decay_params(model: nn.Module) -> set[int]:
    """ids of the parameters that are not decayed, as timm decides: biases, norm scales (1-D)
    and the names the model's no_weight_decay() lists (a ViT's pos_embed and cls_token)."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(
        model, weight_decay=_SORT_WEIGHT_DECAY, no_weight_decay_list=skip
    )
    return {id(p) for group in groups if group["weight_decay"] == 0.0 for p in group["params"]}


def param_groups(
    model: nn.Module, lr_mults: dict[str, float], base_lr: float, weight_decay: float
) -> list[dict]:
    """One group per (LR multiplier, decay/no-decay) pair over the trainable parameters."""
    groups: dict[tuple[float, bool], dict] = {}
    not_decayed = no_decay_params(model)
    for name, param in model.named_parameters():
        if name not in lr_mults or not param.requires_grad:
            continue
        no_decay = id(param) in not_decayed
        key = (lr_mults[name], no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": base_lr * lr_mults[name],
                "lr_mult": lr_mults[name],
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def create_optimizer(
    model: nn.Module, lr_mults: dict[str, float], cfg: OptimConfig, fused: bool = False
) -> torch.optim.Optimizer:
    timm_name, extra = TIMM_OPT[cfg.name]
    kwargs = dict(extra)
    if cfg.name in USES_MOMENTUM:
        kwargs.setdefault("momentum", cfg.momentum)
    if fused and cfg.name in ("adam", "adamw"):
        kwargs["fused"] = True  # one kernel for all params on CUDA
    groups = param_groups(model, lr_mults, cfg.lr, cfg.weight_decay)
    optimizer = create_optimizer_v2(
        groups, opt=timm_name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: ScheduleConfig) -> float:
    """Multiplier of each group's initial LR at an optimizer step (warmup, then decay)."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, max(total_steps - 1, 0))
    if step < warmup:
        return (step + 1) / (warmup + 1)
    epoch = step / max(steps_per_epoch, 1)
    if cfg.name == "none":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** int(epoch // cfg.step_epochs)
    if cfg.name == "exponential":
        return cfg.gamma**epoch
    progress = (step - warmup) / max(total_steps - warmup, 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
