"""Create backbones (timm name, hf-hub:, local-dir:), replace the head, describe the data config.

All weights come through timm; `local-dir:PATH` (a folder with config.json and
model.safetensors) works offline. Failures to get weights become one-line ModelErrors
that say what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from tlcli.config import check_device_name
from tlcli.errors import ConfigError, ModelError
from tlcli.runtime import before_hub_download

LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")
OFFLINE_HELP = (
    "point --model at a local folder (--model local-dir:PATH with config.json and "
    "model.safetensors), or set HF_HUB_OFFLINE=1 with the weights already in the Hugging Face "
    "cache, or use --no-pretrained"
)


@dataclass(frozen=True)
class DataSpec:
    """The preprocessing a model was pretrained with: what every transform must follow."""

    input_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float

    @property
    def cache_size(self) -> int:
        """Side of the decoded square: timm's eval resize (input_size / crop_pct)."""
        return int(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSpec:
        return cls(
            int(data["input_size"]),
            str(data["interpolation"]),
            tuple(data["mean"]),
            tuple(data["std"]),
            float(data["crop_pct"]),
        )


def resolve_model_name(name: str) -> str:
    """Make local-dir: paths absolute and check the folder before timm sees it."""
    if not name.startswith(LOCAL_DIR):
        return name
    folder = Path(name[len(LOCAL_DIR) :]).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist; give local-dir:PATH to a folder")
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model folder {folder} has no config.json; it needs config.json and "
            "model.safetensors (timm's save_for_hf / hub layout)"
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"model folder {folder} has no weights file ({', '.join(WEIGHT_FILES)})")
    check_local_dir_config(folder)
    return LOCAL_DIR + str(folder.resolve())


def check_local_dir_config(folder: Path) -> None:
    """config.json must be a JSON object naming a registered timm architecture: timm would
    follow an hf-hub: name to the network and crash on the rest."""
    fix = "save the model again with timm's save_for_hf, or download the folder again"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(
            f"model folder {folder}: config.json is not readable JSON ({type(exc).__name__}); {fix}"
        ) from None
    if not isinstance(config, dict):
        raise ModelError(f"model folder {folder}: config.json is not a JSON object; {fix}")
    arch = config.get("architecture")
    if not isinstance(arch, str) or ":" in arch or not timm.is_model(arch):
        raise ModelError(
            f"model folder {folder}: config.json's architecture ({repr(arch)[:80]}) is not a "
            f"timm architecture; {fix}"
        )
    for key in ("model_args", "pretrained_cfg"):
        if not isinstance(config.get(key, {}), dict):
            raise ModelError(f"model folder {folder}: config.json's {key} is not an object; {fix}")


def _broken_local_dir(name: str, exc: BaseException) -> ModelError:
    reason = str(exc).splitlines()[0][:160] if str(exc) else ""
    return ModelError(
        f"cannot load the weights of {name} ({type(exc).__name__}: {reason}): the weights file "
        "is damaged or config.json names another architecture; download or save it again"
    )


def _model_error_of(
    exc: Exception, name: str, resolved: str, pretrained: bool
) -> ModelError | None:
    """The one-line error for a failure to build `name`; None for a bug (re-raised)."""
    local = resolved.startswith(LOCAL_DIR)
    if isinstance(exc, TypeError):
        if "drop_path_rate" in str(exc):
            return ModelError(
                f"model {name!r} does not support drop-path; set model.drop_path_rate=0"
            )
        return _broken_local_dir(name, exc) if local else None
    if isinstance(exc, RuntimeError):
        if local and pretrained:
            return _broken_local_dir(name, exc)
        if "Unknown model" in str(exc) or "not found" in str(exc).lower():
            return ModelError(f"unknown model {name!r}; see timm.list_models() for names")
        if pretrained and "pretrained" in str(exc).lower():
            return ModelError(f"no pretrained weights for {name!r}: {exc}; {OFFLINE_HELP}")
        return None
    if isinstance(exc, OSError | ConnectionError):
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        why = (
            "are not in the local cache (HF_HUB_OFFLINE=1)"
            if offline
            else ("cannot be downloaded (no connection) and are not in the local cache")
        )
        return ModelError(
            f"pretrained weights for {name!r} {why} ({type(exc).__name__}); {OFFLINE_HELP}"
        )
    # safetensors, json, pickle errors of a damaged folder's files
    return _broken_local_dir(name, exc) if local else None


def create_model(
    name: str,
    num_classes: int | None,
    pretrained: bool = True,
    drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm model with a fresh zero-initialised `num_classes` head.

    num_classes=0: pooled features only; None: keep the pretrained classifier (ImageNet's).
    """
    resolved = resolve_model_name(name)
    bare = resolved.split(":", 1)[1] if resolved.startswith((LOCAL_DIR, HF_HUB)) else resolved
    if not resolved.startswith((LOCAL_DIR, HF_HUB)) and not timm.is_model(bare.split(".")[0]):
        close = timm.list_models(f"*{bare.split('.')[0][:12]}*")[:5]
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ModelError(f"unknown model {name!r}{hint}; see timm.list_models() for names")
    kwargs: dict[str, Any] = {"drop_rate": drop_rate}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        if pretrained and not resolved.startswith(LOCAL_DIR):
            before_hub_download()
        model = timm.create_model(resolved, pretrained=pretrained, **kwargs)
    except Exception as exc:
        error = _model_error_of(exc, name, resolved, pretrained)
        if error is None:
            raise
        raise error from None
    if num_classes:
        zero_init_head(model)
    return model


def zero_init_head(model: nn.Module) -> None:
    """Start the new classifier at zero (as BiT does): every class starts equally likely.

    Some timm inits scale the head by 1/sqrt(num_classes), which for 2 classes gives logits
    in the tens on pretrained features and a loss of ~3 before the first step.
    """
    head = model.get_classifier()
    for param in head.parameters():
        nn.init.zeros_(param)


def architecture_of(model: nn.Module) -> str:
    """The timm architecture name that rebuilds this model without its weights source."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise ModelError("model has no timm architecture name; create it with timm")
    return arch


def data_spec_of(model: nn.Module, image_size: int = 0) -> DataSpec:
    """The model's own preprocessing (timm resolve_model_data_config), optionally resized."""
    cfg = timm.data.resolve_model_data_config(model)
    size = image_size or int(cfg["input_size"][-1])
    return DataSpec(
        input_size=size,
        interpolation=str(cfg.get("interpolation") or "bicubic"),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        crop_pct=float(cfg.get("crop_pct") or 0.875),
    )


def classifier_param_names(model: nn.Module) -> list[str]:
    """Names of the parameters of the classifier timm reports (the head we replace)."""
    head = model.get_classifier()
    head_ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in head_ids]


def pick_device(requested: str) -> torch.device:
    """The device for --device / train.device, checked to exist here (a one-line exit 2)."""
    check_device_name(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {requested}: CUDA is not available here; use --device cpu")
        index = int(requested.split(":", 1)[1]) if ":" in requested else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s), cuda:0 to cuda:N-1; pick one of them"
            )
    if requested == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: Apple's MPS is not available here; use --device cpu")
    return torch.device(requested)
