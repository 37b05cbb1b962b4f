"""evaluate and export on a real head-only Lite0 run on hymenoptera (../shared)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tlcli.cli import app

pytestmark = pytest.mark.integration

WEIGHTS = "tf_efficientnet_lite0.in1k"
# Standalone preprocessing (PIL, no JPEG draft decoding) vs tlcli's: measured 4.4e-4 at most.
STANDALONE_PROB_TOLERANCE = 1e-2
runner = CliRunner()


def cli_json(*args: object) -> dict:
    result = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run(shared_dir: Path, tmp_path_factory) -> dict:
    """One head-only run (~20 s on 2 CPU cores): its dir, data folder and summary."""
    data = shared_dir / "data" / "hymenoptera_data"
    weights = shared_dir / "weights" / WEIGHTS
    if not (data.is_dir() and (weights / "model.safetensors").is_file()):
        pytest.skip("../shared data and weights are not beside the checkout")
    base = tmp_path_factory.mktemp("evaluate_real")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(base / "train-cache"))
        summary = cli_json("finetune", data, "--model", f"local-dir:{weights}",
                           "--strategy", "head-only", "--out", base / "run")  # fmt: skip
    return {"dir": base / "run", "data": data, "summary": summary}


def test_evaluate_reproduces_finetunes_val_accuracy_to_the_image(run, tmp_path, monkeypatch):
    # A fresh decode cache: the match must come from the same preprocessing, not reused pixels.
    monkeypatch.setenv("TLCLI_CACHE_DIR", str(tmp_path / "eval-cache"))
    report = cli_json("evaluate", run["dir"] / "best.pt", run["data"], "--split", "val",
                      "--report-dir", tmp_path / "report")  # fmt: skip
    summary = run["summary"]
    (model,) = report["models"]
    assert report["num_images"] == summary["num_val"] and report["skipped"] == []
    assert model["summary"]["num_correct"] == round(summary["val_acc"] * summary["num_val"])
    assert model["summary"]["top1"] == pytest.approx(summary["val_acc"], abs=1e-6)
    # Same loss too, so the same probabilities, not merely the same count of right answers.
    epochs = list(csv.DictReader((run["dir"] / "metrics.csv").open()))
    best = next(r for r in epochs if int(r["epoch"]) == summary["best_epoch"])
    # metrics.csv logs the val loss before temperature scaling; evaluate reports both.
    loss = model["report"].get("loss_before_temperature", model["summary"]["loss"])
    assert loss == pytest.approx(float(best["val_loss"]), abs=1e-4)
    # The images scored are exactly the run's val split.
    split = json.loads((run["dir"] / "split.json").read_text())
    val_files = {str(Path(split["root"]) / rel) for rel, _ in split["splits"]["val"]}
    scored = {r["path"] for r in csv.DictReader((tmp_path / "report" / "predictions.csv").open())}
    assert {str(Path(p).resolve()) for p in scored} == {str(Path(p).resolve()) for p in val_files}


def test_evaluate_on_one_image_past_a_batch_equals_batch_size_1(run, tmp_path):
    """129 = 2 x 64 + 1 val images: the old batch_indices scored rows 64-128 twice and 0-63
    never (top-1 0.535); now the same as one image at a time (0.95)."""
    folder = tmp_path / "val129"
    val = sorted((run["data"] / "val").glob("*/*.jpg"))
    for path in val[: 2 * 64 + 1]:  # evaluate's default batch size is 64
        (folder / path.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / path.parent.name / path.name).symlink_to(path)
    default, one = (
        cli_json("evaluate", run["dir"] / "best.pt", folder, *extra)["models"][0]["summary"]
        for extra in ([], ["--batch-size", "1"])
    )
    assert default["top1"] == one["top1"] and default["top1"] > 0.9
    assert default["loss"] == pytest.approx(one["loss"], abs=1e-4)


def standalone_preprocess(path: Path, pre: dict) -> np.ndarray:
    """What the sidecar tells a deployment to do, written with Pillow and numpy only."""
    img = Image.open(path).convert("RGB")
    short = pre["resize_shorter_side_to"]
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre["interpolation"]]
    # torchvision's rule (timm's eval transform): the long side truncated, the offset rounded.
    w, h = img.size
    size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(size, resample)
    crop = pre["center_crop"]
    left, top = round((img.width - crop) / 2), round((img.height - crop) / 2)
    x = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32) / 255
    return ((x - pre["mean"]) / pre["std"]).transpose(2, 0, 1).astype(np.float32)


def test_onnx_export_passes_parity_and_its_sidecar_is_enough_to_deploy(run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    out = tmp_path / "ants.onnx"
    result = cli_json("export", run["dir"] / "best.pt", "--format", "onnx", "--out", out)
    parity = result["parity"]
    assert parity["checked"] and parity["passed"], parity
    assert parity["images"] >= 8 and parity["batch_sizes"] == [parity["images"], 1]
    assert parity["max_abs_prob_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    assert "val images of the run" in parity["source"]

    sidecar = json.loads((tmp_path / "ants.onnx.json").read_text())
    assert sidecar["classes"] == ["ants", "bees"]
    pre = sidecar["preprocessing"]
    assert pre["input_size"] == [3, 224, 224] and len(pre["mean"]) == len(pre["std"]) == 3

    # A deployment with only the .onnx and its sidecar: any batch size, same answers as tlcli.
    files = sorted((run["data"] / "val").rglob("*.jpg"))[::5]  # 31 of the 153 val images
    tlcli_probs = cli_json("predict", run["dir"] / "best.pt", *files, "--top-k", "2")
    expected = np.array(
        [[next(t["probability"] for t in p["top_k"] if t["class"] == c) for c in ("ants", "bees")]
         for p in tlcli_probs["predictions"]]
    )  # fmt: skip
    assert [p["path"] for p in tlcli_probs["predictions"]] == [str(f) for f in files]
    batch = np.stack([standalone_preprocess(f, pre) for f in files])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {sidecar["input_name"]: batch})
    assert logits.shape == (len(files), 2)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert (probs.argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(probs, expected, atol=STANDALONE_PROB_TOLERANCE)
