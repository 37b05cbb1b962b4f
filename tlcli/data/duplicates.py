"""Exact and near-duplicate images: SHA-1 of the bytes, and a 64-bit dHash confirmed on colour
thumbnails. Used by recommend and doctor (hygiene) and by the split, which keeps each
near-duplicate cluster on one side."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.cache import MIN_IMAGES_FOR_POOL
from tlcli.data.decode import size_problem
from tlcli.errors import folder_changed

# dHash Hamming distance (of 64 bits) at or below which two images are near-duplicate
# candidates: survives re-encoding and resizing, not crops.
NEAR_DUPLICATE_BITS = 4
# Candidates are confirmed on 16x16 colour thumbnails (mean absolute difference, 0-255): the
# 64-bit grey hash alone pairs different garments shot on the same background.
NEAR_DUPLICATE_MAD = 6.0
THUMB_SIDE = 16


def file_hashes(path: str) -> tuple[str, int, np.ndarray | None]:
    """(sha1 of the bytes, 64-bit dHash, 16x16 colour thumbnail): duplicate keys."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:  # deleted or made unreadable since the scan
        raise folder_changed(path, exc) from None
    sha = hashlib.sha1(data).hexdigest()
    try:
        with Image.open(path) as img:
            if size_problem(*img.size, DEFAULT_MAX_PIXELS):  # a strip or a bomb: not decoded
                return sha, -1, None
            img.draft("RGB", (64, 64))  # JPEG DCT scaling: a thumbnail costs almost nothing
            rgb = img.convert("RGB")
            small = np.asarray(rgb.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
            thumb = np.asarray(rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR), np.int16)
    except Exception:
        return sha, -1, None
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return sha, int(np.packbits(bits).view(">u8")[0]), thumb


def _popcount64(values: np.ndarray) -> np.ndarray:
    bytes_view = values.view(np.uint8).reshape(*values.shape, 8)
    return np.unpackbits(bytes_view, axis=-1).sum(-1)


def _groups(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[find(i)].append(i)
    return [g for g in members.values() if len(g) > 1]


def duplicate_groups(
    paths: Sequence[str], workers: int = 1, on_file: Callable[[], None] | None = None
) -> tuple[list[list[int]], list[list[int]]]:
    """(exact groups, near groups) as lists of indices into paths; a near group holds its
    exact copies too. on_file is called once per file hashed."""
    tick = on_file or (lambda: None)
    if workers > 1 and len(paths) >= MIN_IMAGES_FOR_POOL:
        with ThreadPoolExecutor(workers) as pool:  # PIL and hashlib release the GIL
            hashes = []
            for result in pool.map(file_hashes, paths):
                hashes.append(result)
                tick()
    else:
        hashes = []
        for path in paths:
            hashes.append(file_hashes(path))
            tick()
    by_sha: dict[str, list[int]] = defaultdict(list)
    for i, (sha, _, _) in enumerate(hashes):
        by_sha[sha].append(i)
    exact = [g for g in by_sha.values() if len(g) > 1]
    dhash = np.array([max(h, 0) for _, h, _ in hashes], dtype=np.uint64)
    valid = np.array([h != -1 for _, h, _ in hashes])
    thumbs = [t for _, _, t in hashes]
    pairs = []
    chunk = 512
    for start in range(0, len(dhash), chunk):
        block = dhash[start : start + chunk, None] ^ dhash[None, :]
        close = _popcount64(block) <= NEAR_DUPLICATE_BITS
        for i, j in zip(*np.nonzero(close), strict=True):
            a, b = start + int(i), int(j)
            if a < b and valid[a] and valid[b]:
                if float(np.abs(thumbs[a] - thumbs[b]).mean()) <= NEAR_DUPLICATE_MAD:
                    pairs.append((a, b))
    return exact, _groups(pairs, len(paths))
