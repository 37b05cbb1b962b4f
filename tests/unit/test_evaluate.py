"""evaluate / predict / export on tiny test_resnet checkpoints trained on generated images."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import make_image_folder
from PIL import Image
from torch.torch_version import TorchVersion
from typer.testing import CliRunner

from tlcli.checkpoint import save_checkpoint
from tlcli.cli import app
from tlcli.config import Config, apply_overrides
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.errors import (
    EXIT_CHECKPOINT,
    EXIT_MODEL,
    EXIT_RUN_DIR,
    CheckpointError,
    DataError,
    ModelError,
)
from tlcli.evaluate import evaluate_models, select_eval_folders
from tlcli.export import export_model, sidecar_path
from tlcli.inference import _Probabilities, load_models, predict_logits
from tlcli.predict import predict_files
from tlcli.train.run import finetune

CLASSES = ("a", "b", "c")
TRAIN_PER_CLASS = 6
VAL_PER_CLASS = 3
SIDE = 40  # px; decoded at the 64 px input size's cache size
runner = CliRunner()


def tiny_config(seed: int) -> Config:
    return apply_overrides(
        Config(),
        {
            "model": {"name": "test_resnet", "pretrained": False},
            "strategy": {"name": "head-only"},
            "train": {"epochs": 1, "device": "cpu", "seed": seed},
            "data": {"image_size": 64, "workers": 1},
        },
        "test",
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Data root with train/ and val/, and two runs with different seeds."""
    base = tmp_path_factory.mktemp("evaluate")
    root = make_image_folder(
        base / "data",
        counts=dict.fromkeys(CLASSES, TRAIN_PER_CLASS),
        layout="split",
        val_counts=dict.fromkeys(CLASSES, VAL_PER_CLASS),
        side=SIDE,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(base / "cache"))
        summaries = [finetune(root, tiny_config(seed), out=base / f"run{seed}") for seed in (0, 1)]
    return {
        "base": base,
        "root": root,
        "summaries": summaries,
        "ckpts": [Path(s["paths"]["best"]) for s in summaries],
    }


def read_checkpoint(path: Path) -> dict:
    with torch.serialization.safe_globals([TorchVersion]):
        return torch.load(path, map_location="cpu", weights_only=True)


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_evaluate_reproduces_finetune_val_accuracy_to_the_image(trained):
    summary = trained["summaries"][0]
    evaluation = evaluate_models(load_models(trained["ckpts"][:1]), trained["root"], split="val")
    report = evaluation.report
    (entry,) = report["models"]
    assert report["split"] == "val" and report["num_images"] == summary["num_val"]
    assert entry["summary"]["num_correct"] == round(summary["val_acc"] * summary["num_val"])
    assert entry["weights"] == "raw" and "no EMA" in entry["weights_note"]
    detail = entry["report"]
    assert detail["top5"] is None  # 3 classes: top-5 is meaningless
    assert [row["class"] for row in detail["per_class"]] == list(CLASSES)
    assert np.array(detail["confusion_matrix"]).sum() == len(CLASSES) * VAL_PER_CLASS
    assert 0.0 <= detail["ece"] <= 1.0 and len(detail["reliability"]) == 15


def test_default_split_prefers_test_then_val_then_everything(tmp_path):
    root = make_image_folder(tmp_path / "d", counts={"a": 1, "b": 1}, layout="split")
    assert select_eval_folders(root)[0] == "val"
    make_image_folder(root / "test", counts={"a": 1, "b": 1})
    assert select_eval_folders(root)[0] == "test"
    flat = make_image_folder(tmp_path / "flat", counts={"a": 1, "b": 1})
    assert select_eval_folders(flat)[:2] == ("all", [flat])
    with pytest.raises(DataError, match="no test/ folder"):
        select_eval_folders(flat, "test")


def test_cli_json_is_the_only_thing_on_stdout(trained):
    result = invoke("evaluate", trained["ckpts"][0], trained["root"], "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"][0]["report"]["n"] == len(CLASSES) * VAL_PER_CLASS
    assert report["ensemble"] is None


def test_ensemble_is_the_mean_of_member_probabilities_side_by_side(trained):
    evaluation = evaluate_models(load_models(trained["ckpts"]), trained["root"], split="val")
    report = evaluation.report
    assert [m["name"] for m in report["models"]] == ["run0/best.pt", "run1/best.pt"]
    assert report["primary"] == "ensemble"
    members = list(evaluation.predictions.member_probs.values())
    np.testing.assert_allclose(evaluation.primary_probs(), (members[0] + members[1]) / 2)
    assert report["ensemble"]["summary"]["top1"] == report["ensemble"]["report"]["top1"]

    result = invoke("evaluate", *trained["ckpts"], trained["root"], "--split", "val")
    assert result.exit_code == 0, result.output
    assert "ensemble" in result.stdout and "run1/best.pt" in result.stdout  # the result: stdout


def test_checkpoints_with_classes_in_another_order_are_aligned(trained, tmp_path):
    ckpt = read_checkpoint(trained["ckpts"][0])
    order = [2, 0, 1]
    ckpt["classes"] = [ckpt["classes"][i] for i in order]
    for key in ("fc.weight", "fc.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key][order]
    ckpt.pop("format"), ckpt.pop("format_version")
    permuted = tmp_path / "permuted" / "best.pt"
    permuted.parent.mkdir()
    save_checkpoint(permuted, ckpt)
    evaluation = evaluate_models(
        load_models([trained["ckpts"][0], permuted]), trained["root"], split="val"
    )
    original, reordered = evaluation.predictions.member_probs.values()
    np.testing.assert_allclose(original, reordered, atol=1e-6)

    ckpt["classes"] = ["a", "b", "zebra"]
    other = tmp_path / "other.pt"
    save_checkpoint(other, ckpt)
    with pytest.raises(CheckpointError, match="same classes"):
        load_models([trained["ckpts"][0], other])


def test_a_subset_of_classes_even_one_is_evaluated(trained, tmp_path):
    subset = tmp_path / "only-b"
    shutil.copytree(trained["root"] / "val" / "b", subset / "b")
    report = evaluate_models(load_models(trained["ckpts"][:1]), subset).report
    assert report["folder_classes"] == ["b"] and report["num_images"] == VAL_PER_CLASS
    assert report["classes"] == list(CLASSES)
    assert any("subset" in w for w in report["warnings"])
    per_class = {row["class"]: row["support"] for row in report["models"][0]["report"]["per_class"]}
    assert per_class == {"a": 0, "b": VAL_PER_CLASS, "c": 0}


def test_a_folder_class_the_checkpoint_does_not_know_is_one_clear_line(trained, tmp_path):
    data = make_image_folder(tmp_path / "zoo", counts={"a": 2, "zebra": 2})
    result = invoke("evaluate", trained["ckpts"][0], data)
    assert result.exit_code == EXIT_CHECKPOINT
    (line,) = error_lines(result)
    assert "zebra" in line and "a, b, c" in line


def test_report_dir_is_written_once_and_never_overwritten(trained, tmp_path):
    out = tmp_path / "report"
    result = invoke("evaluate", *trained["ckpts"], trained["root"], "--split", "val",
                    "--report-dir", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    names = {"report.json", "report.html", "predictions.csv", "confusion_matrix.png",
             "reliability.png"}  # fmt: skip
    assert {p.name for p in out.iterdir()} == names
    for png in ("confusion_matrix.png", "reliability.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and min(image.size) > 300
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,true,predicted,confidence,correct,predicted[run0/best.pt]")
    assert len(rows) == 1 + len(CLASSES) * VAL_PER_CLASS
    assert json.loads((out / "report.json").read_text())["ensemble"]["members"]
    before = (out / "report.json").read_bytes()
    again = invoke("evaluate", trained["ckpts"][0], trained["root"], "--report-dir", out)
    assert again.exit_code == EXIT_RUN_DIR
    assert (out / "report.json").read_bytes() == before


def test_tta_averages_softmax_probabilities_of_the_flipped_view():
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    pixels = np.random.default_rng(0).integers(0, 256, (4, 72, 72, 3), dtype=np.uint8)
    augmenter = BatchAugmenter(PRESETS["none"], 64, (0.5,) * 3, (0.5,) * 3, 3)
    wrapped = _Probabilities(model)
    probs = predict_logits(wrapped, pixels, augmenter, torch.device("cpu"), 8, hflip=True)
    x = augmenter.center_crop(torch.from_numpy(pixels))
    with torch.no_grad():
        expected = (model(x).softmax(-1) + model(x.flip(-1)).softmax(-1)) / 2
    torch.testing.assert_close(probs, expected)


def test_ema_weights_are_used_when_they_were_better_and_the_report_says_so(trained, tmp_path):
    ckpt = read_checkpoint(trained["ckpts"][0])
    ckpt.pop("format"), ckpt.pop("format_version")
    ema = {k: v.clone() for k, v in ckpt["state_dict"].items()}
    ema["fc.bias"] = ema["fc.bias"] + torch.tensor([100.0, 0.0, 0.0])  # always predicts "a"
    ckpt.update(ema_state_dict=ema, best_weights="ema")
    path = tmp_path / "ema.pt"
    save_checkpoint(path, ckpt)
    report = evaluate_models(load_models([path]), trained["root"], split="val").report
    entry = report["models"][0]
    assert entry["weights"] == "ema" and "EMA" in entry["weights_note"]
    assert entry["report"]["top1"] == pytest.approx(1 / 3)
    raw = evaluate_models(load_models([path], "raw"), trained["root"], split="val").report
    assert raw["models"][0]["weights"] == "raw"
    result = invoke("evaluate", trained["ckpts"][0], trained["root"], "--weights", "ema")
    assert result.exit_code == EXIT_CHECKPOINT and "no EMA" in result.stderr


def test_predict_reports_unreadable_files_and_carries_on(trained, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(trained["root"] / "val" / "a", folder / "nested")
    (folder / "notes.jpg").write_text("not an image at all")
    result = invoke("predict", trained["ckpts"][0], folder, tmp_path / "missing.png",
                    "--ckpt", trained["ckpts"][1], "--top-k", "2", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["predictions"]) == VAL_PER_CLASS
    assert all(len(p["top_k"]) == 2 and set(p["members"]) for p in report["predictions"])
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert "not an image" in skipped["notes.jpg"] and "missing.png" in skipped
    assert "notes.jpg" in result.stderr


def test_predict_csv_refuses_to_overwrite_without_force(trained, tmp_path):
    csv_path = tmp_path / "preds.csv"
    image = trained["root"] / "val" / "b"
    first = invoke("predict", trained["ckpts"][0], image, "--csv", csv_path)
    assert first.exit_code == 0, first.output
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,label,confidence,p_a,p_b,p_c" and len(lines) == 1 + VAL_PER_CLASS
    assert invoke("predict", trained["ckpts"][0], image, "--csv", csv_path).exit_code == 6
    assert (
        invoke("predict", trained["ckpts"][0], image, "--csv", csv_path, "--force").exit_code == 0
    )


def test_predict_files_matches_evaluate_probabilities(trained):
    models = load_models(trained["ckpts"][:1])
    evaluation = evaluate_models(models, trained["root"], split="val")
    result = predict_files(models, [trained["root"] / "val"])
    by_path = dict(
        zip(map(str, evaluation.predictions.paths), evaluation.primary_probs(), strict=False)
    )
    for row, path in zip(
        result.probs, (p["path"] for p in result.report["predictions"]), strict=False
    ):
        np.testing.assert_allclose(row, by_path[path], atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_passes_parity_and_records_preprocessing(trained, tmp_path, fmt):
    (loaded,) = load_models(trained["ckpts"][:1])
    out = tmp_path / f"model.{fmt}"
    result = export_model(loaded, fmt, out, check_images=trained["root"] / "val")
    parity = result["parity"]
    assert parity["checked"] and parity["passed"] and parity["top1_agreement"] == 1.0
    assert parity["max_abs_prob_diff"] <= parity["tolerance"]
    assert parity["images"] == len(CLASSES) * VAL_PER_CLASS and parity["batch_sizes"][1] == 1
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["classes"] == list(CLASSES)
    assert sidecar["preprocessing"]["input_size"] == [3, 64, 64]
    assert {"mean", "std", "interpolation", "crop_pct"} <= set(sidecar["preprocessing"])
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (logits,) = session.run(None, {"input": np.zeros((5, 3, 64, 64), np.float32)})
        assert logits.shape == (5, len(CLASSES))  # dynamic batch


def test_export_without_onnxruntime_says_parity_was_not_checked(trained, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails like a missing extra
    (loaded,) = load_models(trained["ckpts"][:1])
    result = export_model(loaded, "onnx", tmp_path / "m.onnx")  # run's own val images
    assert result["parity"]["checked"] is False
    assert "onnxruntime is not installed" in result["parity"]["reason"]
    assert (tmp_path / "m.onnx").is_file()


def test_export_writes_nothing_when_the_exported_model_disagrees(trained, tmp_path, monkeypatch):
    import tlcli.export

    real_run = tlcli.export._run_torchscript

    def off_by_a_bit(path, x):  # an exporter bug that shifts one logit
        logits = real_run(path, x)
        logits[:, 0] += 0.5
        return logits

    monkeypatch.setattr(tlcli.export, "_run_torchscript", off_by_a_bit)
    (loaded,) = load_models(trained["ckpts"][:1])
    out = tmp_path / "m.pt"
    with pytest.raises(ModelError, match="parity check failed.*nothing was written"):
        export_model(loaded, "torchscript", out, check_images=trained["root"] / "val")
    assert list(tmp_path.iterdir()) == []  # no model, no sidecar, no temp file


def test_export_without_the_onnx_package_says_how_to_install_it(trained, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)
    result = invoke("export", trained["ckpts"][0], "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert result.exit_code == EXIT_MODEL
    (line,) = error_lines(result)
    assert "pip install 'tlcli[onnx]'" in line and "--format torchscript" in line
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_refuses_to_overwrite(trained, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"user's file")
    result = invoke("export", trained["ckpts"][0], "--format", "onnx", "--out", out)
    assert result.exit_code == EXIT_RUN_DIR and out.read_bytes() == b"user's file"


class PlantsMarker:
    """Unpickling this would create a file: the proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_malicious_pickle_is_refused_and_never_runs(trained, tmp_path, writer, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = {"format": "tlcli-checkpoint", "format_version": 1, "x": PlantsMarker(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        with evil.open("wb") as handle:
            pickle.dump(payload, handle)
    # Sanity: the file really is armed.
    assert not marker.exists()
    args = {
        "evaluate": ("evaluate", evil, trained["root"]),
        "predict": ("predict", evil, trained["root"] / "val"),
        "export": ("export", evil, "--format", "onnx", "--out", tmp_path / "m.onnx"),
    }[command]
    result = invoke(*args)
    assert result.exit_code == EXIT_CHECKPOINT
    (line,) = error_lines(result)
    assert "needs code to unpickle" in line
    if writer == "torch.save":
        assert "(exec)" in line  # names what it would have called
    assert not marker.exists()
    assert result.stdout == ""
    assert not (tmp_path / "m.onnx").exists()


def command_args(command: str, ckpt: Path, trained: dict, tmp_path: Path) -> tuple:
    return {
        "evaluate": ("evaluate", ckpt, trained["root"]),
        "predict": ("predict", ckpt, trained["root"] / "val"),
        "export": ("export", ckpt, "--format", "torchscript", "--out", tmp_path / "m.pt"),
    }[command]


@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_plain_state_dict_is_refused(trained, tmp_path, command):
    foreign = tmp_path / "weights.pt"
    torch.save(read_checkpoint(trained["ckpts"][0])["state_dict"], foreign)
    result = invoke(*command_args(command, foreign, trained, tmp_path))
    assert result.exit_code == EXIT_CHECKPOINT
    (line,) = error_lines(result)
    assert "not a tlcli checkpoint (no tlcli format marker)" in line
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_one_line_not_a_traceback(trained, tmp_path, damage):
    good = trained["ckpts"][0].read_bytes()
    content = {"truncated": good[: len(good) // 2], "empty": b"", "garbage": b"\x00\x01" * 64}
    broken = tmp_path / "best.pt"
    broken.write_bytes(content[damage])
    result = invoke("evaluate", broken, trained["root"])
    assert result.exit_code == EXIT_CHECKPOINT
    (line,) = error_lines(result)
    assert "is not a readable checkpoint" in line and "Traceback" not in result.output
