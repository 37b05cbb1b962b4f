"""Stream images from their files when the decoded set fits neither the cache disk nor RAM.

Most transfer-learning sets are decoded once into the uint8 cache (`cache.decode_images`). A
folder too large for that is read every epoch instead: `StreamedPixels` looks like the cache
array to the training loop (`pixels[idx]` gives (k, S, S, 3) uint8, the same decode and resize
as the cache, so a run gives the same result either way), and decodes each batch in a
persistent pool of threads (PIL releases the GIL while decoding and resizing); the loop asks
for the next batch while the current one trains (`batches.prefetched`).

Files that cannot be decoded are found before training, by a fast reduced-size decode of
every file (JPEG DCT scaling), and skipped as the cache skips them. A file that was readable
then but not later (the folder was changed during the run) is a one-line DataError.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tlcli.data.decode import ImageDecodeError, bounded_map, decode_square, load_rgb
from tlcli.errors import FolderChanged

# Side the validation pass decodes to: JPEG draft mode then decodes at 1/8 scale.
CHECK_SIZE = 8
# Stream when the decoded set needs more than this fraction of the RAM now available (no disk
# cache), or of the free space on the cache disk.
RAM_FRACTION = 0.5
DISK_FRACTION = 0.8


def decoded_bytes(count: int, size: int) -> int:
    return count * size * size * 3


def available_ram() -> int | None:
    """Bytes of RAM available to a new allocation (Linux MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: Path) -> int | None:
    """Free bytes on the disk that holds folder (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def stream_reason(
    mode: str, count: int, size: int, disk_cache: bool, cache_folder: Path
) -> str | None:
    """Why to stream this set rather than cache it, or None to cache it (auto|always|never)."""
    if mode == "never":
        return None
    if mode == "always":
        return "data.stream=always"
    need = decoded_bytes(count, size)
    if disk_cache:
        free = free_disk(cache_folder)
        if free is not None and need > DISK_FRACTION * free:
            return (
                f"the decode cache would take {need / 2**30:.1f} GiB and {cache_folder} has "
                f"{free / 2**30:.1f} GiB free: set TLCLI_CACHE_DIR to a larger disk to cache it"
            )
        return None
    ram = available_ram()
    if ram is not None and need > RAM_FRACTION * ram:
        return (
            f"the decoded images would take {need / 2**30:.1f} GiB of the "
            f"{ram / 2**30:.1f} GiB of RAM available: drop --no-cache to cache them on disk"
        )
    return None


def _check_one(args: tuple[str, int]) -> str | None:
    path, max_pixels = args
    try:
        load_rgb(Path(path), max_pixels, draft_size=CHECK_SIZE)
    except ImageDecodeError as exc:
        return str(exc)
    return None


def find_unreadable(
    paths: Sequence[Path],
    max_pixels: int,
    pool: ThreadPoolExecutor,
    on_advance: Callable[[int], None] | None = None,
) -> dict[int, str]:
    """{index: reason} of the files that cannot be decoded (fast: reduced-size decode)."""
    failures: dict[int, str] = {}
    jobs = [(str(p), max_pixels) for p in paths]
    for i, reason in enumerate(bounded_map(pool, _check_one, jobs)):
        if reason is not None:
            failures[i] = reason
        if on_advance is not None:
            on_advance(1)
    return failures


class StreamedPixels:
    """Array-like (N, S, S, 3) uint8 whose rows are decoded from the files when indexed."""

    dtype = np.dtype(np.uint8)

    def __init__(
        self, paths: Sequence[Path], size: int, resample: int, max_pixels: int, pool
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.size, self.resample, self.max_pixels = size, resample, max_pixels
        self.pool = pool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size, self.size, 3)

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int) -> np.ndarray:
        try:
            return decode_square(self.paths[i], self.size, self.resample, self.max_pixels)
        except ImageDecodeError as exc:  # deleted or rewritten since the check
            raise FolderChanged(
                f"{self.paths[i]} could not be read any more ({exc}) though it was when the "
                "command started: leave the folder unchanged while tlcli reads it"
            ) from None

    def __getitem__(self, idx) -> np.ndarray:
        rows = np.arange(len(self))[idx]
        if rows.ndim == 0:
            return self._decode(int(rows))
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        for j, pixels in enumerate(self.pool.map(self._decode, rows.tolist())):
            out[j] = pixels
        return out
