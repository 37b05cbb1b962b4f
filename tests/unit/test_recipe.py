"""LP-FT, weight averaging, class balance and temperature scaling (issue 14), on tiny models."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import make_image_folder

from tlcli.checkpoint import load_checkpoint, save_checkpoint, temperature_of
from tlcli.config import load_config
from tlcli.data.split import load_split
from tlcli.errors import CheckpointError
from tlcli.inference import build_model, load_for_inference
from tlcli.metrics import expected_calibration_error
from tlcli.train.averaging import Candidate, interpolate, pick_average, running_average
from tlcli.train.balance import loss_balance
from tlcli.train.calibration import fit_temperature, uncalibrated_probabilities
from tlcli.train.loop import freeze_norm_stats
from tlcli.train.run import finetune, lp_ft_lr_mults

TINY = [
    "model.pretrained=false",
    "model.name=test_resnet",
    "data.image_size=64",
    "data.batch_size=8",
    "data.workers=1",
    "train.device=cpu",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three classes of random-colour images: a probe on random features gets some wrong."""
    root = tmp_path_factory.mktemp("data") / "images"
    return make_image_folder(root, {"a": 10, "b": 10, "c": 10}, seed=3)


def _cfg(*sets: str):
    return load_config(None, [*TINY, *sets])


def test_lp_ft_epoch_0_is_the_head_only_result_on_the_same_split(images, tmp_path):
    head = finetune(images, _cfg("strategy.name=head-only"), out=tmp_path / "head")
    lpft = finetune(
        images, _cfg("strategy.name=partial", "strategy.trainable_stages=1"), out=tmp_path / "ft"
    )
    probe, fit = lpft["history"][0], head["history"][0]
    assert probe["epoch"] == 0
    for key in ("val_acc", "val_loss", "train_acc", "head_weight_decay"):
        assert probe[key] == fit[key], key
    assert lpft["probe_val_acc"] == head["val_acc"]
    assert lpft["gain_over_probe"] == lpft["val_acc"] - head["val_acc"]
    # The probe is a candidate for best.pt: fine-tuning never ends below it on val.
    assert lpft["val_acc"] >= head["val_acc"]
    assert (
        load_checkpoint(tmp_path / "ft" / "best.pt")["metrics"]["best_val_acc"] == lpft["val_acc"]
    )
    with (tmp_path / "ft" / "metrics.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]


def test_lp_ft_starts_from_the_probe_divided_by_its_val_temperature(images, tmp_path):
    """The fine-tune starts from head-only's head / T (T calibrates it on val): the same
    argmax, so the same epoch 0 accuracy; train.lp_ft_temper_head=false keeps the raw head."""
    head = finetune(images, _cfg("strategy.name=head-only"), out=tmp_path / "head")
    fitted = load_checkpoint(tmp_path / "head" / "best.pt")["state_dict"]
    for temper in (True, False):
        out = tmp_path / f"ft-{temper}"
        sets = ("strategy.name=partial", "strategy.trainable_stages=1")
        lpft = finetune(images, _cfg(*sets, f"train.lp_ft_temper_head={temper}"), out=out)
        probe = load_checkpoint(out / "last.pt")["train_state"]["probe_state_dict"]
        t = lpft["history"][0]["head_temperature"]
        assert t >= 1.0 and (temper or t == 1.0)
        for name in ("fc.weight", "fc.bias"):
            assert torch.allclose(probe[name] * t, fitted[name], rtol=1e-5, atol=1e-6), name
        assert lpft["probe_val_acc"] == head["val_acc"]


@pytest.mark.parametrize("true_t, expected", [(3.0, 3.0), (0.5, 1.0), (1.0, 1.0)])
def test_the_softening_temperature_recovers_an_over_confidence_and_never_sharpens(true_t, expected):
    """Logits drawn calibrated, then multiplied by true_t: over-confident when true_t > 1."""
    from tlcli.train.calibration import softening_temperature

    gen = torch.Generator().manual_seed(0)
    calibrated = torch.randn(4000, 5, generator=gen) * 2
    labels = torch.multinomial(torch.softmax(calibrated, 1), 1, generator=gen).squeeze(1)
    t = softening_temperature(calibrated * true_t, labels)
    assert t == pytest.approx(expected, rel=0.1)


def test_old_recipe_has_no_probe(images, tmp_path):
    summary = finetune(
        images, _cfg("strategy.name=full", "train.lp_ft=false"), out=tmp_path / "old"
    )
    assert [row["epoch"] for row in summary["history"]] == [1]
    assert summary["probe_val_acc"] is None and summary["gain_over_probe"] is None


def test_temperature_fit_recovers_a_known_temperature_and_keeps_top1():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(z, 1), 1, generator=generator).squeeze(1)
    logits = 3.0 * z  # overconfident by a factor of 3: the right temperature is 3
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(3.0, rel=0.08)
    assert torch.equal((logits / temperature).argmax(1), logits.argmax(1))
    probs = torch.softmax(logits, 1).numpy()
    calibrated = torch.softmax(logits / temperature, 1).numpy()
    y = labels.numpy()
    assert expected_calibration_error(calibrated, y)[0] < expected_calibration_error(probs, y)[0]
    # evaluate's "before" ECE is recovered from the calibrated probabilities.
    np.testing.assert_allclose(
        uncalibrated_probabilities(calibrated, temperature), probs, atol=1e-6
    )


def test_the_checkpoint_temperature_is_applied_by_evaluate(images, tmp_path):
    summary = finetune(images, _cfg("strategy.name=head-only"), out=tmp_path / "run")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["temperature"] == summary["temperature"] > 0
    loaded = load_for_inference(tmp_path / "run" / "best.pt")
    raw, _ = build_model(best)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), raw(x) / best["temperature"])
    del best["temperature"]  # a checkpoint from before temperature scaling loads with T = 1
    assert temperature_of(best, "old.pt") == 1.0
    with pytest.raises(CheckpointError, match="temperature"):
        temperature_of({"temperature": -2.0}, "bad.pt")


def test_balance_weights_are_n_over_c_times_the_class_count():
    labels = np.array([0] * 6 + [1] * 2 + [2] * 4)
    balance = loss_balance("weights", labels, 3)
    assert balance.class_weight.tolist() == pytest.approx([12 / 18, 12 / 6, 12 / 12])
    assert loss_balance("none", labels, 3).class_weight is None
    sampler = loss_balance("sampler", labels, 3).sample_weights
    assert [sampler[labels == c].sum() for c in range(3)] == pytest.approx([1 / 3] * 3)


def test_balance_weights_reach_the_training_loss(tmp_path, monkeypatch):
    from tlcli.train import loop

    data = make_image_folder(tmp_path / "imb", {"a": 12, "b": 4}, seed=5)
    real, seen = loop.loss_fn, []

    def loss_fn(logits, targets, label_smoothing, balance=None):
        seen.append(balance)
        return real(logits, targets, label_smoothing, balance)

    monkeypatch.setattr(loop, "loss_fn", loss_fn)
    summary = finetune(
        data, _cfg("strategy.name=full", "train.balance=weights"), out=tmp_path / "run"
    )
    assert summary["balance"] == "weights"
    _, splits = load_split(tmp_path / "run" / "split.json", data)
    counts = np.bincount([s.label for s in splits["train"]], minlength=2)
    expected = counts.sum() / (2 * counts)
    assert seen and all(b.method == "weights" for b in seen)
    assert seen[0].class_weight.tolist() == pytest.approx(expected.tolist())
    assert expected[1] > expected[0]  # the rare class weighs more


def test_balance_auto_does_nothing_on_balanced_classes(images, tmp_path):
    summary = finetune(images, _cfg("strategy.name=head-only"), out=tmp_path / "run")
    assert summary["balance"] == "none"


def test_an_average_is_kept_only_when_it_beats_the_best_epoch_on_val():
    swa, wise = Candidate("swa", 0.80, 0.5), Candidate("wise-ft 0.5", 0.82, 0.6)
    assert pick_average([swa, wise], best_acc=0.81) is wise
    assert pick_average([swa, wise], best_acc=0.82) is None  # a tie keeps the epoch
    assert pick_average([swa], best_acc=0.85) is None
    assert pick_average([], best_acc=0.0) is None


def test_running_average_and_interpolation_are_means_of_the_weights():
    states = [{"w": torch.tensor([float(i)]), "n": torch.tensor(i)} for i in (1, 2, 6)]
    average = None
    for count, state in enumerate(states):
        average = running_average(average, count, state)
    assert average["w"].item() == pytest.approx(3.0) and average["n"].item() == 6
    mixed = interpolate(states[0], states[2], 0.25)
    assert mixed["w"].item() == pytest.approx(0.75 * 1 + 0.25 * 6)


def test_finetune_keeps_an_average_only_if_it_improves_val(images, tmp_path):
    cfg = _cfg("strategy.name=full", "train.epochs=2", "train.swa_epochs=2")
    summary = finetune(images, cfg, out=tmp_path / "run")
    names = [a["name"] for a in summary["averages"]]
    assert names == ["swa", "wise-ft 0.25", "wise-ft 0.5", "wise-ft 0.75"]
    epochs_best = max(row["val_acc"] for row in summary["history"])
    kept = [a for a in summary["averages"] if a["kept"]]
    assert len(kept) <= 1
    if kept:
        assert kept[0]["val_acc"] > epochs_best
        assert summary["best_weights"] == kept[0]["name"]
        assert summary["val_acc"] == kept[0]["val_acc"]
    else:
        assert summary["val_acc"] == epochs_best
        assert summary["best_weights"] in ("raw", "ema")
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["metrics"]["best_val_acc"] == summary["val_acc"]


@pytest.mark.parametrize("frozen", [True, False])
def test_averages_recompute_batchnorm_only_where_training_moved_it(
    images, tmp_path, monkeypatch, frozen
):
    """LP-FT keeps the pretrained running statistics; an average recomputed on the train
    images would shift every feature its head was fit on (hymenoptera: 0.78 for every
    average between 0.948 and 0.935)."""
    from tlcli.train import run as run_module

    calls = []
    monkeypatch.setattr(run_module, "recompute_batchnorm", lambda *a, **k: calls.append(a))
    cfg = _cfg("strategy.name=full", "train.epochs=2", "train.swa_epochs=2",
               f"train.lp_ft_freeze_bn={frozen}")  # fmt: skip
    summary = finetune(images, cfg, out=tmp_path / "run")
    assert len(summary["averages"]) == 4
    assert (len(calls) == 0) == frozen, len(calls)


def test_the_exported_onnx_graph_divides_the_logits_by_the_temperature(images, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from tlcli.export import export_model

    finetune(images, _cfg("strategy.name=head-only"), out=tmp_path / "run")
    path = tmp_path / "run" / "best.pt"
    ckpt = load_checkpoint(path)
    ckpt["temperature"] = 2.5  # a clearly visible one
    save_checkpoint(path, ckpt)
    export_model(load_for_inference(path), "onnx", tmp_path / "m.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.rand(2, 3, 64, 64)
    (logits,) = session.run(None, {"input": x.numpy()})
    raw, _ = build_model(ckpt)
    with torch.no_grad():
        np.testing.assert_allclose(logits, (raw(x) / 2.5).numpy(), rtol=1e-4, atol=1e-5)


def test_tune_reads_the_val_loss_of_the_kept_epoch_in_an_lp_ft_history():
    from tlcli.tune.search import best_epoch_val_loss

    history = [{"epoch": e, "val_loss": loss} for e, loss in ((0, 0.9), (1, 0.5), (2, 0.7))]
    summary = {"history": history, "best_epoch": 1, "best_weights": "raw"}
    assert best_epoch_val_loss(summary) == 0.5  # epoch 1, not the row before it
    assert best_epoch_val_loss(summary | {"best_epoch": 0}) == 0.9
    kept = [{"name": "swa", "val_loss": 0.4, "kept": True}]
    assert best_epoch_val_loss(summary | {"averages": kept, "best_weights": "swa"}) == 0.4


def test_lp_ft_fine_tune_lrs_scale_the_head_and_every_group():
    mults = {"conv.weight": 0.1, "head.weight": 1.0, "head.bias": 1.0}
    got = lp_ft_lr_mults(mults, {"head.weight", "head.bias"}, head_lr_mult=0.1, lr_scale=0.5)
    assert got == pytest.approx({"conv.weight": 0.05, "head.weight": 0.05, "head.bias": 0.05})


def test_the_lp_ft_lrs_reach_the_optimizer_and_the_old_recipe_keeps_its_own(
    images, tmp_path, monkeypatch
):
    """LP-FT's LRs and label smoothing (the probe was fit without) reach the loop; the old
    recipe keeps optim's."""
    from tlcli.train import run as run_module

    smoothing = {}
    real_setup = run_module.LoopSetup

    def recording_setup(*args, **kwargs):
        smoothing[name] = kwargs["label_smoothing"]
        return real_setup(*args, **kwargs)

    monkeypatch.setattr(run_module, "LoopSetup", recording_setup)
    sets = ("strategy.name=partial", "strategy.trainable_stages=1", "optim.backbone_lr_mult=0.1")
    lr_mults = {}
    for name, extra in (("lpft", "train.lp_ft=true"), ("old", "train.lp_ft=false")):
        cfg = _cfg(*sets, extra, "train.lp_ft_head_lr_mult=0.1", "train.lp_ft_lr_scale=0.5",
                   "optim.label_smoothing=0.2", "train.lp_ft_label_smoothing=0.05")  # fmt: skip
        finetune(images, cfg, out=tmp_path / name)
        groups = load_checkpoint(tmp_path / name / "last.pt")["train_state"]["optimizer"]
        lr_mults[name] = sorted({g["lr_mult"] for g in groups["param_groups"]})
    assert lr_mults["lpft"] == pytest.approx([0.05])
    assert lr_mults["old"] == pytest.approx([0.1, 1.0])
    assert smoothing == {"lpft": 0.05, "old": 0.2}


def test_frozen_norm_stats_keep_the_batchnorm_running_statistics():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.train()
    freeze_norm_stats(model)
    before = model[1].running_mean.clone()
    model(torch.randn(4, 3, 8, 8) + 5.0)
    assert model[0].training and not model[1].training
    assert torch.equal(model[1].running_mean, before)
