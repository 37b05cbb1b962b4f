"""Freezing plans (table tests), stages of real timm models, and applying a plan to a model."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from tlcli.errors import ConfigError
from tlcli.models import classifier_param_names
from tlcli.strategy import (
    HEAD_STAGE,
    apply_plan,
    model_stages,
    plan_for_model,
    plan_strategy,
    set_train_mode,
)

# Four backbone stages and a head, sizes chosen so sums identify the stages.
STAGES = [("stem", 1), ("s1", 10), ("s2", 100), ("s3", 1000), (HEAD_STAGE, 10000)]
MODELS = ("test_resnet", "test_efficientnet", "test_vit", "vit_tiny_patch16_224")


def _trainable(plan) -> list[str]:
    return [s.name for s in plan.stages if s.trainable]


@pytest.mark.parametrize(
    "strategy, k, expected_trainable, expected_k",
    [
        ("head-only", 2, ["head"], 0),  # trainable_stages is ignored for head-only
        ("partial", 1, ["s3", "head"], 1),
        ("partial", 2, ["s2", "s3", "head"], 2),
        ("partial", 4, ["stem", "s1", "s2", "s3", "head"], 4),
        ("partial", 99, ["stem", "s1", "s2", "s3", "head"], 4),  # clamped to the stage count
        ("full", 1, ["stem", "s1", "s2", "s3", "head"], 4),
    ],
)
def test_plan_trains_the_right_stages(strategy, k, expected_trainable, expected_k):
    plan = plan_strategy(STAGES, strategy, k, backbone_lr_mult=0.1)
    assert [s.name for s in plan.stages] == [name for name, _ in STAGES]
    assert _trainable(plan) == expected_trainable
    assert plan.trainable_stages == expected_k
    assert plan.strategy == strategy
    assert plan.total_params == 11111
    assert plan.trainable_params == sum(dict(STAGES)[n] for n in expected_trainable)
    assert plan.frozen_stage_names == [n for n, _ in STAGES if n not in expected_trainable]
    for stage in plan.stages:
        assert (stage.lr_mult > 0) == stage.trainable


@pytest.mark.parametrize("mult, decay", [(0.1, 1.0), (0.1, 0.5), (0.2, 0.8), (0.0, 0.7)])
def test_lr_multipliers_are_backbone_mult_times_layer_decay_per_depth(mult, decay):
    plan = plan_strategy(STAGES, "full", 1, backbone_lr_mult=mult, layer_decay=decay)
    lrs = {s.name: s.lr_mult for s in plan.stages}
    assert lrs[HEAD_STAGE] == 1.0  # the new head trains at optim.lr
    for depth, name in enumerate(["s3", "s2", "s1", "stem"]):  # distance from the head
        assert lrs[name] == pytest.approx(mult * decay**depth)


def test_partial_decay_counts_depth_from_the_head():
    plan = plan_strategy(STAGES, "partial", 2, backbone_lr_mult=0.1, layer_decay=0.5)
    lrs = {s.name: s.lr_mult for s in plan.stages}
    assert lrs == {"stem": 0.0, "s1": 0.0, "s2": pytest.approx(0.05), "s3": 0.1, "head": 1.0}


@pytest.mark.parametrize("strategy, k", [("auto", 1), ("partial", 0), ("bogus", 1)])
def test_plan_rejects_what_it_cannot_do(strategy, k):
    with pytest.raises(ConfigError):
        plan_strategy(STAGES, strategy, k, backbone_lr_mult=0.1)


def test_plan_to_dict_is_plain_data():
    data = plan_strategy(STAGES, "partial", 2, 0.1).to_dict()
    assert data["strategy"] == "partial" and data["trainable_stages"] == 2
    assert data["stages"][-1] == {
        "name": "head",
        "trainable": True,
        "lr_mult": 1.0,
        "num_params": 10000,
    }


# --- real timm models -----------------------------------------------------------------------


def _model(name: str, num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


@pytest.mark.parametrize("name", MODELS)
def test_model_stages_cover_every_parameter_once_in_order(name):
    model = _model(name)
    stages = model_stages(model)
    assert stages[0].name == "stem" and stages[-1].name == HEAD_STAGE
    assert len(stages) >= 4
    assert list(stages[-1].params) == sorted(classifier_param_names(model))
    names = [n for stage in stages for n in stage.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # exactly once each
    assert len(set(s.name for s in stages)) == len(stages)
    # Input-to-output order: the stages follow the model's own parameter order.
    order = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    firsts = [min(order[n] for n in stage.params) for stage in stages[:-1]]
    assert firsts == sorted(firsts)
    sizes = dict(model.named_parameters())
    for stage in stages:
        assert stage.num_params == sum(sizes[n].numel() for n in stage.params)


def test_model_stages_of_known_architectures():
    assert [s.name for s in model_stages(_model("test_resnet"))] == [
        "stem",
        "layer1.0",
        "layer2.0",
        "layer3.0",
        "layer4.0",
        "head",
    ]
    vit = [s.name for s in model_stages(_model("test_vit"))]
    assert vit[1] == "blocks.0" and vit[-1] == "head"


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
@pytest.mark.parametrize("strategy, k", [("head-only", 1), ("partial", 2), ("full", 1)])
def test_apply_plan_freezes_and_frozen_bn_stays_in_eval(name, strategy, k):
    model = _model(name)
    plan = plan_for_model(model, strategy, k, backbone_lr_mult=0.1, layer_decay=0.5)
    lr_mults = apply_plan(model, plan)
    stages = model_stages(model)
    params = dict(model.named_parameters())
    for stage, stage_plan in zip(stages, plan.stages, strict=True):
        for param_name in stage.params:
            assert params[param_name].requires_grad == stage_plan.trainable
            if stage_plan.trainable:
                assert lr_mults[param_name] == stage_plan.lr_mult
            else:
                assert param_name not in lr_mults
    assert sum(params[n].numel() for n in lr_mults) == plan.trainable_params

    set_train_mode(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    for module in norms:
        trainable = any(p.requires_grad for p in module.parameters())
        assert module.training == trainable
    assert model.training  # the model itself trains: its head does
    frozen_bn = [m for m in norms if not m.training]
    assert bool(frozen_bn) == (strategy != "full")


def test_frozen_bn_statistics_do_not_move_in_a_training_step():
    model = _model("test_resnet")
    apply_plan(model, plan_for_model(model, "partial", 1, 0.1))
    set_train_mode(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    after = model.state_dict()
    frozen = {n for s in model_stages(model)[:-2] for n in s.params}
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen}
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved  # the trained stage's BN statistics did update...
    assert not {k for k in moved if k.rsplit(".", 1)[0] in frozen_modules}  # ...frozen ones not


def test_apply_plan_refuses_a_plan_of_another_model():
    plan = plan_for_model(_model("test_efficientnet"), "full", 1, 0.1)
    with pytest.raises(ConfigError):
        apply_plan(_model("test_resnet"), plan)
