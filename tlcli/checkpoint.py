"""The checkpoint format: best.pt and last.pt as plain types and tensors, written atomically,
and read back with every entry checked before it is used.

Loading uses `torch.load(weights_only=True)`, so a file that needs code to unpickle (a
malicious pickle, a whole pickled model) is refused before anything in it runs. This is the
only module that knows the payload's key strings: training fills a `Checkpoint`
(train/run_state.py has its run-state helpers), inference rebuilds a model from one
(`inference.build_model`, on `checked_model_entry`).
"""

from __future__ import annotations

import math
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch

from tlcli.atomic import write_atomically
from tlcli.choices import WISE_FT_ALPHAS
from tlcli.data.cache import RESAMPLE
from tlcli.errors import CheckpointError, ResourceError, disk_error_of
from tlcli.models import DataSpec

FORMAT = "tlcli-checkpoint"
FORMAT_VERSION = 1

# The range of a calibration temperature (train/calibration.py searches log T inside it);
# outside it the fit says more about the split (a handful of val images, all right or all
# wrong) than about the model, and a checkpoint holding one is refused.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


@dataclass
class TrainState:
    """What last.pt adds to its weights so that --resume continues exactly where it stopped."""

    optimizer: dict[str, Any]  # optimizer.state_dict()
    loop: dict[str, Any]  # dataclasses.asdict(LoopState)
    rng: dict[str, Any]  # rng_state()
    probe_state_dict: dict[str, torch.Tensor] | None = None  # LP-only weights, for WiSE-FT
    swa: dict[str, Any] | None = None  # the running SWA mean and its count

    def to_payload(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "loop": self.loop,
            "rng": self.rng,
            "probe_state_dict": self.probe_state_dict,
            "swa": self.swa,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TrainState:
        return cls(
            optimizer=payload["optimizer"],
            loop=payload["loop"],
            rng=payload["rng"],
            probe_state_dict=payload.get("probe_state_dict"),
            swa=payload.get("swa"),
        )


@dataclass
class Checkpoint:
    """best.pt and last.pt: the only code that knows the payload's key strings.

    A payload read from a file is not trusted: from_payload takes what is there (None where
    a key is missing), and the checked_* functions below refuse what is wrong before it is
    used. to_payload writes plain types and tensors only (loadable with weights_only=True).
    """

    architecture: Any  # a timm name (checked_architecture)
    model_kwargs: Any  # timm.create_model's kwargs (checked_model_kwargs)
    source: Any  # the --model the run was given (timm name, hf-hub:, local-dir:)
    classes: Any
    data: Any  # DataSpec.to_dict()
    plan: Any  # FreezePlan.to_dict()
    config: Any  # config_to_dict(cfg)
    metrics: Any  # checkpoint_metrics()
    best_weights: Any  # raw, ema or an average's name (BEST_WEIGHTS)
    versions: Any  # library_versions()
    state_dict: Any
    ema_state_dict: Any = None
    temperature: Any = None  # calibrate_best's T; none before calibration (1.0)
    train_state: TrainState | None = None  # last.pt only

    def to_payload(self) -> dict[str, Any]:
        payload = {
            "model": {
                "architecture": self.architecture,
                "kwargs": self.model_kwargs,
                "source": self.source,
            },
            "classes": self.classes,
            "data": self.data,
            "plan": self.plan,
            "config": self.config,
            "metrics": self.metrics,
            "best_weights": self.best_weights,
            "versions": self.versions,
            "state_dict": self.state_dict,
            "ema_state_dict": self.ema_state_dict,
        }
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        if self.train_state is not None:
            payload["train_state"] = self.train_state.to_payload()
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Checkpoint:
        model = payload.get("model")
        model = model if isinstance(model, dict) else {}
        train_state = payload.get("train_state")
        return cls(
            architecture=model.get("architecture"),
            model_kwargs=model.get("kwargs", {}),
            source=model.get("source"),
            classes=payload.get("classes"),
            data=payload.get("data"),
            plan=payload.get("plan"),
            config=payload.get("config"),
            metrics=payload.get("metrics"),
            best_weights=payload.get("best_weights"),
            versions=payload.get("versions"),
            state_dict=payload.get("state_dict"),
            ema_state_dict=payload.get("ema_state_dict"),
            temperature=payload.get("temperature"),
            train_state=TrainState.from_payload(train_state)
            if _has_train_state(train_state)
            else None,
        )

    @property
    def best_val_acc(self) -> Any:
        """The run's best val accuracy from metrics; "?" when metrics is not a mapping."""
        metrics = self.metrics or {}
        return metrics.get("best_val_acc") if isinstance(metrics, dict) else "?"

    @property
    def epoch(self) -> Any:
        return (self.metrics or {}).get("epoch")


def _has_train_state(value: Any) -> bool:
    return isinstance(value, dict) and {"optimizer", "loop", "rng"} <= value.keys()


def checkpoint_metrics(
    epoch: int, best_epoch: int, best_val_acc: float, last_row: dict[str, Any]
) -> dict[str, Any]:
    """A checkpoint's metrics: where the run is, its best so far, the last epoch's row."""
    return {
        "epoch": epoch,
        "best_epoch": best_epoch,
        "best_val_acc": best_val_acc,
        **{k: v for k, v in last_row.items() if v is not None},
    }


def save_atomically(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through write_atomically; `remove_stale_temp_files` clears the temp file a
    killed process leaves in a run dir when the run is resumed."""
    write_atomically(path, lambda handle: torch.save(payload, handle))


def save_checkpoint(path: Path, payload: Checkpoint | dict[str, Any]) -> None:
    """save_atomically with the format header; a full disk is a one-line ResourceError."""
    if isinstance(payload, Checkpoint):
        payload = payload.to_payload()
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    try:
        save_atomically(path, payload)
    except BaseException as exc:
        disk_error = disk_error_of(exc)
        if disk_error is not None:
            raise ResourceError(
                f"disk full while writing {path} ({disk_error.strerror}); the previous "
                "checkpoint is intact: free space and run again with --resume"
            ) from None
        raise


def compressed_members(path: Path) -> list[str]:
    """Members of a checkpoint's zip that are not stored as is. torch.save stores every
    member uncompressed; a deflated one may expand to gigabytes from a small file."""
    try:
        if not zipfile.is_zipfile(path):
            return []  # a legacy or plain pickle, or cut short: torch.load says which
        with zipfile.ZipFile(path) as archive:
            return [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a tlcli checkpoint safely or raise a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    packed = compressed_members(path)
    if packed:
        raise damaged_checkpoint(
            path,
            f"{len(packed)} of its members are compressed ({packed[0][:80]}, ...), which "
            "torch.save never does and a zip bomb does",
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the class or function the file would call when it
        # gets that far; an opcode it does not allow (framing of a plain pickle) stops it first.
        called = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if called is None:
            raise CheckpointError(
                f"{path} is not a readable checkpoint: corrupt, or a pickle that needs code to "
                "unpickle, which tlcli never runs; use a checkpoint written by tlcli finetune"
            ) from None
        raise CheckpointError(
            f"{path} is not a tlcli checkpoint: it needs code to unpickle ({called.group(1)}), "
            "which tlcli never runs; use a checkpoint written by tlcli finetune"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = (
            str(exc).splitlines()[0] if str(exc) else f"{type(exc).__name__}: empty or cut short"
        )
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({reason}); "
            "use a checkpoint written by tlcli finetune"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a tlcli checkpoint (no tlcli format marker); "
            "use best.pt or last.pt from a tlcli run dir"
        )
    version = data.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise damaged_checkpoint(path, "its format_version is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer tlcli; upgrade tlcli to load it")
    return data


# What a checkpoint may pass to timm.create_model, with the types finetune writes: anything
# else (checkpoint_path=, pretrained_cfg_overlay=, a file or URL) is refused, not passed on.
MODEL_KWARG_TYPES: dict[str, type] = {
    "num_classes": int,
    "drop_rate": float,
    "drop_path_rate": float,
}
# Bounds on what a checkpoint may ask us to allocate: a head for at most this many classes,
# class names as long as a file name may be.
MAX_CLASSES = 100_000
MAX_CLASS_NAME_CHARS = 255
# An averaged best.pt (train/averaging.py) holds the average as its state_dict.
BEST_WEIGHTS = (None, "raw", "ema", "swa", *(f"wise-ft {a:g}" for a in WISE_FT_ALPHAS))
MIN_CROP_PCT = 0.5  # timm's models use 0.75..1


def damaged_checkpoint(path: Path | str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged or was not written by tlcli: {what}; "
        "use best.pt or last.pt from a tlcli run dir"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checked_architecture(value: Any, path: Path | str) -> str:
    """A timm registered name, never a hub or folder reference: loading for inference must
    not reach the network or read a file the checkpoint names."""
    if not isinstance(value, str) or not value or len(value) > MAX_CLASS_NAME_CHARS:
        raise damaged_checkpoint(path, "its model architecture is not a name")
    if ":" in value or "/" in value or not timm.is_model(value):
        shown = value if value.isprintable() else ascii(value)
        raise damaged_checkpoint(
            path, f"model architecture {shown[:80]!r} is not a timm architecture"
        )
    return value


def checked_model_kwargs(value: Any, num_classes: int, path: Path | str) -> dict[str, Any]:
    """Only the keyword arguments finetune writes, of the right types and ranges."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise damaged_checkpoint(path, "its model kwargs are not a mapping of names")
    unknown = sorted(set(value) - set(MODEL_KWARG_TYPES))
    if unknown:
        raise damaged_checkpoint(
            path, f"model kwargs {', '.join(k[:40] for k in unknown[:5])} are not allowed"
        )
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        kind = MODEL_KWARG_TYPES[key]
        if kind is int and not (isinstance(item, int) and not isinstance(item, bool)):
            raise damaged_checkpoint(path, f"model kwarg {key} is not an integer")
        if kind is float and not (_is_number(item) and 0 <= item < 1):
            raise damaged_checkpoint(path, f"model kwarg {key} is not a number in [0, 1)")
        kwargs[key] = kind(item)
    if kwargs.get("num_classes", num_classes) != num_classes:
        raise damaged_checkpoint(
            path, f"its head has {kwargs['num_classes']} classes but it lists {num_classes}"
        )
    kwargs["num_classes"] = num_classes
    return kwargs


def checked_classes(value: Any, path: Path | str) -> list[str]:
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_CLASSES:
        raise damaged_checkpoint(path, f"its classes are not a list of 1 to {MAX_CLASSES} names")
    if not all(isinstance(c, str) and 0 < len(c) <= MAX_CLASS_NAME_CHARS for c in value):
        raise damaged_checkpoint(
            path, f"a class name is not a string of 1 to {MAX_CLASS_NAME_CHARS} chars"
        )
    if len(set(value)) != len(value):
        raise damaged_checkpoint(path, "its class names repeat")
    return list(value)


def checked_state(value: Any, what: str, path: Path | str) -> dict[str, torch.Tensor]:
    """A mapping of names to finite dense tensors (a NaN weight makes every answer NaN)."""
    if not isinstance(value, dict) or not value:
        raise damaged_checkpoint(path, f"its {what} is not a mapping of tensors")
    for name, tensor in value.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise damaged_checkpoint(path, f"its {what} holds a value that is not a named tensor")
        if tensor.layout != torch.strided or tensor.is_meta or tensor.is_complex():
            raise damaged_checkpoint(
                path, f"its {what} tensor {name[:80]} is not a plain dense tensor"
            )
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise damaged_checkpoint(path, f"its {what} tensor {name[:80]} holds inf or NaN")
    return value


def checked_data_spec(value: Any, path: Path | str) -> DataSpec:
    """The preprocessing, in the ranges finetune can write (a crop_pct near 0 would make
    every decoded square enormous)."""
    if not isinstance(value, dict):
        raise damaged_checkpoint(path, "its data entry is missing")
    size, interp = value.get("input_size"), value.get("interpolation")
    mean, std, crop = value.get("mean"), value.get("std"), value.get("crop_pct")
    if not (isinstance(size, int) and not isinstance(size, bool) and 16 <= size <= 4096):
        raise damaged_checkpoint(path, "its input size is not an integer in 16..4096")
    if interp not in RESAMPLE:
        raise damaged_checkpoint(path, f"its interpolation is not one of {', '.join(RESAMPLE)}")
    for name, triple, low in (("mean", mean, -10.0), ("std", std, 1e-6)):
        if not (
            isinstance(triple, list | tuple)
            and len(triple) == 3
            and all(_is_number(v) and low <= v <= 10 and math.isfinite(v) for v in triple)
        ):
            raise damaged_checkpoint(path, f"its normalization {name} is not 3 numbers in range")
    if not (_is_number(crop) and MIN_CROP_PCT <= crop <= 1):
        raise damaged_checkpoint(path, f"its crop_pct is not a number in {MIN_CROP_PCT}..1")
    return DataSpec.from_dict(value)


def temperature_of(ckpt: dict[str, Any], path: Any) -> float:
    """The checkpoint's temperature, 1.0 when it has none; refuses anything but a T > 0."""
    value = Checkpoint.from_payload(ckpt).temperature
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckpointError(
            f"{path} is damaged: its temperature {value!r} is not a number; "
            "use best.pt or last.pt from a tlcli run dir"
        )
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise CheckpointError(
            f"{path} is damaged: temperature {value} is outside "
            f"{MIN_TEMPERATURE}..{MAX_TEMPERATURE}; use best.pt or last.pt from a tlcli run dir"
        )
    return float(value)


@dataclass(frozen=True)
class ModelEntry:
    """A payload's model, checked: what `inference.build_model` builds and loads."""

    architecture: str  # a registered timm name
    kwargs: dict[str, Any]  # only MODEL_KWARG_TYPES, num_classes matching the classes
    state_dict: dict[str, torch.Tensor]  # finite dense tensors, shapes not yet checked
    weights: str  # "ema" or "raw": which of the payload's weights state_dict is


def checked_model_entry(
    ckpt: dict[str, Any], weights: str = "best", path: Path | str = "checkpoint"
) -> ModelEntry:
    """The architecture, kwargs and weights to rebuild, each refused when wrong.

    weights: "best" picks the EMA weights when the run found them better, "ema" or "raw"
    force one.
    """
    spec = ckpt.get("model")
    if not isinstance(spec, dict):
        raise damaged_checkpoint(path, "its model entry is missing")
    classes = checked_classes(ckpt.get("classes"), path)
    arch = checked_architecture(spec.get("architecture"), path)
    kwargs = checked_model_kwargs(spec.get("kwargs", {}), len(classes), path)
    best = ckpt.get("best_weights")
    if best not in BEST_WEIGHTS:
        raise damaged_checkpoint(path, "its best_weights entry is not raw, ema or an average")
    use_ema = ckpt.get("ema_state_dict") is not None and (
        weights == "ema" or (weights == "best" and best == "ema")
    )
    which = "ema_state_dict" if use_ema else "state_dict"
    state = checked_state(ckpt.get(which), which, path)
    return ModelEntry(arch, kwargs, state, "ema" if use_ema else "raw")
