"""Export a checkpoint to ONNX or TorchScript, with its preprocessing and a parity check.

The exported graph takes normalized float NCHW input with a dynamic batch dimension and
returns logits. Everything a deployment needs to feed it (mean, std, input size, resize rule,
class names) goes into a JSON sidecar `<out>.json`. Before the file takes its name, the
exported model runs on real images next to PyTorch: its softmax outputs must agree within
PARITY_TOLERANCE, its logits within LOGIT_TOLERANCE of their scale, and its top-1 labels
exactly, or nothing is written. An ONNX file also carries its contract in its own
metadata_props (`tlcli.onnx_model`: classes, preprocessing, temperature, architecture,
version), so `tlcli predict model.onnx` needs neither the checkpoint nor the sidecar.

`quantize="int8"` then quantizes the checked fp32 file statically with onnxruntime (QDQ,
per-channel weights), calibrated on a seeded sample of the run's train images, and compares
the two on the run's val images: top-1, CPU latency at batch 1, and file size.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcli import __version__
from tlcli.atomic import check_new_file
from tlcli.choices import EXPORT_FORMATS as FORMATS
from tlcli.choices import QUANTIZE_CHOICES
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import decode_images
from tlcli.data.scan import Sample, no_readable_images
from tlcli.errors import DataError, ModelError, ResourceError, disk_error_of
from tlcli.inference import (
    MAX_PIXELS,
    LoadedModel,
    load_for_inference,
    predict_probabilities,
)
from tlcli.onnx_model import metadata_props, open_session, with_metadata, write_metadata
from tlcli.onnx_model import preprocessing_of as onnx_preprocessing_of
from tlcli.predict import collect_image_files
from tlcli.progress import NullReporter, Reporter

# Opset 17 (onnxruntime >= 1.14) has every op timm CNNs need; newer runtimes read it too.
DEFAULT_OPSET = 17
# Max abs difference of softmax probabilities. fp32 kernels of two runtimes reorder sums and
# differ by ~1e-6; 1e-4 leaves room for that and still catches a wrong op or preprocessing.
PARITY_TOLERANCE = 1e-4
# Max abs logit difference, as a fraction of the largest |logit| (at least 1). A confident
# model saturates softmax: a 0.5 logit error at a margin of 13 moves probabilities by 1e-6, so
# probabilities alone pass a broken export. fp32 runtimes differ by ~1e-6 of the scale.
LOGIT_TOLERANCE = 1e-3
# Enough real images to cover several classes; the check must stay a few seconds on a CPU.
MAX_PARITY_IMAGES = 16
# Batch of the example input the graph is traced with; 2, so no size-1 dim gets folded.
TRACE_BATCH = 2
ONNX_EXPORTER_MISSING = (
    "ONNX export needs the onnx package, which is not installed: pip install 'tlcli[onnx]' "
    "(it brings onnxruntime for the parity check too), or use --format torchscript"
)
ONNX_MISSING = (
    "onnxruntime is not installed, so the ONNX file was not run: parity NOT checked; "
    "install it with pip install 'tlcli[onnx]' and export again to check"
)


# Static int8 calibration: a seeded sample of the run's train images, in the eval transform.
DEFAULT_CALIBRATION_IMAGES = 64
CALIBRATION_BATCH = 16
# Latency: median of this many batch-1 runs after a few warm-up runs, on the CPU.
LATENCY_RUNS = 50
LATENCY_WARMUP = 5


@dataclass(frozen=True)
class Int8Settings:
    """How --quantize int8 quantizes (onnxruntime quantize_static). The defaults are the
    variant picked on clothing_small head-only val (bench/int8_variants.py, docs/benchmarks.md:
    +0.3 points of val top-1 against fp32 at 29% of its size, -3.2 on test; per-tensor weights
    lost 3.2 val points, MinMax and reduce_range 2.1, Entropy 2.3; QOperator fails to quantize).

    method: the activation-range calibration (MinMax, Entropy, Percentile); percentile: its
    percentile of |x|, which keeps a few outlier activations from stretching a tensor's range;
    strided: histograms collected one batch at a time, so memory holds one batch's
    activations, not the whole sample's.
    """

    method: str = "Percentile"
    percentile: float = 99.99
    per_channel: bool = True
    symmetric_activations: bool = False
    quant_format: str = "QDQ"
    reduce_range: bool = False
    fp32_first_convs: int = 0  # leading Conv nodes left fp32 (1: the stem), by graph order
    fp32_head: bool = False  # the last Conv and the classifier after it left fp32
    strided: bool = True

    def describe(self) -> str:
        """One line for the export's printout and the ONNX metadata."""
        parts = [
            f"int8 static, {self.quant_format}",
            "per-channel weights" if self.per_channel else "per-tensor weights",
            self.method + (f" {self.percentile:g}" if self.method == "Percentile" else ""),
        ]
        if self.symmetric_activations:
            parts.append("symmetric activations")
        if self.reduce_range:
            parts.append("reduce_range")
        kept = [f"first {self.fp32_first_convs} conv(s)"] if self.fp32_first_convs else []
        kept += ["last conv and classifier"] if self.fp32_head else []
        if kept:
            parts.append(f"{' and '.join(kept)} fp32")
        return ", ".join(parts)


INT8_DEFAULT = Int8Settings()
QUANTIZATION_NAME = INT8_DEFAULT.describe()
NO_SPLIT_FOR_QUANTIZE = (
    "--quantize int8 calibrates on the run's train images and scores its val images, found "
    "through split.json next to the checkpoint ({path} has none); export best.pt from its "
    "run dir"
)


def sidecar_path(out: Path) -> Path:
    """Where the preprocessing JSON goes: next to the model, `<out>.json`."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def preprocessing_of(loaded: LoadedModel) -> dict[str, Any]:
    """What to do to an RGB image before the exported model sees it (timm's eval transform)."""
    return onnx_preprocessing_of(loaded.spec)


def onnx_metadata_of(loaded: LoadedModel, quantization: str = "none") -> dict[str, str]:
    """The contract stored in the ONNX file itself, so it is usable without the sidecar."""
    return metadata_props(
        loaded.classes,
        loaded.spec,
        loaded.temperature,
        loaded.architecture,
        __version__,
        loaded.weights,
        loaded.trained_val_acc,
        quantization,
    )


def val_files_of_split(split: Path) -> list[Path]:
    """The val images a run's split.json lists; none when it is damaged (random inputs then)."""
    try:
        data = json.loads(split.read_text(encoding="utf-8"))
        root = Path(data.get("root", ""))
        rels = data.get("splits", {}).get("val", [])
        return [root / rel for rel, _ in rels if (root / rel).is_file()]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def parity_images(
    loaded: LoadedModel, check_images: Path | None, reporter: Reporter
) -> tuple[torch.Tensor, list[str], str]:
    """Normalized input batch for the parity check, the files it came from, and its source.

    --check-images first; else the val images of the checkpoint's own run dir (split.json
    next to it); else random inputs, which are said to be a weaker check.
    """
    files: list[Path] = []
    source = ""
    if check_images is not None:
        files, skipped = collect_image_files([Path(check_images)])
        if not files:
            for item in skipped:
                reporter.note(f"skipped {item.path}: {item.reason}", "warning")
            raise no_readable_images(str(check_images), len(skipped))
        source = str(check_images)
    else:
        split = loaded.path.parent / "split.json"
        if split.is_file():
            files = val_files_of_split(split)
            source = f"val images of the run ({split})"
    spec = loaded.spec
    augmenter = BatchAugmenter(
        PRESETS["none"], spec.input_size, spec.mean, spec.std, len(loaded.classes)
    )
    if files:
        # Spread over the list so several classes are covered, not the first folder only.
        step = max(1, len(files) // MAX_PARITY_IMAGES)
        chosen = files[::step][:MAX_PARITY_IMAGES]
        decoded = decode_images(
            [Sample(p, 0) for p in chosen],
            spec.cache_size,
            spec.interpolation,
            MAX_PIXELS,
            workers=1,
            disk_cache=False,
        )
        if len(decoded):
            x = augmenter.center_crop(torch.from_numpy(np.ascontiguousarray(decoded.pixels)))
            return x, [str(p) for p in decoded.paths], source
        if check_images is not None:  # asked for real images: random ones would not do
            for item in decoded.skipped:
                reporter.note(f"skipped {item.path}: {item.reason}", "warning")
            raise no_readable_images(str(check_images), len(decoded.skipped))
    reporter.note(
        "no real images for the parity check (pass --check-images DIR): using random inputs",
        "warning",
    )
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(
        0, 256, (MAX_PARITY_IMAGES, spec.input_size, spec.input_size, 3), generator=generator
    ).to(torch.uint8)
    return augmenter.center_crop(pixels), [], "random inputs"


def _require_onnx() -> None:
    # torch's exporter needs the onnx package; without it the failure reads like a bad op.
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ModelError(ONNX_EXPORTER_MISSING) from None


def _export_onnx(model: torch.nn.Module, example: torch.Tensor, opset: int) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns it is legacy; the dynamo one needs onnxscript.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    return buffer.getvalue()


def _export_torchscript(
    model: torch.nn.Module, example: torch.Tensor, metadata: dict[str, Any]
) -> bytes:
    # Into memory, not to the file: torch.jit.save to a full disk aborts the process (C++
    # terminate, exit 134) and leaves its temp file; Python's own write fails cleanly.
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still the portable format
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={"tlcli.json": json.dumps(metadata)})
    return buffer.getvalue()


def _run_onnx(model: bytes, x: torch.Tensor) -> np.ndarray | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def _run_torchscript(model: bytes, x: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(model), map_location="cpu")
    with torch.no_grad():
        return module(x).numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare_outputs(
    reference: np.ndarray, exported: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> dict[str, Any]:
    """Max abs difference of softmax probabilities and of logits, and top-1 agreement."""
    p_ref, p_exp = _softmax(reference), _softmax(exported)
    agree = p_ref.argmax(1) == p_exp.argmax(1)
    max_diff = float(np.abs(p_ref - p_exp).max())
    logit_diff = float(np.abs(reference.astype(np.float64) - exported).max())
    logit_tolerance = LOGIT_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    return {
        "checked": True,
        "images": int(len(reference)),
        "max_abs_prob_diff": max_diff,
        "max_abs_logit_diff": logit_diff,
        "top1_agreement": float(agree.mean()),
        "tolerance": tolerance,
        "logit_tolerance": logit_tolerance,
        "passed": bool(max_diff <= tolerance and logit_diff <= logit_tolerance and agree.all()),
    }


def write_model_and_sidecar(out: Path, model: bytes, sidecar: Path, text: str) -> None:
    """Both files to temp files first, then both renamed: a full disk leaves the existing
    outputs as they were and no temp file, never a new model beside an old sidecar."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    try:
        for path, data in ((sidecar, text.encode("utf-8")), (out, model)):
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temps.append(Path(name))
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temps[0], sidecar)
        os.replace(temps[1], out)
    except OSError as exc:
        disk = disk_error_of(exc)
        if disk is None:
            raise
        raise ResourceError(
            f"disk full while writing {out} ({disk.strerror}); nothing was written and any "
            "existing file is as it was: free space or --out elsewhere, and export again"
        ) from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def export_model(  # noqa: PLR0913 (a factory: keyword options with defaults)
    loaded: LoadedModel,
    fmt: str,
    out: Path,
    opset: int = DEFAULT_OPSET,
    check_images: Path | None = None,
    tolerance: float = PARITY_TOLERANCE,
    force: bool = False,
    reporter: Reporter | None = None,
    quantize: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    latency_runs: int = LATENCY_RUNS,
) -> dict[str, Any]:
    """Write `out` and `<out>.json` after the parity check; returns the sidecar's content.

    loaded: from `tlcli.inference.load_for_inference`.
    quantize="int8": `out` is the int8 model, quantized from the parity-checked fp32 one,
    which is kept as `fp32_path(out)`; the result's "quantization" compares the two.
    """
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    if fmt not in FORMATS:
        raise ModelError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    target = out
    splits: dict[str, list[Sample]] = {}
    if quantize is not None:
        if quantize not in QUANTIZE_CHOICES:
            raise ModelError(
                f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZE_CHOICES)}"
            )
        if fmt != "onnx":
            raise ModelError(f"--quantize {quantize} is for --format onnx; drop one of them")
        target = fp32_path(out)
        check_new_file(target, force)
        check_new_file(sidecar_path(target), force)
        splits = run_split_samples(loaded)  # before any work: no split.json, no export
    check_new_file(out, force)
    check_new_file(sidecar_path(out), force)
    if fmt == "onnx":
        _require_onnx()
    fp32 = export_checked(loaded, fmt, target, opset, check_images, tolerance, reporter)
    if quantize is None:
        return {**fp32, "seconds": round(time.perf_counter() - started, 2)}
    quantization = export_int8(
        loaded, target, out, splits, calibration_images, seed, latency_runs, reporter
    )
    metadata = {
        **{k: v for k, v in fp32.items() if k not in ("paths", "bytes", "seconds")},
        "file": out.name,
        "quantization": quantization,
    }
    sidecar = sidecar_path(out)
    sidecar.write_text(json.dumps(metadata, indent=1))
    return {
        **metadata,
        "paths": {
            "model": str(out),
            "sidecar": str(sidecar),
            "fp32_model": str(target),
            "fp32_sidecar": fp32["paths"]["sidecar"],
        },
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
    }


def export_checked(
    loaded: LoadedModel,
    fmt: str,
    out: Path,
    opset: int,
    check_images: Path | None,
    tolerance: float,
    reporter: Reporter,
) -> dict[str, Any]:
    """The fp32 export: write `out` (with its ONNX metadata) and `<out>.json` only after the
    parity check passes; returns the sidecar's content, paths and size."""
    model = loaded.model.cpu().eval()
    x, files, source = parity_images(loaded, check_images, reporter)
    metadata = {
        "format": fmt,
        "file": out.name,
        "checkpoint": str(loaded.path),
        "architecture": loaded.architecture,
        "weights": loaded.weights,
        "classes": loaded.classes,
        "preprocessing": preprocessing_of(loaded),
        "temperature": loaded.temperature,
        "input_name": "input" if fmt == "onnx" else None,
        "output": "logits (N, num_classes); apply softmax for probabilities",
        "dynamic_batch": True,
        "opset": opset if fmt == "onnx" else None,
        "tlcli_version": __version__,
        "torch_version": torch.__version__,
    }
    reporter.start("export", None, f"export {fmt}")
    example = x[:TRACE_BATCH] if len(x) >= TRACE_BATCH else x.repeat(TRACE_BATCH, 1, 1, 1)
    try:
        if fmt == "onnx":
            exported_bytes = with_metadata(
                _export_onnx(model, example, opset), onnx_metadata_of(loaded)
            )
        else:
            exported_bytes = _export_torchscript(model, example, metadata)
    except Exception as exc:  # exporters raise anything for an unsupported op
        raise ModelError(
            f"{fmt} export of {loaded.architecture} failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); try --format "
            f"{'torchscript' if fmt == 'onnx' else 'onnx'} or another --opset"
        ) from None
    finally:
        reporter.finish("export")
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    with torch.no_grad():
        reference = model(x).numpy()
    exported = run(exported_bytes, x)
    if exported is None:
        parity: dict[str, Any] = {"checked": False, "reason": ONNX_MISSING}
        reporter.note(ONNX_MISSING, "warning")
    else:
        # A second batch size proves the batch dimension is really dynamic.
        single = run(exported_bytes, x[:1])
        parity = compare_outputs(
            np.concatenate([reference, reference[:1]]),
            np.concatenate([exported, single]),
            tolerance,
        )
        parity.update(images=len(x), batch_sizes=[len(x), 1])
        if not parity["passed"]:
            raise ModelError(
                f"parity check failed: exported {fmt} outputs differ from PyTorch's by up "
                f"to {parity['max_abs_prob_diff']:.2e} in probability (tolerance "
                f"{tolerance:.0e}) and {parity['max_abs_logit_diff']:.2e} in logits "
                f"(tolerance {parity['logit_tolerance']:.1e}), top-1 agreement "
                f"{parity['top1_agreement']:.3f}; nothing was written"
            )
    parity.update({"source": source, "files": files})
    metadata["parity"] = parity
    sidecar = sidecar_path(out)
    write_model_and_sidecar(out, exported_bytes, sidecar, json.dumps(metadata, indent=1))
    return {
        **metadata,
        "paths": {"model": str(out), "sidecar": str(sidecar)},
        "bytes": out.stat().st_size,
    }


# ---------------------------------------------------------------------------------------------
# --quantize int8: static onnxruntime quantization, calibrated on the run's train images


def fp32_path(out: Path) -> Path:
    """Where --quantize keeps the fp32 model it started from: `model.onnx` -> `model.fp32.onnx`."""
    out = Path(out)
    return out.with_name(f"{out.stem}.fp32{out.suffix or '.onnx'}")


def run_split_samples(loaded: LoadedModel) -> dict[str, list[Sample]]:
    """The train and val samples of the checkpoint's run (split.json next to it), labelled by
    the model's class index; files that are gone are left out."""
    split = loaded.path.parent / "split.json"
    if not split.is_file():
        raise DataError(NO_SPLIT_FOR_QUANTIZE.format(path=loaded.path.parent))
    data = json.loads(split.read_text())
    root = Path(data.get("root", ""))
    names = data.get("classes", loaded.classes)
    index = {c: i for i, c in enumerate(loaded.classes)}
    samples: dict[str, list[Sample]] = {}
    for name in ("train", "val"):
        items = data.get("splits", {}).get(name, [])
        samples[name] = [
            Sample(root / rel, index[names[label]])
            for rel, label in items
            if names[label] in index and (root / rel).is_file()
        ]
        if not samples[name]:
            raise DataError(
                f"none of the {name} images listed in {split} can be found under {root}; "
                "export on the machine that holds the run's data"
            )
    return samples


def calibration_sample(samples: list[Sample], count: int, seed: int) -> list[Sample]:
    """A bounded, seeded sample: the same images every time for the same run."""
    if count >= len(samples):
        return list(samples)
    return random.Random(seed).sample(list(samples), count)


def calibration_batches(
    loaded: LoadedModel, samples: list[Sample], batch: int = CALIBRATION_BATCH
) -> Iterator[np.ndarray]:
    """Normalized NCHW float32 batches of the samples, by the eval transform (decode, crop)."""
    spec = loaded.spec
    decoded = decode_images(
        samples, spec.cache_size, spec.interpolation, MAX_PIXELS, workers=1, disk_cache=False
    )
    augmenter = BatchAugmenter(
        PRESETS["none"], spec.input_size, spec.mean, spec.std, len(loaded.classes)
    )
    for start in range(0, len(decoded), batch):
        pixels = torch.from_numpy(np.ascontiguousarray(decoded.pixels[start : start + batch]))
        yield augmenter.center_crop(pixels).numpy()


def excluded_nodes(model_path: Path, settings: Int8Settings) -> list[str]:
    """Names of the nodes the settings leave in fp32: the first `fp32_first_convs` Conv
    nodes, and with `fp32_head` the last Conv and every Gemm/MatMul after it (the
    classifier), found by graph order, so this holds for any CNN."""
    import onnx

    nodes = onnx.load(str(model_path)).graph.node
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    names = [nodes[i].name for i in convs[: settings.fp32_first_convs]]
    if settings.fp32_head and convs:
        names += [n.name for n in nodes[convs[-1] :] if n.op_type in ("Conv", "Gemm", "MatMul")]
    return names


def quantize_int8(
    fp32: Path,
    out: Path,
    batches: Iterator[np.ndarray],
    work_dir: Path,
    settings: Int8Settings = INT8_DEFAULT,
) -> None:
    """onnxruntime static quantization of `fp32` into `out`: int8 weights, uint8 (int8 when
    symmetric) activations whose ranges `settings.method` calibrates on the batches.

    quant_pre_process first folds BatchNorm into the convolutions and infers shapes, so the
    folded weights are what gets quantized (onnxruntime's recommended preparation).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        # Strided calibration asks for its length and then for one range of batches at a time.
        def __init__(self, inputs: list[np.ndarray]) -> None:
            self.inputs, self.pending = inputs, iter(inputs)

        def __len__(self) -> int:
            return len(self.inputs)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.pending = iter(self.inputs[start_index:end_index])

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.pending, None)
            return None if x is None else {"input": x}

    prepared = work_dir / "prepared.onnx"
    extra: dict[str, Any] = {"ActivationSymmetric": settings.symmetric_activations}
    if settings.method == "Percentile":
        extra["CalibPercentile"] = settings.percentile
    if settings.strided:
        extra["CalibStridedMinMax"] = 1
    # onnxruntime's calibrators print their progress to stdout, where --json output goes.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            Reader(list(batches)),
            quant_format=QuantFormat[settings.quant_format],
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QInt8 if settings.symmetric_activations else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded_nodes(prepared, settings),
            calibrate_method=CalibrationMethod[settings.method],
            extra_options=extra,
        )


def median_latency_ms(path: Path, input_size: int, runs: int = LATENCY_RUNS) -> float:
    """Median wall time of one batch-1 forward pass on the CPU, after warm-up runs."""
    session = open_session(path)
    x = np.random.default_rng(0).standard_normal((1, 3, input_size, input_size), np.float32)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(LATENCY_WARMUP):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def compare_quantized(
    loaded: LoadedModel,
    files: dict[str, Path],
    val: list[Sample],
    reporter: Reporter,
    latency_runs: int = LATENCY_RUNS,
) -> list[dict[str, Any]]:
    """Per model (fp32, int8): file size, val top-1 on the run's val images and median CPU
    latency at batch 1; int8 also its top-1 agreement with fp32."""
    models = [load_for_inference(path, name=name) for name, path in files.items()]
    preds = predict_probabilities(models, val, "cpu", workers=-1, reporter=reporter)
    labels = preds.labels
    top1 = {name: probs.argmax(1) for name, probs in preds.member_probs.items()}
    rows = []
    for name, path in files.items():
        reporter.start(f"latency-{name}", None, f"latency {name}")
        latency = median_latency_ms(path, loaded.spec.input_size, latency_runs)
        reporter.finish(f"latency-{name}")
        rows.append(
            {
                "model": name,
                "file": str(path),
                "bytes": path.stat().st_size,
                "val_top1": float((top1[name] == labels).mean()),
                "val_images": int(len(labels)),
                "agreement_with_fp32": float((top1[name] == top1["fp32"]).mean()),
                "latency_ms": round(latency, 3),
                "latency": f"median of {latency_runs} runs, batch 1, CPU (onnxruntime)",
            }
        )
    return rows


def export_int8(
    loaded: LoadedModel,
    fp32: Path,
    out: Path,
    splits: dict[str, list[Sample]],
    calibration_images: int,
    seed: int,
    latency_runs: int,
    reporter: Reporter,
) -> dict[str, Any]:
    """Quantize the exported fp32 model into `out` (with its metadata), then compare the two
    on the run's val images; returns the calibration settings and the comparison rows."""
    chosen = calibration_sample(splits["train"], calibration_images, seed)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        tmp = Path(work) / out.name
        reporter.start("quantize", None, f"quantize int8 (calibrating on {len(chosen)} images)")
        try:
            quantize_int8(fp32, tmp, calibration_batches(loaded, chosen), Path(work))
        finally:
            reporter.finish("quantize")
        write_metadata(tmp, onnx_metadata_of(loaded, QUANTIZATION_NAME))
        rows = compare_quantized(
            loaded, {"fp32": fp32, "int8": tmp}, splits["val"], reporter, latency_runs
        )
        os.replace(tmp, out)
    rows[1]["file"] = str(out)
    return {
        "method": QUANTIZATION_NAME,
        "calibration": {
            "images": len(chosen),
            "of": len(splits["train"]),
            "source": "train images of the run (split.json)",
            "seed": seed,
            "method": INT8_DEFAULT.method
            + (f" {INT8_DEFAULT.percentile:g}" if INT8_DEFAULT.method == "Percentile" else ""),
        },
        "models": rows,
    }
