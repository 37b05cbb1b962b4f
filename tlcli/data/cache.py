"""Decode every image once into a uint8 array at slightly above the training size.

Transfer-learning sets are small: decoding and resizing the same JPEGs every epoch is most of
an epoch's data cost. The array lives in RAM or, with the disk cache, in a memory-mapped
`.npy` under the cache folder keyed by the files' paths, sizes, times and inodes and the
target size, so a changed folder gets a new cache and an unchanged one is reused across runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tlcli.atomic import TEMP_SUFFIX, remove_orphaned_temp_files, temp_prefix, write_text_atomically
from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.decode import ImageDecodeError, bounded_map, decode_square
from tlcli.data.scan import Sample, Skipped
from tlcli.data.stream import StreamedPixels, find_unreadable, stream_reason
from tlcli.errors import ResourceError, disk_error_of, folder_changed

# Bump when the decoded pixels would differ (resize rule, colour conversion).
DECODE_CACHE_VERSION = 2  # 2: torchvision's rounding of the resize and crop
# Names the decode's memory-mapped temp file (see atomic.temp_prefix).
TEMP_TAG = "decode"
# Below this many images a thread pool costs more than it saves.
MIN_IMAGES_FOR_POOL = 64
RESAMPLE = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}


def cache_root() -> Path:
    """TLCLI_CACHE_DIR, else $XDG_CACHE_HOME/tlcli, else ~/.cache/tlcli."""
    if os.environ.get("TLCLI_CACHE_DIR"):
        return Path(os.environ["TLCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlcli"


def files_fingerprint(paths: Sequence[Path]) -> str:
    """Hash of paths, sizes, mtimes, ctimes and inodes: any added, removed or edited file
    changes it. The mtime alone can be set back (touch -d, rsync -t, a copy that keeps it:
    contents swapped with the mtime kept were scored from stale pixels); the ctime cannot be
    set, and every write changes it; a file replaced by another (rename) has a new inode.

    A file gone since the scan is a one-line FolderChanged."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise folder_changed(path, exc) from None
        # fsencode: a non-UTF-8 name (PEP 383 surrogates) is hashed as its bytes, not refused.
        name = os.fsencode(os.path.abspath(path))
        digest.update(
            name
            + f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}"
            f"\0{st.st_dev}:{st.st_ino}\n".encode()
        )
    return digest.hexdigest()


def unwritable_reason(folder: Path) -> str | None:
    """Why no cache file can be made in folder (a read-only file system or cache dir, as on
    HPC nodes and in containers), or None when one can. A full disk is not such a reason:
    the writers say so (exit 7), or the images are streamed."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=temp_prefix("probe"), suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return None if disk_error_of(exc) is not None else (exc.strerror or str(exc))
    return None


class RowView:
    """Rows `rows` of an image array (the memory-mapped cache, a StreamedPixels) without
    copying them: view[idx] reads base[rows[idx]]. A copy of a large memory-mapped cache
    minus one unreadable file would need all of it in RAM at once."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, base, rows: Sequence[int]) -> None:
        if isinstance(base, RowView):  # a view of a view reads the first base directly
            base, rows = base.base, base.rows[np.asarray(rows, dtype=np.int64)]
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.base.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx) -> np.ndarray:
        return self.base[self.rows[idx]]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.asarray(self.base[self.rows])
        return rows if dtype is None else rows.astype(dtype)


@dataclass
class DecodedImages:
    """Square uint8 images (N, S, S, 3) with their labels; failed files are left out."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: list[Path]
    skipped: list[Skipped]
    streamed: str | None = None  # why pixels is a StreamedPixels read from the files, if so
    cache_note: str | None = None  # why the disk cache was not used (it could not be written)

    def __len__(self) -> int:
        return len(self.paths)


def _decode_one(args: tuple[str, int, int, int]) -> np.ndarray | str:
    try:
        return decode_square(*args)
    except ImageDecodeError as exc:
        return str(exc)


def _decode_all(
    jobs: list[tuple[str, int, int, int]],
    out: np.ndarray,
    workers: int,
    on_advance: Callable[[int], None] | None,
) -> dict[int, str]:
    failures: dict[int, str] = {}
    if workers > 1 and len(jobs) >= MIN_IMAGES_FOR_POOL:
        # Threads, not processes: PIL releases the GIL while decoding and resizing, and
        # threads need no re-import of the caller's __main__ (spawn) or fork after torch.
        pool = ThreadPoolExecutor(workers)
        try:
            for i, result in enumerate(bounded_map(pool, _decode_one, jobs)):
                _store(i, result, out, failures, on_advance)
        finally:
            # On Ctrl-C, drop the queued images instead of decoding the rest of the folder.
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for i, job in enumerate(jobs):
            _store(i, _decode_one(job), out, failures, on_advance)
    return failures


def _store(i, result, out, failures, on_advance) -> None:
    if isinstance(result, str):
        failures[i] = result
    else:
        out[i] = result
    if on_advance is not None:
        on_advance(1)


def _create_cache_file(folder: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    """A memory-mapped temp .npy with its blocks reserved up front.

    A sparse memmap on a full disk fails later with SIGBUS (a crash with no message) when a
    page is written; reserving the space turns that into an ENOSPC now.
    """
    remove_orphaned_temp_files(folder, TEMP_TAG)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(TEMP_TAG), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        pixels = np.lib.format.open_memmap(tmp, "w+", np.uint8, shape)
        _reserve_blocks(tmp)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if disk_error_of(exc) is not None:
            raise ResourceError(
                f"disk full writing the decode cache in {folder}: free space, set "
                "TLCLI_CACHE_DIR to another disk, or pass --no-cache"
            ) from None
        raise
    return pixels, tmp


def _reserve_blocks(path: str) -> None:
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the file stays sparse
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if disk_error_of(exc) is not None:
            raise
        # A file system without fallocate: the file stays sparse.
    finally:
        os.close(fd)


def _load_cache(
    array_path: Path, meta_path: Path, shape: tuple[int, ...]
) -> tuple[np.ndarray, dict[int, str]] | None:
    """The cached pixels and failures, or None when absent or unreadable (then decode again)."""
    if not (array_path.is_file() and meta_path.is_file()):
        return None
    try:
        failures = {int(k): str(v) for k, v in json.loads(meta_path.read_text()).items()}
        pixels = np.load(array_path, mmap_mode="r")
    except (OSError, ValueError, AttributeError):  # cut short, corrupt or not an .npy
        return None
    if pixels.shape != shape or pixels.dtype != np.uint8:
        return None
    return pixels, failures


def resolve_workers(requested: int) -> int:
    """Decoding threads for data.workers: -1 is one per CPU."""
    return max(1, os.cpu_count() or 1) if requested < 0 else max(1, requested)


def decode_images(
    samples: Sequence[Sample],
    size: int,
    interpolation: str = "bicubic",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 1,
    disk_cache: bool = True,
    on_advance: Callable[[int], None] | None = None,
    stream: str = "auto",
) -> DecodedImages:
    """Decode samples to (N, size, size, 3) uint8, reusing the disk cache when it matches.

    stream: "auto" streams from the files (stream.StreamedPixels) only when the decoded set
    would not fit on the cache disk (or in RAM without the disk cache); "always", "never".
    """
    paths = [s.path for s in samples]
    resample = RESAMPLE.get(interpolation, Image.BICUBIC)
    folder = cache_root() / "images"
    key = hashlib.sha256(
        f"{DECODE_CACHE_VERSION}:{size}:{resample}:{max_pixels}:{files_fingerprint(paths)}".encode()
    ).hexdigest()[:32]
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    cached, note = None, None
    if disk_cache and stream != "always":  # a cache made earlier is used even if space is short
        cached = _load_cache(array_path, meta_path, (len(paths), size, size, 3))
        reason = unwritable_reason(folder) if cached is None else None
        if reason is not None:
            disk_cache = False
            note = (
                f"cannot write the cache in {folder} ({reason}): decoding into RAM instead; "
                "set TLCLI_CACHE_DIR to a writable folder to keep the decoded images"
            )
    if cached is None:
        why = stream_reason(stream, len(paths), size, disk_cache, folder)
        if why is not None:
            streamed = _streamed(samples, size, resample, max_pixels, workers, on_advance, why)
            return dataclasses.replace(streamed, cache_note=note)
    if cached is not None:
        pixels, failures = cached
        if on_advance is not None:
            on_advance(len(paths))
    else:
        jobs = [(str(p), size, resample, max_pixels) for p in paths]
        if disk_cache:
            folder.mkdir(parents=True, exist_ok=True)
            pixels, tmp = _create_cache_file(folder, (len(paths), size, size, 3))
            try:
                failures = _decode_all(jobs, pixels, workers, on_advance)
                pixels.flush()
            except BaseException:  # Ctrl-C, SIGTERM, a full disk: leave no temp file
                del pixels
                Path(tmp).unlink(missing_ok=True)
                raise
            del pixels
            # Both renames are atomic, so a reader never sees a half-written file, and a
            # second process decoding the same folder at once writes identical contents.
            meta = json.dumps({str(k): v for k, v in failures.items()})
            write_text_atomically(meta_path, meta)
            os.replace(tmp, array_path)
            pixels = np.load(array_path, mmap_mode="r")
        else:
            pixels = np.zeros((len(paths), size, size, 3), np.uint8)
            failures = _decode_all(jobs, pixels, workers, on_advance)
    keep = _kept(len(paths), failures)
    if failures:
        pixels = RowView(pixels, keep)
    return dataclasses.replace(_decoded(samples, pixels, keep, failures), cache_note=note)


def _kept(count: int, failures: dict[int, str]) -> np.ndarray:
    return np.array([i for i in range(count) if i not in failures], dtype=np.int64)


def _decoded(samples, pixels, keep: np.ndarray, failures: dict[int, str], streamed=None):
    paths = [s.path for s in samples]
    return DecodedImages(
        pixels=pixels,
        labels=np.array([samples[i].label for i in keep], dtype=np.int64),
        paths=[paths[i] for i in keep],
        skipped=[Skipped(str(paths[i]), reason) for i, reason in sorted(failures.items())],
        streamed=streamed,
    )


def _streamed(samples, size, resample, max_pixels, workers, on_advance, why) -> DecodedImages:
    """Check every file once, then read the readable ones from disk each time they are used."""
    pool = ThreadPoolExecutor(max(1, workers))  # persistent: serves every batch of the run
    try:
        failures = find_unreadable([s.path for s in samples], max_pixels, pool, on_advance)
    except BaseException:  # Ctrl-C: drop the queued checks
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    keep = _kept(len(samples), failures)
    pixels = StreamedPixels([samples[i].path for i in keep], size, resample, max_pixels, pool)
    return _decoded(samples, pixels, keep, failures, why)
