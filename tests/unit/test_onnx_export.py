"""The ONNX contract: metadata in the file, `predict model.onnx`, and `export --quantize int8`.

Tiny test_resnet checkpoints trained on generated images; every ONNX file is run by the real
onnxruntime.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from corpus import make_image_folder
from typer.testing import CliRunner

from tlcli import __version__
from tlcli.cli import app
from tlcli.config import Config, apply_overrides
from tlcli.errors import EXIT_CHECKPOINT, EXIT_DATA, EXIT_MODEL, CheckpointError
from tlcli.export import export_model, fp32_path, quantize_int8, sidecar_path
from tlcli.inference import load_for_inference, load_models
from tlcli.onnx_model import open_session, read_contract
from tlcli.predict import predict_files
from tlcli.train.run import finetune

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

CLASSES = ("a", "b", "c")
runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A head-only run on generated images (train/ and val/) and its fp32 ONNX export."""
    base = tmp_path_factory.mktemp("onnx")
    root = make_image_folder(
        base / "data",
        counts=dict.fromkeys(CLASSES, 8),
        layout="split",
        val_counts=dict.fromkeys(CLASSES, 4),
        side=40,
    )
    cfg = apply_overrides(
        Config(),
        {
            "model": {"name": "test_resnet", "pretrained": False},
            "strategy": {"name": "head-only"},
            "train": {"epochs": 1, "device": "cpu", "seed": 0},
            "data": {"image_size": 64, "workers": 1},
        },
        "test",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLCLI_CACHE_DIR", str(base / "cache"))
        summary = finetune(root, cfg, out=base / "run")
    ckpt = Path(summary["paths"]["best"])
    onnx_file = base / "export" / "model.onnx"
    export_model(load_for_inference(ckpt), "onnx", onnx_file)
    return {"base": base, "root": root, "ckpt": ckpt, "onnx": onnx_file}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_the_onnx_file_carries_classes_preprocessing_temperature_and_version(run, tmp_path):
    loaded = load_for_inference(run["ckpt"])
    contract = read_contract(open_session(run["onnx"]), run["onnx"])
    assert contract.classes == list(CLASSES)
    assert contract.spec == loaded.spec  # input size, interpolation, mean, std, crop pct
    assert contract.architecture == "test_resnet" and contract.version == __version__
    # finetune now fits a temperature (h14): the file carries the checkpoint's, whatever it is.
    assert contract.temperature == loaded.temperature and contract.quantization == "none"
    # A calibrated checkpoint's temperature travels too (h14 stores it as ckpt["temperature"]).
    calibrated = dataclasses.replace(loaded, temperature=1.75)
    out = tmp_path / "t.onnx"
    export_model(calibrated, "onnx", out)
    assert read_contract(open_session(out), out).temperature == 1.75


def predict_json(*args: object) -> dict:
    result = invoke("predict", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_predict_on_the_onnx_file_equals_predict_on_the_checkpoint(run, tmp_path):
    # Only the .onnx, in a folder of its own: no checkpoint, no sidecar, no run dir.
    alone = tmp_path / "ship" / "model.onnx"
    alone.parent.mkdir()
    shutil.copy(run["onnx"], alone)
    photos = run["root"] / "val"
    from_ckpt = predict_json(run["ckpt"], photos, "--top-k", "3")
    from_onnx = predict_json(alone, photos, "--top-k", "3")
    assert from_onnx["classes"] == from_ckpt["classes"]
    rows_ckpt, rows_onnx = from_ckpt["predictions"], from_onnx["predictions"]
    assert [r["path"] for r in rows_onnx] == [r["path"] for r in rows_ckpt]
    assert [r["label"] for r in rows_onnx] == [r["label"] for r in rows_ckpt]
    for a, b in zip(rows_ckpt, rows_onnx, strict=True):
        assert [t["class"] for t in a["top_k"]] == [t["class"] for t in b["top_k"]]
        np.testing.assert_allclose(
            [t["probability"] for t in b["top_k"]],
            [t["probability"] for t in a["top_k"]],
            atol=1e-4,
        )
    assert "onnxruntime" in from_onnx["models"][0]["weights_note"]
    # The table and the CSV are the checkpoint's too.
    csv_ckpt, csv_onnx = tmp_path / "c.csv", tmp_path / "o.csv"
    assert invoke("predict", run["ckpt"], photos, "--csv", csv_ckpt).exit_code == 0
    table = invoke("predict", alone, photos, "--csv", csv_onnx)
    assert table.exit_code == 0 and "predictions (ship/model.onnx)" in table.stdout
    head_ckpt, *body_ckpt = csv_ckpt.read_text().splitlines()
    head_onnx, *body_onnx = csv_onnx.read_text().splitlines()
    assert head_onnx == head_ckpt and len(body_onnx) == len(body_ckpt)


def test_an_onnx_model_ensembles_with_its_checkpoint(run):
    models = load_models([run["ckpt"], run["onnx"]])
    result = predict_files(models, [run["root"] / "val"], device="cpu")
    single = predict_files(models[:1], [run["root"] / "val"], device="cpu")
    np.testing.assert_allclose(result.probs, single.probs, atol=1e-4)


def plain_onnx(path: Path) -> Path:
    """A valid ONNX model that tlcli did not write: no metadata."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["logits"])],
        "plain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def with_metadata(src: Path, dst: Path, **props: str) -> Path:
    import onnx

    model = onnx.load(str(src))
    for p in model.metadata_props:
        if p.key in props:
            p.value = props[p.key]
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("case", ["garbage", "empty", "no-metadata", "bad-classes", "missing"])
def test_a_bad_onnx_file_is_one_line(run, tmp_path, case):
    bad = tmp_path / "bad.onnx"
    if case == "garbage":
        bad.write_bytes(b"\x00\x01not a protobuf" * 50)
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "no-metadata":
        plain_onnx(bad)
    elif case == "bad-classes":
        with_metadata(run["onnx"], bad, classes="[not json")
    result = invoke("predict", bad, run["root"] / "val")
    assert result.exit_code == EXIT_CHECKPOINT, result.output
    (line,) = error_lines(result)
    assert line.startswith("error: ") and "Traceback" not in result.output
    expected = {
        "garbage": "is not a readable ONNX model",
        "empty": "is not a readable ONNX model",
        "no-metadata": "is not a tlcli ONNX export (no tlcli metadata",
        "bad-classes": "has damaged tlcli metadata",
        "missing": "does not exist",
    }[case]
    assert expected in line
    assert result.stdout == ""


def test_predict_on_onnx_without_onnxruntime_says_how_to_install_it(run, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = invoke("predict", run["onnx"], run["root"] / "val")
    assert result.exit_code == EXIT_MODEL
    (line,) = error_lines(result)
    assert "pip install 'tlcli[onnx]'" in line


def test_weights_other_than_the_exported_ones_are_refused(run):
    with pytest.raises(CheckpointError, match="holds the raw weights it was exported with"):
        load_for_inference(run["onnx"], "ema")


def test_int8_activation_ranges_ignore_rare_outliers(tmp_path):
    # One outlier among ~25k activations must not set the range: MinMax gave it scale ~4
    # (every ordinary value rounds to 0), which cost clothing_small 2.35 points of val top-1.
    import onnx
    import torch
    from onnx import numpy_helper

    fp32 = tmp_path / "conv.onnx"
    torch.onnx.export(
        torch.nn.Conv2d(3, 4, 1).eval(),
        (torch.zeros(2, 3, 16, 16),),
        str(fp32),
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    batches = np.random.default_rng(0).uniform(-1, 1, (2, 16, 3, 16, 16)).astype(np.float32)
    batches[1, 0, 0, 0, 0] = 1000.0
    out = tmp_path / "conv.int8.onnx"
    quantize_int8(fp32, out, iter(list(batches)), tmp_path)
    model = onnx.load(str(out))
    scales = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    node = next(
        n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"
    )
    assert float(scales[node.input[1]]) < 0.05  # about 2 / 255, not 1001 / 255


def test_int8_layers_kept_fp32_are_the_first_convs_and_the_head(run, tmp_path, capsys):
    """Int8Settings.fp32_first_convs and fp32_head leave exactly those nodes unquantized
    (their weights stay fp32 initializers); the rest of the graph is int8."""
    import onnx
    from onnx import numpy_helper

    from tlcli.export import Int8Settings, calibration_batches, run_split_samples

    loaded = load_for_inference(run["ckpt"])
    batches = list(calibration_batches(loaded, run_split_samples(loaded)["train"][:8]))

    def fp32_weights(settings: Int8Settings) -> tuple[list[str], list[str]]:
        out = tmp_path / f"{settings.fp32_first_convs}-{settings.fp32_head}.onnx"
        quantize_int8(run["onnx"], out, iter(batches), tmp_path, settings)
        graph = onnx.load(str(out)).graph
        floats = {i.name for i in graph.initializer if numpy_helper.to_array(i).dtype == np.float32}
        kinds = [(n.op_type, n.input[1] in floats) for n in graph.node if n.op_type in OPS]
        return [k for k, f in kinds if f], [k for k, f in kinds if not f]

    OPS = ("Conv", "Gemm", "MatMul")
    fp32, _ = fp32_weights(Int8Settings())
    assert fp32 == []  # by default every conv and the classifier read int8 weights
    assert capsys.readouterr().out == ""  # onnxruntime's progress prints stay off stdout
    fp32, int8 = fp32_weights(Int8Settings(fp32_first_convs=2, fp32_head=True))
    assert fp32.count("Conv") == 3 and fp32.count("Gemm") + fp32.count("MatMul") == 1
    assert int8 and "Gemm" not in int8


def test_int8_export_is_smaller_and_mostly_agrees_with_fp32(run, tmp_path):
    out = tmp_path / "m.onnx"
    result = export_model(
        load_for_inference(run["ckpt"]),
        "onnx",
        out,
        quantize="int8",
        calibration_images=8,
        latency_runs=3,
    )
    fp32, int8 = result["quantization"]["models"]
    assert fp32["file"] == str(fp32_path(out)) and int8["file"] == str(out)
    assert int8["bytes"] < 0.5 * fp32["bytes"] == 0.5 * fp32_path(out).stat().st_size
    assert int8["agreement_with_fp32"] >= 0.75
    assert fp32["val_images"] == len(CLASSES) * 4 and 0 < int8["latency_ms"]
    assert result["parity"]["passed"]  # the fp32 model was checked against PyTorch
    assert result["quantization"]["calibration"]["images"] == 8
    # The int8 file is a tlcli export too: predict reads it, labels included.
    contract = read_contract(open_session(out), out)
    assert contract.classes == list(CLASSES) and contract.quantization.startswith("int8")
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["quantization"]["models"][1]["bytes"] == int8["bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx", "m.onnx.json", "m.fp32.onnx", "m.fp32.onnx.json"]
    )  # no temp files left behind


def test_quantize_needs_the_run_split_and_onnx(run, tmp_path):
    moved = tmp_path / "best.pt"
    shutil.copy(run["ckpt"], moved)  # no split.json beside it
    result = invoke("export", moved, "--quantize", "int8", "--out", tmp_path / "m.onnx")
    assert result.exit_code == EXIT_DATA
    (line,) = error_lines(result)
    assert "split.json" in line
    result = invoke(
        "export",
        run["ckpt"],
        "--format",
        "torchscript",
        "--quantize",
        "int8",
        "--out",
        tmp_path / "m.ts",
    )
    assert result.exit_code == EXIT_MODEL
    (line,) = error_lines(result)
    assert "--format onnx" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]
