"""Weight averages tried after fine-tuning, each kept only if it scores higher on val.

- SWA (Izmailov et al. 2018): the mean of the weights at the end of the last epochs;
- WiSE-FT (Wortsman et al., CVPR 2022): (1 - alpha) * LP-only + alpha * fine-tuned weights.

Averaged weights carry averaged BatchNorm statistics that belong to no network, so those
are recomputed on train images before the average is scored. The validation gate is the
point: a reproduction (arXiv 2301.10092) found weight soups hurt ResNets and EfficientNets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tlcli.choices import WISE_FT_ALPHAS
from tlcli.data.augment import BatchAugmenter, to_device
from tlcli.data.batches import batch_indices, read_batch

# Train images forwarded to re-estimate BatchNorm statistics (the first of a fixed shuffle):
# enough for a stable mean and variance per channel, a fraction of an epoch's cost.
BN_RECOMPUTE_IMAGES = 512

StateDict = dict[str, torch.Tensor]


def running_average(average: StateDict | None, count: int, state: StateDict) -> StateDict:
    """The mean of count earlier states (average) and one more; integer buffers: the latest."""
    if average is None or count == 0:
        return {k: v.detach().cpu().clone() for k, v in state.items()}
    result = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if value.is_floating_point():
            result[key] = average[key] + (value - average[key]) / (count + 1)
        else:
            result[key] = value.clone()
    return result


def interpolate(start: StateDict, end: StateDict, alpha: float) -> StateDict:
    """(1 - alpha) * start + alpha * end for float tensors; integer buffers from end."""
    return {
        k: (1 - alpha) * start[k].cpu() + alpha * v.cpu() if v.is_floating_point() else v.clone()
        for k, v in end.items()
    }


@dataclass(frozen=True)
class Candidate:
    name: str  # "swa" or "wise-ft 0.5"
    val_acc: float
    val_loss: float


def pick_average(candidates: list[Candidate], best_acc: float) -> Candidate | None:
    """The candidate with the highest val accuracy (then lowest loss), if it is strictly
    above best_acc (the best epoch's); else None: the epoch's weights stay."""
    if not candidates:
        return None
    top = max(candidates, key=lambda c: (c.val_acc, -c.val_loss))
    return top if top.val_acc > best_acc else None


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    pixels: np.ndarray,
    augmenter: BatchAugmenter,
    device: torch.device,
    batch_size: int,
    trained: set[str],
    seed: int,
    max_images: int = BN_RECOMPUTE_IMAGES,
) -> None:
    """Re-estimate the running statistics of the BatchNorm layers with trained weights
    (frozen ones saw unchanged inputs), as a plain average over up to max_images train
    images in the eval transform (the view the model is scored and used with)."""
    norms = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.weight" in trained
    ]
    if not norms:
        return
    model.eval()
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
        m.train()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pixels), generator=generator).numpy()[:max_images]
    for idx in batch_indices(len(order), batch_size, None):
        x = augmenter.center_crop(to_device(read_batch(pixels, order[idx]), device))
        model(x)
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    model.eval()


def score_averages(
    model: nn.Module,
    probe: StateDict | None,
    final: StateDict,
    swa: StateDict | None,
    prepare: Callable[[nn.Module], None],
    score: Callable[[nn.Module], tuple[float, float]],
) -> list[tuple[Candidate, StateDict]]:
    """Each average loaded into model, its BatchNorm statistics recomputed (prepare) and
    scored on val (score -> (loss, acc)). model is left holding final."""
    averages: list[tuple[str, StateDict]] = []
    if swa is not None:
        averages.append(("swa", swa))
    if probe is not None:
        averages += [(f"wise-ft {a:g}", interpolate(probe, final, a)) for a in WISE_FT_ALPHAS]
    scored = []
    for name, state in averages:
        model.load_state_dict(state)
        prepare(model)
        loss, acc = score(model)
        scored.append((Candidate(name, acc, loss), model_state(model)))
    model.load_state_dict(final)
    return scored


def model_state(model: nn.Module) -> StateDict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
