"""Run tlcli checkpoints (or their ONNX exports) on images, from the checkpoint alone: no
network, no config file.

One path turns checkpoint(s) + images into probabilities: each checkpoint rebuilds its model
(`build_model`), images are decoded by the same cache and center crop as finetune's
validation (`predict_logits`, which training's validation runs too, so `evaluate --split val`
reproduces finetune's val accuracy to the image), and several checkpoints average their
softmax probabilities: the lecture's model ensembles and checkpoint ensembles. evaluate.py
scores them on a labelled folder, predict.py ranks labels for arbitrary files.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn
from torch.torch_version import TorchVersion

from tlcli.checkpoint import (
    Checkpoint,
    checked_classes,
    checked_data_spec,
    checked_model_entry,
    damaged_checkpoint,
    load_checkpoint,
    temperature_of,
)
from tlcli.choices import WEIGHT_CHOICES
from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.augment import PRESETS, BatchAugmenter, to_device
from tlcli.data.batches import batch_indices, prefetched
from tlcli.data.cache import DecodedImages, RowView, decode_images, resolve_workers
from tlcli.data.scan import Sample, Skipped
from tlcli.errors import CheckpointError
from tlcli.models import DataSpec, pick_device
from tlcli.onnx_model import OnnxClassifier, is_onnx_path, open_session, read_contract
from tlcli.progress import NullReporter, Reporter

DEFAULT_BATCH_SIZE = 64
# Same limit as training (PIL's decompression-bomb threshold), so the same files are refused.
MAX_PIXELS = DEFAULT_MAX_PIXELS


@dataclass
class LoadedModel:
    """A checkpoint rebuilt for inference, with what it needs to preprocess images."""

    path: Path
    name: str  # short label for tables: RUN/best.pt
    model: nn.Module
    weights: str  # "raw" or "ema": the weights actually loaded
    weights_note: str  # why those weights, for the report
    classes: list[str]
    spec: DataSpec
    architecture: str
    trained_val_acc: float | None
    # The checkpoint's calibration temperature (1.0 when it has none), applied inside `model`
    # (logits / T). An ONNX model keeps 1.0 here: its graph divides its logits itself.
    temperature: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": str(self.path),
            "architecture": self.architecture,
            "input_size": self.spec.input_size,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "trained_val_acc": self.trained_val_acc,
            "temperature": self.temperature,
        }


def _short_name(path: Path) -> str:
    # best.pt / last.pt say nothing alone: the run dir is the useful part of the name.
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _weights_note(ckpt: Checkpoint, requested: str, used: str) -> str:
    has_ema = ckpt.ema_state_dict is not None
    if requested != "best":
        return f"{used} weights (--weights {requested})"
    averaged = ckpt.best_weights
    if isinstance(averaged, str) and averaged not in ("raw", "ema"):  # swa, wise-ft 0.5
        return f"{averaged} weights: the average scored higher on val than every epoch"
    if not has_ema:
        return "raw weights (the run kept no EMA)"
    if used == "ema":
        return "EMA weights: they scored higher on val than the raw ones during training"
    # A tie keeps the raw weights (train.loop picks EMA only when strictly better).
    return "raw weights: the EMA ones scored no higher on val during training"


def load_for_inference(path: Path, weights: str = "best", name: str | None = None) -> LoadedModel:
    """Load a tlcli checkpoint safely (weights_only, never runs pickled code) and rebuild it.

    A `.onnx` file written by `tlcli export` loads too: onnxruntime runs it, and its
    metadata gives the classes and preprocessing (no checkpoint needed).
    """
    if weights not in WEIGHT_CHOICES:
        raise CheckpointError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_CHOICES)}")
    path = Path(path)
    if is_onnx_path(path):
        return load_onnx_for_inference(path, weights, name)
    with warnings.catch_warnings(), torch.serialization.safe_globals([TorchVersion]):
        # torch warns about pickle protocols before refusing a foreign file: keep one line.
        warnings.simplefilter("ignore")
        # Checkpoints record torch.__version__, a str subclass that weights_only refuses by
        # default; allowing that one harmless class keeps every other global refused.
        payload = load_checkpoint(path)
    ckpt = Checkpoint.from_payload(payload)
    classes = checked_classes(ckpt.classes, path)
    spec = checked_data_spec(ckpt.data, path)
    if weights == "ema" and ckpt.ema_state_dict is None:
        raise CheckpointError(
            f"--weights ema: {path} has no EMA weights; use --weights best, or finetune with --ema"
        )
    temperature = temperature_of(payload, path)
    model, used = build_model(payload, weights, path)
    architecture = ckpt.architecture  # checked by build_model
    model = with_temperature(model, temperature)  # evaluate, predict and export all see it
    val_acc = ckpt.best_val_acc
    if val_acc is not None and not (isinstance(val_acc, int | float) and 0 <= val_acc <= 1):
        raise CheckpointError(
            f"{path} is damaged or was not written by tlcli: its best_val_acc is not an "
            "accuracy; use best.pt or last.pt from a tlcli run dir"
        )
    return LoadedModel(
        path=path,
        name=name or _short_name(path),
        model=model,
        weights=used,
        weights_note=_weights_note(ckpt, weights, used),
        classes=classes,
        spec=spec,
        architecture=architecture,
        trained_val_acc=None if val_acc is None else float(val_acc),
        temperature=temperature,
    )


def load_onnx_for_inference(
    path: Path, weights: str = "best", name: str | None = None
) -> LoadedModel:
    """An exported .onnx as a LoadedModel: its session, and the contract in its metadata."""
    session = open_session(path)
    contract = read_contract(session, path)
    if weights != "best" and weights != contract.weights:
        raise CheckpointError(
            f"--weights {weights}: {path} holds the {contract.weights} weights it was exported "
            "with; leave out --weights, or export the checkpoint with --weights "
            f"{weights}"
        )
    quantized = "" if contract.quantization == "none" else f", {contract.quantization}"
    return LoadedModel(
        path=path,
        name=name or _short_name(path),
        model=OnnxClassifier(session),
        weights=contract.weights,
        weights_note=f"ONNX export of the {contract.weights} weights{quantized}, run by "
        f"onnxruntime (tlcli {contract.version})",
        classes=contract.classes,
        spec=contract.spec,
        architecture=contract.architecture,
        trained_val_acc=contract.trained_val_acc,
    )


def load_models(paths: Sequence[Path], weights: str = "best") -> list[LoadedModel]:
    """Load every checkpoint; an ensemble needs the same classes (any order) in each."""
    if not paths:
        raise CheckpointError("no checkpoint given; pass a best.pt from a tlcli run dir")
    names: list[str] = []
    for path in paths:
        base = _short_name(Path(path))
        names.append(base if base not in names else f"{base}#{len(names) + 1}")
    models = [load_for_inference(p, weights, n) for p, n in zip(paths, names, strict=True)]
    first = models[0]
    for other in models[1:]:
        if set(other.classes) != set(first.classes) or len(other.classes) != len(first.classes):
            raise CheckpointError(
                f"{other.path} knows classes {', '.join(other.classes)} but {first.path} knows "
                f"{', '.join(first.classes)}; ensemble checkpoints trained on the same classes"
            )
    return models


class _Probabilities(nn.Module):
    """Softmax on top of a classifier, so predict_logits' flip view averages probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=-1)


@dataclass
class Predictions:
    """Softmax probabilities per model (columns in `classes` order) for the decoded files."""

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # the samples' labels, for the files that decoded
    member_probs: dict[str, np.ndarray]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ensemble_probs(self) -> np.ndarray:
        """Mean of the members' softmax probabilities (one member: its own)."""
        return np.mean(np.stack(list(self.member_probs.values())), axis=0)


def predict_probabilities(
    models: Sequence[LoadedModel],
    samples: Sequence[Sample],
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    tta: bool = False,
    workers: int = -1,
    disk_cache: bool = True,
    reporter: Reporter | None = None,
) -> Predictions:
    """Decode samples per distinct preprocessing and run every model on them (eval transform).

    tta adds the horizontally flipped view and averages the two softmax outputs.
    """
    reporter = reporter or NullReporter()
    torch_device = pick_device(device)
    classes = list(models[0].classes)
    decoded: dict[tuple[int, str], DecodedImages] = {}
    for loaded in models:
        key = (loaded.spec.cache_size, loaded.spec.interpolation)
        if key not in decoded:
            reporter.start("decode", len(samples), "decode images")
            decoded[key] = decode_images(
                samples,
                key[0],
                key[1],
                MAX_PIXELS,
                resolve_workers(workers),
                disk_cache,
                lambda n: reporter.advance("decode", n),
            )
            reporter.finish("decode")
            if decoded[key].cache_note:
                reporter.note(decoded[key].cache_note, "warning")
            if decoded[key].streamed:
                reporter.note(f"streaming the images from their files ({decoded[key].streamed})")
    # A file that fails to decode fails at every size; intersect anyway to stay aligned.
    kept = set.intersection(*({str(p) for p in d.paths} for d in decoded.values()))
    first = next(iter(decoded.values()))
    order = [i for i, p in enumerate(first.paths) if str(p) in kept]
    paths = [first.paths[i] for i in order]
    labels = first.labels[order]
    skipped = list(first.skipped)
    if not paths:  # nothing decoded: no model runs, the caller says so in one line
        empty = np.zeros((0, len(classes)))
        return Predictions(classes, [], labels, {m.name: empty for m in models}, skipped)

    member_probs: dict[str, np.ndarray] = {}
    for loaded in models:
        data = decoded[(loaded.spec.cache_size, loaded.spec.interpolation)]
        rows = {str(p): i for i, p in enumerate(data.paths)}
        pixels = data.pixels
        if len(data.paths) != len(paths):
            pixels = RowView(pixels, [rows[str(p)] for p in paths])
        augmenter = BatchAugmenter(
            PRESETS["none"], loaded.spec.input_size, loaded.spec.mean, loaded.spec.std, len(classes)
        )
        wrapped = _Probabilities(loaded.model).to(torch_device)
        task = f"predict-{loaded.name}"
        reporter.start(task, len(paths), f"predict {loaded.name}" + (" (+flip)" if tta else ""))
        probs = predict_logits(
            wrapped,
            pixels,
            augmenter,
            torch_device,
            batch_size,
            on_batch=lambda n, task=task: reporter.advance(task, n),
            hflip=tta,
        )
        reporter.finish(task)
        wrapped.to("cpu")
        column = [loaded.classes.index(c) for c in classes]
        member_probs[loaded.name] = probs.numpy().astype(np.float64)[:, column]
    return Predictions(classes, paths, labels, member_probs, skipped)


def _shape_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return None
    return f"missing {len(missing)}, unexpected {len(unexpected)}, wrong shape {len(wrong)} tensors"


def build_model(
    ckpt: dict[str, Any], weights: str = "best", path: Path | str = "checkpoint"
) -> tuple[nn.Module, str]:
    """Rebuild the network from a checkpoint alone (no network, no config file).

    Nothing the file says is trusted: the architecture must be a registered timm name, built
    with pretrained=False and only MODEL_KWARG_TYPES; the weights must fit it exactly, which
    is checked on a meta-device skeleton first, so a huge architecture named by a small file
    allocates nothing. weights: "best" picks the EMA weights when the run found them better,
    "ema" or "raw" force one. Returns the model (eval mode) and which weights were loaded.
    """
    entry = checked_model_entry(ckpt, weights, path)
    arch, kwargs, state = entry.architecture, entry.kwargs, entry.state_dict
    try:
        with torch.device("meta"):
            skeleton = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception as exc:
        raise CheckpointError(
            f"cannot rebuild model {arch!r} ({type(exc).__name__}: {str(exc)[:200]}); "
            "upgrade timm to the version in the checkpoint's versions"
        ) from None
    mismatch = _shape_mismatch(skeleton, state)
    if mismatch is not None:
        raise CheckpointError(
            f"{path}: its weights do not fit {arch} ({mismatch}); "
            "the file is damaged or from another model"
        )
    model = timm.create_model(arch, pretrained=False, **kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # dtypes that cannot be copied into the parameters
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise damaged_checkpoint(path, f"its weights cannot be loaded ({reason})") from None
    model.eval()
    return model, entry.weights


class TemperatureScaled(nn.Module):
    """model(x) / T: a plain division, so it exports to ONNX and TorchScript as one op."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def with_temperature(model: nn.Module, temperature: float) -> nn.Module:
    return model if temperature == 1.0 else TemperatureScaled(model, temperature).eval()


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    pixels: np.ndarray,
    augmenter: BatchAugmenter,
    device: torch.device,
    batch_size: int,
    amp_dtype: torch.dtype | None = None,
    on_batch: Callable[[int], None] | None = None,
    hflip: bool = False,
) -> torch.Tensor:
    """Logits (N, C) in input order with the eval transform; hflip averages a flipped view."""
    model.eval()
    outputs = []
    for idx, batch in prefetched(pixels, batch_indices(len(pixels), batch_size, None), device):
        x = augmenter.center_crop(to_device(batch, device))
        with autocast(device, amp_dtype):
            logits = model(x).float()
            if hflip:
                logits = (logits + model(x.flip(-1)).float()) / 2
        outputs.append(logits.cpu())
        if on_batch is not None:
            on_batch(len(idx))
    return torch.cat(outputs) if outputs else torch.empty(0)
