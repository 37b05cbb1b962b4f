"""Decode any image file people keep into an RGB PIL image, or say why not.

Handles EXIF orientation, palette/RGBA/LA transparency (composited on white, the usual
background of product photos), 1-bit, 16-bit and float images (rescaled, not clipped),
CMYK, and animated files (first frame). Truncated files raise: a half-decoded image
would silently train on grey.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Jobs in flight at once in bounded_map: Executor.map would create a future per file up front
# (about a kilobyte each: a gigabyte for a million images).
MAX_PENDING_JOBS = 1024

TRANSPARENT_BACKGROUND = (255, 255, 255)
NOT_AN_IMAGE = "not an image (content is not a known image format)"

# Longer over shorter side above which a file is skipped and named, not decoded: skipping
# serves the user best, since its centre square (all the model sees) is under 1% of it and the
# user can crop it, and a 1x100000000 PNG of 194 KB is a memory bomb. Panoramas are about 10:1.
MAX_ASPECT_RATIO = 100
# A resize larger than this many output squares crops its source region first (resize's box):
# the work and memory are bounded by what is produced, whatever the aspect ratio.
MAX_RESIZED_SQUARES = 4


class ImageDecodeError(Exception):
    """Carries a one-line reason for the skipped-files report."""


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16-bit/32-bit/float grayscale -> 8-bit, scaled by the type's range or the data's."""
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535):
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        arr = arr / top * 255.0
    else:
        lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to RGB."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_depth_to_l(img)
    return img.convert("RGB") if img.mode != "RGB" else img


def size_problem(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image of this declared size is not decoded (None: it is fine). The one check
    of a header's size, used by the scan and by the decoder."""
    if width < 1 or height < 1:
        return "not an image (no size or format)"
    if width * height > max_pixels:
        return (
            f"image too large ({width}x{height} > data.max_pixels={max_pixels}): "
            "possible decompression bomb"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        return (
            f"extreme aspect ratio ({width}x{height}, over {MAX_ASPECT_RATIO}:1): the centre "
            "square would show almost none of it; crop the image"
        )
    return None


def load_rgb(path: Path, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Open, fully decode and convert to RGB; raises ImageDecodeError with a reason."""
    try:
        with Image.open(path) as img:
            problem = size_problem(img.width, img.height, max_pixels)
            if problem:
                raise ImageDecodeError(problem)
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L"):
                # JPEG DCT scaling: decode at >= draft_size, up to 8x faster for big photos.
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:  # PIL's message repeats the path, printed beside it anyway
        raise ImageDecodeError(NOT_AN_IMAGE) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        message = str(exc) or type(exc).__name__
        if "truncated" in message:
            message = "truncated or corrupt file (" + message + ")"
        raise ImageDecodeError(message) from None
    except Exception as exc:  # PIL plugins raise odd types on malformed data
        raise ImageDecodeError(f"{type(exc).__name__}: {exc}") from None


def resize_center_square(img: Image.Image, size: int, resample: int) -> np.ndarray:
    """Resize the short side to `size` and center-crop a size x size square (uint8 HWC).

    With size = input_size / crop_pct this is timm's eval resize, so the center crop of the
    cache equals timm's eval transform; training crops are taken from it. Its rounding is
    torchvision's: Resize truncates the long side, CenterCrop rounds its offset half to even
    (a rounded long side or a floored offset shifted 451x300 or 741x500 photos by a pixel).
    Exact where size - input_size is even (crop_pct 0.875, 0.9 or 1 at 224 px).
    """
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    if new_w * new_h > MAX_RESIZED_SQUARES * size * size:
        # Resample only the square's source region, never the whole resized strip (a 2x190
        # image at a 4096 px cache: 1.6 G pixels). Same filter taps; PIL's 8-bit intermediate
        # between its two passes rounds a few pixels differently.
        sx, sy = w / new_w, h / new_h
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        img = img.resize((size, size), resample=resample, box=box, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)
    img = img.resize((new_w, new_h), resample=resample, reducing_gap=3.0)
    img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def decode_square(path: Path, size: int, resample: int, max_pixels: int) -> np.ndarray:
    """What the decode cache holds for a file, and what streaming reads: the file decoded
    (JPEG DCT-scaled to >= size) and resized to a size x size uint8 square. One function, so
    a streamed run sees exactly the cached pixels. Raises ImageDecodeError."""
    img = load_rgb(Path(path), max_pixels, draft_size=size)
    return resize_center_square(img, size, resample)


def bounded_map(pool: Executor, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> Iterator[Any]:
    """pool.map(fn, jobs) in order, with at most MAX_PENDING_JOBS submitted at a time.

    Closing the iterator early (Ctrl-C in the caller) cancels the jobs not yet started.
    """
    batch: list[Any] = []
    for job in jobs:
        batch.append(job)
        if len(batch) == MAX_PENDING_JOBS:
            yield from pool.map(fn, batch)
            batch = []
    if batch:
        yield from pool.map(fn, batch)
