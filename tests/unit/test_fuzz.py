"""Fuzz: broken copies of real photos through scan, decode, finetune and predict.

Made in the test from the real images of ../shared (the `shared_dir` fixture): truncated at
random offsets, bytes flipped, PNG IHDR and JPEG SOF sizes changed (with and without a valid
CRC), extreme aspect ratios. Seeded, so a failure replays. Every file must end either
decoded or skipped with its name, never a traceback, and the memory of the run must stay
bounded (the peak RSS of each subprocess).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import sys
import zlib
from pathlib import Path

import pytest
from corpus import run_measured
from PIL import Image

from tlcli.data.decode import ImageDecodeError, decode_square
from tlcli.data.scan import scan_image_folder

SEED = 12
SOURCE_SIDE = 96  # real photos are cut to this, so that 60 decodes stay fast
MAX_PIXELS = 178_956_970
PEAK_RSS_LIMIT = 2 * 1024**3  # bytes, for each subprocess
RUN_TIMEOUT = 240  # s; far above a run's time, so reaching it is a hang
# The stderr lines a run may print: its notes and results, named and prefixed; anything else
# (a traceback, a library's own warning) is a leak past the one-line contract.
STDERR_PREFIXES = (
    "error:", "warning:", "note:", "strategy ", "head-only:", "L-BFGS head", "epoch ",
    "train:", "predict:", "evaluate:", "split:", "LP-FT:", "weight average ",
    "temperature scaling:", "balance auto:",
)  # fmt: skip
TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
    "--device", "cpu", "--workers", "1",
]  # fmt: skip


def real_sources(shared: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of a few real photos, PNG and JPEG, cut to SOURCE_SIDE."""
    photos = sorted((shared / "weights" / "photos").glob("*.png"))
    jpegs = sorted((shared / "data" / "hymenoptera_data" / "train" / "ants").glob("*.jpg"))[:3]
    jpegs += sorted((shared / "data" / "sign_digits" / "train").rglob("*.jpg"))[:2]
    assert photos and jpegs, f"the real photos of {shared} are missing"
    sources = []
    for path in photos + jpegs:
        with Image.open(path) as img:
            img.thumbnail((SOURCE_SIDE, SOURCE_SIDE))
            buffer = io.BytesIO()
            img.save(buffer, "PNG" if path.suffix == ".png" else "JPEG", quality=90)
        sources.append((path.stem, buffer.getvalue()))
    return sources


def extension(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


def png_chunks(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(offset, type, payload) of each chunk."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunks.append((pos, kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def with_png_size(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    pos, kind, ihdr = png_chunks(data)[0]
    assert kind == b"IHDR"
    ihdr = struct.pack(">II", width, height) + ihdr[8:]
    crc = zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF if fix_crc else 0x12345678
    return data[: pos + 8] + ihdr + struct.pack(">I", crc) + data[pos + 8 + len(ihdr) + 4 :]


def with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The SOF0/SOF2 marker's height and width fields set to these values."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            fields = at + 5  # marker (2), length (2), precision (1), then height, width
            return data[:fields] + struct.pack(">HH", height, width) + data[fields + 4 :]
    raise AssertionError("no SOF marker")


def flipped(data: bytes, rng: random.Random, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def extreme(data: bytes, rng: random.Random) -> bytes:
    """A real photo squeezed into a strip (1 x 2000 up to 3 x 20000) or a tall sliver."""
    with Image.open(io.BytesIO(data)) as img:
        long_side, short_side = rng.choice([(2000, 1), (5000, 2), (20000, 3), (400, 3)])
        size = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        strip = img.convert("RGB").resize(size)
    buffer = io.BytesIO()
    strip.save(buffer, "PNG")
    return buffer.getvalue()


def fuzzed_files(sources: list[tuple[str, bytes]], seed: int = SEED) -> dict[str, bytes]:
    """{file name: bytes}: about 50 broken copies of the sources, of every kind."""
    rng = random.Random(seed)
    pngs = [(n, d) for n, d in sources if d.startswith(b"\x89PNG")]
    jpegs = [(n, d) for n, d in sources if d.startswith(b"\xff\xd8")]
    files: dict[str, bytes] = {}
    for i in range(12):
        name, data = rng.choice(sources)
        cut = rng.randrange(1, len(data))
        files[f"truncated{i}_{name}{extension(data)}"] = data[:cut]
    for i in range(12):
        name, data = rng.choice(sources)
        files[f"flipped{i}_{name}{extension(data)}"] = flipped(data, rng, rng.choice([1, 4, 32]))
    # (width, height, CRC fixed): a valid CRC gets past the header to the pixel data; 13000^2
    # is under data.max_pixels, so the decoder allocates it before it finds the data short.
    sizes = [(0, 50, True), (1, 100_000, True), (100_000, 1, True), (65535, 65535, False)]
    sizes += [(2**31 - 1, 1, True), (7, 9, True), (30_000, 30_000, True)]
    sizes += [(13_000, 13_000, True), (13_000, 13_000, False)]
    for i, (w, h, fix_crc) in enumerate(sizes):
        name, data = rng.choice(pngs)
        files[f"ihdr{i}_{w}x{h}_{name}.png"] = with_png_size(data, w, h, fix_crc)
    for i, (w, h) in enumerate([(0, 0), (1, 65535), (65535, 1), (65535, 65535), (9, 7)]):
        name, data = rng.choice(jpegs)
        files[f"sof{i}_{w}x{h}_{name}.jpg"] = with_jpeg_size(data, w, h)
    for i in range(6):
        name, data = rng.choice(sources)
        files[f"extreme{i}_{name}.png"] = extreme(data, rng)
    return files


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory, shared_dir) -> tuple[Path, dict[str, str]]:
    """(root, {relative path: 'ok' | reason}): two classes of intact copies plus the fuzzed
    files spread over them; the outcome of each file is what decode_square says of it."""
    root = tmp_path_factory.mktemp("fuzz") / "data"
    sources = real_sources(shared_dir)
    outcomes: dict[str, str] = {}
    for name, data in sources:
        for label in ("a", "b"):  # every source intact in both classes: enough to train
            rel = f"{label}/intact_{name}{extension(data)}"
            (root / label).mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    for i, (name, data) in enumerate(fuzzed_files(sources).items()):
        rel = f"{'ab'[i % 2]}/{name}"
        (root / rel).write_bytes(data)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            decode_square(path, 37, Image.BICUBIC, MAX_PIXELS)
            outcomes[path.relative_to(root).as_posix()] = "ok"
        except ImageDecodeError as exc:  # anything else is a bug, raised here
            outcomes[path.relative_to(root).as_posix()] = str(exc)
    return root, outcomes


def test_fuzzed_files_decode_or_give_a_one_line_reason(fuzz_folder):
    root, outcomes = fuzz_folder
    assert len(outcomes) >= 50
    bad = {rel: why for rel, why in outcomes.items() if why != "ok"}
    assert len(bad) >= 20, "the fuzzing lost its teeth: most files decode"
    for rel, why in bad.items():
        assert why and "\n" not in why and len(why) < 300, (rel, why)
        assert str(root) not in why, (rel, why)  # the path is printed beside the reason
    assert all(outcomes[rel] == "ok" for rel in outcomes if "intact_" in rel)


def test_fuzzed_folder_scans_every_file_into_kept_or_skipped(fuzz_folder):
    root, outcomes = fuzz_folder
    scan = scan_image_folder(root, MAX_PIXELS)
    kept = {s.path.relative_to(root).as_posix() for s in scan.splits["all"]}
    skipped = {Path(s.path).relative_to(root).as_posix(): s.reason for s in scan.skipped}
    assert kept | set(skipped) == set(outcomes) and not kept & set(skipped)
    for rel in skipped:  # the scan reads headers only: what it refuses, decoding refuses too
        assert outcomes[rel] != "ok", (rel, skipped[rel])


def assert_clean_stderr(stderr: str) -> None:
    assert "Traceback" not in stderr
    for line in stderr.splitlines():
        if line.strip():
            assert line.startswith(STDERR_PREFIXES), f"unexpected stderr line: {line!r}"


def test_fuzzed_folder_trains_and_predicts_naming_every_bad_file(fuzz_folder, tmp_path):
    root, outcomes = fuzz_folder
    bad = {rel for rel, why in outcomes.items() if why != "ok"}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    run = tmp_path / "run"
    code, _, stderr, peak = run_measured(
        [sys.executable, "-m", "tlcli", "finetune", str(root), *TINY, "--strategy", "partial",
         "--epochs", "1", "--out", str(run)],
        timeout=RUN_TIMEOUT, env=env,
    )  # fmt: skip
    assert code == 0, stderr
    assert_clean_stderr(stderr)
    assert peak < PEAK_RSS_LIMIT, f"finetune peak RSS {peak / 2**20:.0f} MiB"
    summary = json.loads((run / "summary.json").read_text())
    skipped = {Path(s["path"]).relative_to(root).as_posix() for s in summary["skipped"]}
    assert skipped == bad

    code, stdout, stderr, peak = run_measured(
        [sys.executable, "-m", "tlcli", "predict", str(run / "best.pt"), str(root),
         "--device", "cpu", "--json"],
        timeout=RUN_TIMEOUT, env=env,
    )  # fmt: skip
    assert code == 0, stderr
    assert_clean_stderr(stderr)
    assert peak < PEAK_RSS_LIMIT, f"predict peak RSS {peak / 2**20:.0f} MiB"
    report = json.loads(stdout)
    named = {Path(s["path"]).relative_to(root).as_posix() for s in report["skipped"]}
    assert named == bad
    predicted = {Path(p["path"]).relative_to(root).as_posix() for p in report["predictions"]}
    assert predicted == set(outcomes) - bad
