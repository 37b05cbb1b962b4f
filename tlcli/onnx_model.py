"""The contract an exported ONNX file carries in its `metadata_props`, and running it.

`tlcli export` writes the class names, the preprocessing, the temperature, the architecture
and tlcli's version into the model itself, so `tlcli predict model.onnx` needs no checkpoint
and no sidecar: the file is read through onnxruntime (`custom_metadata_map`), its images go
through the same decode and center crop as a checkpoint's, and the session stands in for the
torch module (`OnnxClassifier`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlcli.errors import CheckpointError, ModelError
from tlcli.models import DataSpec

ONNX_SUFFIX = ".onnx"
# Keys of the model's metadata_props; every value is a string (JSON where it is structured).
KEY_VERSION = "tlcli_version"
KEY_CLASSES = "classes"
KEY_PREPROCESSING = "preprocessing"
KEY_TEMPERATURE = "temperature"
KEY_ARCHITECTURE = "architecture"
KEY_WEIGHTS = "weights"
KEY_TRAINED_VAL_ACC = "trained_val_acc"
KEY_QUANTIZATION = "quantization"
# Without these a file is not a tlcli export: predict could not label or preprocess its input.
REQUIRED_KEYS = (KEY_VERSION, KEY_CLASSES, KEY_PREPROCESSING)
ONNXRUNTIME_MISSING = (
    "running an .onnx model needs onnxruntime, which is not installed: "
    "pip install 'tlcli[onnx]', or predict with the checkpoint (best.pt)"
)


def is_onnx_path(path: Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def preprocessing_of(spec: DataSpec) -> dict[str, Any]:
    """What to do to an RGB image before the exported model sees it (timm's eval transform)."""
    return {
        "input_size": [3, spec.input_size, spec.input_size],
        "resize_shorter_side_to": spec.cache_size,
        "interpolation": spec.interpolation,
        "crop_pct": spec.crop_pct,
        "center_crop": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "layout": "NCHW float32 RGB; x = (pixel / 255 - mean) / std",
    }


def spec_of_preprocessing(pre: dict[str, Any]) -> DataSpec:
    """The DataSpec that `preprocessing_of` describes (its inverse)."""
    return DataSpec(
        int(pre["center_crop"]),
        str(pre["interpolation"]),
        tuple(float(v) for v in pre["mean"]),
        tuple(float(v) for v in pre["std"]),
        float(pre["crop_pct"]),
    )


def metadata_props(
    classes: list[str],
    spec: DataSpec,
    temperature: float,
    architecture: str,
    version: str,
    weights: str,
    trained_val_acc: float | None,
    quantization: str = "none",
) -> dict[str, str]:
    """The key/value strings an export stores in the ONNX file's metadata_props.

    temperature: what the graph's logits are already divided by (1.0: uncalibrated).
    """
    return {
        KEY_VERSION: version,
        KEY_CLASSES: json.dumps(list(classes)),
        KEY_PREPROCESSING: json.dumps(preprocessing_of(spec)),
        KEY_TEMPERATURE: repr(float(temperature)),
        KEY_ARCHITECTURE: architecture,
        KEY_WEIGHTS: weights,
        KEY_TRAINED_VAL_ACC: json.dumps(trained_val_acc),
        KEY_QUANTIZATION: quantization,
    }


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Set (replace) these metadata_props in the ONNX file at `path`, in place."""
    path.write_bytes(with_metadata(path.read_bytes(), props))


def with_metadata(model_bytes: bytes, props: dict[str, str]) -> bytes:
    """The serialized ONNX model with these metadata_props set (replaced)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


@dataclass
class OnnxContract:
    """What a tlcli ONNX file says about itself, parsed from its metadata_props."""

    classes: list[str]
    spec: DataSpec
    temperature: float
    architecture: str
    version: str
    weights: str
    trained_val_acc: float | None
    quantization: str


def parse_metadata(path: Path, meta: dict[str, str]) -> OnnxContract:
    """The contract of a tlcli export, or a one-line CheckpointError naming what is missing."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(
            f"{path} is not a tlcli ONNX export (no tlcli metadata: {', '.join(missing)}); "
            "export it with tlcli export, or predict with its tlcli checkpoint"
        )
    try:
        classes = [str(c) for c in json.loads(meta[KEY_CLASSES])]
        spec = spec_of_preprocessing(json.loads(meta[KEY_PREPROCESSING]))
        temperature = float(meta.get(KEY_TEMPERATURE, "1.0"))
        acc = json.loads(meta.get(KEY_TRAINED_VAL_ACC, "null"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path} has damaged tlcli metadata ({type(exc).__name__}: {exc}); "
            "export it again with tlcli export"
        ) from None
    if not classes:
        raise CheckpointError(f"{path} lists no classes in its metadata; export it again")
    return OnnxContract(
        classes=classes,
        spec=spec,
        temperature=temperature,
        architecture=meta.get(KEY_ARCHITECTURE, "unknown"),
        version=meta[KEY_VERSION],
        weights=meta.get(KEY_WEIGHTS, "raw"),
        trained_val_acc=None if acc is None else float(acc),
        quantization=meta.get(KEY_QUANTIZATION, "none"),
    )


def open_session(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session for `path`, or a one-line error (missing, unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model {path} does not exist")
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(ONNXRUNTIME_MISSING) from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (the physical cores)
    options.log_severity_level = 3  # its warnings are not the user's business
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for a bad protobuf or graph
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable ONNX model ({reason[:200]}); "
            "use a file written by tlcli export"
        ) from None


def read_contract(session: Any, path: Path) -> OnnxContract:
    return parse_metadata(path, dict(session.get_modelmeta().custom_metadata_map))


class OnnxClassifier(nn.Module):
    """An onnxruntime session behind the nn.Module interface the predict path calls.

    It has no parameters: inputs are copied to the CPU, run, and the logits come back on the
    input's device, so the same batching, crop and softmax serve checkpoints and ONNX files.
    """

    def __init__(self, session: Any):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().float().cpu().numpy()}
        logits = self.session.run(None, feed)[0]
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)
