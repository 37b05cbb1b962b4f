"""Index batches over the decoded pixel arrays, and the batches read onto the device.

Shared by training, the head fit on features, lr-find, recommend's probes and inference: every
pass over a split batches its rows the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from tlcli.data.augment import to_device


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    weights: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Shuffled (generator given) or ordered index batches; a last batch of one is merged,
    since BatchNorm cannot train on a single sample. weights: n draws with replacement
    by these probabilities instead (the class-balanced sampler)."""
    if weights is not None and generator is not None:
        draws = torch.multinomial(torch.from_numpy(weights), n, True, generator=generator)
        order = draws.numpy()
    else:
        order = torch.randperm(n, generator=generator).numpy() if generator else np.arange(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()  # pop first, then extend the batch that is now last
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def read_batch(pixels: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """The batch's rows in index order, on the CPU: from the cache array (in RAM or memory-
    mapped) or, for a streamed folder (data.stream.StreamedPixels), decoded from the files."""
    return torch.from_numpy(np.ascontiguousarray(pixels[np.sort(idx)]))


def gather(pixels: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Copy a batch out of the cache onto the device."""
    return to_device(read_batch(pixels, idx), device)


def prefetched(
    pixels: np.ndarray, batches: list[np.ndarray], device: torch.device
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(idx, read_batch(pixels, idx)) per batch, each read in a background thread while the
    caller works on the one before: decoding a streamed batch or paging in a memory-mapped
    one overlaps the forward and backward passes. For CUDA the batch comes pinned, so that
    to_device's copy is queued without a second host copy on the training thread."""

    def read(idx: np.ndarray) -> torch.Tensor:
        batch = read_batch(pixels, idx)
        return batch.pin_memory() if device.type == "cuda" else batch

    reader = ThreadPoolExecutor(1)
    try:
        pending = reader.submit(read, batches[0]) if batches else None
        for i, idx in enumerate(batches):
            batch = pending.result()
            if i + 1 < len(batches):
                pending = reader.submit(read, batches[i + 1])
            yield idx, batch
    finally:
        reader.shutdown(wait=True, cancel_futures=True)


def sorted_labels(labels: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return to_device(torch.from_numpy(labels[np.sort(idx)]), device)
