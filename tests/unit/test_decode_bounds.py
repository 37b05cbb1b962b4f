"""Memory bombs from tiny files: the work of decoding is bounded by what is produced.

A 1x20000 PNG (161 bytes) resized to 256 px on its short side would be 256 x 5,120,000
pixels; a 1x100000000 strip (a few hundred KB) was OOM-killed with no message. Extreme
strips are skipped and named at the scan (header only); wide photos resample only the
source region of their centre square.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from corpus import make_image_folder, run_measured
from PIL import Image

from tlcli.data.decode import (
    MAX_ASPECT_RATIO,
    MAX_RESIZED_SQUARES,
    ImageDecodeError,
    decode_square,
    resize_center_square,
)
from tlcli.data.scan import identify_image

STRIP_LENGTH = 100_000_000  # 1 x 1e8 grey pixels: 200 MB of PNG rows in about 200 KB
PEAK_RSS_LIMIT = 2 * 1024**3  # bytes
MAX_PIXELS = 178_956_970


def write_strip_png(path: Path, width: int, height: int) -> None:
    """A valid 8-bit grey PNG of width x height, written row by row (never held in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\x00" + b"\x80" * width  # filter byte, then the grey pixels
    rows_per_piece = max(1, (1 << 20) // len(row))
    idat = []
    for start in range(0, height, rows_per_piece):
        idat.append(packer.compress(row * min(rows_per_piece, height - start)))
    idat.append(packer.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def full_resize_then_crop(img: Image.Image, size: int, resample: int) -> np.ndarray:
    """The reference: resize the whole image, then crop its centre square."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((new_w, new_h), resample=resample, reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


@pytest.mark.parametrize("wh", [(3, 250), (250, 3), (2000, 150), (40, 900)])
@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC])
def test_a_wide_image_resamples_its_centre_square_only(wh, resample):
    yy, xx = np.mgrid[0 : wh[1], 0 : wh[0]]
    waves = [np.sin(xx / 7.0 + k) + np.cos(yy / 11.0 - k) for k in range(3)]  # photo-like: smooth
    img = Image.fromarray((np.stack(waves, -1) * 60 + 128).astype(np.uint8))
    square = resize_center_square(img, 64, resample)
    assert square.shape == (64, 64, 3)
    diff = np.abs(square.astype(int) - full_resize_then_crop(img, 64, resample))
    # The same filter taps; PIL's 8-bit intermediate between its two passes rounds differently.
    assert diff.max() <= 2 and diff.mean() < 0.5


def test_no_resize_produces_more_than_a_few_output_squares(monkeypatch):
    """A 2x190 image (under the aspect limit) at a 4096 px cache: the old code resized it to
    4096 x 389120 pixels (4.8 GB) before cropping the square."""
    produced = []
    real_resize = Image.Image.resize

    limit = MAX_RESIZED_SQUARES * 4096 * 4096

    def resize(self, size, *args, **kwargs):
        produced.append(size[0] * size[1])  # and never allocate what the old code asked for
        return real_resize(self, size if size[0] * size[1] <= limit else (1, 1), *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    resize_center_square(Image.new("RGB", (2, 190), (1, 2, 3)), 4096, Image.BICUBIC)
    assert produced and max(produced) <= limit


@pytest.mark.parametrize("wh", [(1, 20_000), (20_000, 1), (2, 2 * MAX_ASPECT_RATIO + 1)])
def test_an_extreme_strip_is_named_at_the_scan_and_never_decoded(tmp_path, wh):
    path = tmp_path / "strip.png"
    Image.new("L", wh, 128).save(path)
    reason = identify_image(path, MAX_PIXELS)
    assert reason is not None and f"extreme aspect ratio ({wh[0]}x{wh[1]}" in reason
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        decode_square(path, 256, Image.BICUBIC, MAX_PIXELS)


def test_a_photo_at_the_aspect_limit_is_decoded(tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("RGB", (MAX_ASPECT_RATIO * 3, 3), (10, 200, 30)).save(path)
    assert identify_image(path, MAX_PIXELS) is None
    square = decode_square(path, 32, Image.BICUBIC, MAX_PIXELS)
    assert square.shape == (32, 32, 3) and tuple(square[16, 16]) == (10, 200, 30)


def test_a_folder_with_a_1x100000000_png_trains_in_bounded_memory_and_names_it(tmp_path):
    data = make_image_folder(tmp_path / "data", {"a": 6, "b": 6})
    strip = data / "a" / "strip.png"
    write_strip_png(strip, 1, STRIP_LENGTH)
    assert strip.stat().st_size < 1_000_000
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    args = ["--model", "test_resnet", "--no-pretrained", "--strategy", "head-only",
            "--image-size", "32", "--device", "cpu", "--workers", "1"]  # fmt: skip
    code, _, stderr, peak = run_measured(
        [sys.executable, "-m", "tlcli", "finetune", str(data), *args, "--out", str(tmp_path / "r")],
        timeout=300,
        env=env,
    )
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert f"skipped {strip}: extreme aspect ratio (1x{STRIP_LENGTH}" in stderr
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**20:.0f} MiB"


def test_run_measured_reports_the_child_not_the_big_process_that_started_it():
    """ru_maxrss would report this test process's own peak; the child's reading must not."""
    ballast = np.ones(600 * 2**20, dtype=np.uint8)  # 600 MiB resident in this process
    code, _, _, small = run_measured([sys.executable, "-c", "import time; time.sleep(0.3)"], 60)
    grow = (
        "import time; b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "time.sleep(0.3)"
    )
    _, _, _, big = run_measured([sys.executable, "-c", grow], 60)
    del ballast
    assert code == 0
    assert small < 200 * 2**20, f"{small / 2**20:.0f} MiB"
    assert 400 * 2**20 < big < 600 * 2**20, f"{big / 2**20:.0f} MiB"
