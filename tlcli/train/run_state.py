"""What training puts in a checkpoint besides the weights, and what it restores on --resume:
library versions, every RNG's state; and the clean-up of a killed run's temp files.

The payload format itself (`Checkpoint`, `TrainState`, saving and loading) is
tlcli/checkpoint.py, below train: inference reads it too.
"""

from __future__ import annotations

import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from torch import nn

from tlcli import __version__
from tlcli.atomic import TEMP_SUFFIX


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


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


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of atomic writes (checkpoints, metrics.csv) that a killed
    process left in its run dir."""
    removed = []
    for tmp in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed
