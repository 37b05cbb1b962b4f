"""Self-describing, safe checkpoints: plain types and tensors only, written atomically.

Loading uses `torch.load(weights_only=True)`, so a file that needs code to unpickle (a
malicious pickle, a whole pickled model) is refused before anything in it runs.
"""

from __future__ import annotations

import pickle
import platform
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from tlcli import __version__
from tlcli.atomic import TEMP_SUFFIX, write_atomically
from tlcli.errors import CheckpointError, ResourceError, disk_error_of

FORMAT = "tlcli-checkpoint"
FORMAT_VERSION = 1


def library_versions() -> dict[str, str]:
    import torchvision

    return {
        "tlcli": __version__,
        # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
        "torch": str(torch.__version__),
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def seed_everything(seed: int) -> None:
    """Seed every global RNG a run draws from: torch (init, dropout, RandAugment), numpy
    (timm's mixup/cutmix) and python's. Seeding torch alone left mixup unreproducible."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG a run draws from, as tensors and plain types (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def save_atomically(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through write_atomically; `remove_stale_temp_files` clears the temp file a
    killed process leaves in a run dir when the run is resumed."""
    write_atomically(path, lambda handle: torch.save(payload, handle))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """save_atomically with the format header; a full disk is a one-line ResourceError."""
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


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of atomic writes (checkpoints, metrics.csv) that a killed
    process left in its run dir."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a tlcli checkpoint safely or raise a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
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
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer tlcli; upgrade tlcli to load it")
    return data


def build_model(ckpt: dict[str, Any], weights: str = "best") -> tuple[nn.Module, str]:
    """Rebuild the network from a checkpoint alone (no network, no config file).

    weights: "best" picks the EMA weights when the run found them better, "ema" or "raw"
    force one. Returns the model (eval mode) and which weights were loaded.
    """
    spec = ckpt["model"]
    try:
        model = timm.create_model(spec["architecture"], pretrained=False, **spec["kwargs"])
    except Exception as exc:
        raise CheckpointError(
            f"cannot rebuild model {spec.get('architecture')!r} ({exc}); "
            "upgrade timm to the version in the checkpoint's versions"
        ) from None
    use_ema = ckpt.get("ema_state_dict") is not None and (
        weights == "ema" or (weights == "best" and ckpt.get("best_weights") == "ema")
    )
    state = ckpt["ema_state_dict"] if use_ema else ckpt["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint weights do not fit {spec['architecture']}: missing {len(missing)}, "
            f"unexpected {len(unexpected)} tensors; the file is damaged or from another model"
        )
    model.eval()
    return model, "ema" if use_ema else "raw"
