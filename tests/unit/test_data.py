"""Scanning, decoding, splitting and the decode cache on generated folders and the bad corpus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from corpus import (
    ANIMATED_GIF,
    BAD_CORPUS_CLASSES,
    BOMB_SIDE,
    CMYK_JPEG,
    EXIF_JPEG,
    GRAY16_PNG,
    LA_PNG,
    ONE_BIT_PNG,
    PALETTE_PNG,
    PNG_NAMED_JPG,
    RGBA_PNG,
    SKIP_REASONS,
    SKIPPED_AT_DECODE,
    TRUNCATED_JPEG,
    UNICODE_JPG,
    UPPER_JPG,
)

from tlcli.data import cache as cache_module
from tlcli.data.cache import decode_images
from tlcli.data.decode import ImageDecodeError, load_rgb
from tlcli.data.scan import Sample, scan_image_folder
from tlcli.data.split import load_split, save_split, stratified_split, train_val_samples
from tlcli.errors import DataError

PIL_MAX_PIXELS = 178_956_970  # data.max_pixels' default
WHITE, RED, BLUE, BLACK = (255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)


def _rel(root: Path, path) -> str:
    return Path(path).relative_to(root).as_posix()


def _with(outcomes: dict[str, str], outcome: str) -> set[str]:
    return {rel for rel, value in outcomes.items() if value == outcome}


# --- scanning -------------------------------------------------------------------------------


def test_scan_skips_exactly_the_bad_files_by_name(bad_corpus):
    root, outcomes = bad_corpus
    assert BOMB_SIDE * BOMB_SIDE > PIL_MAX_PIXELS
    scan = scan_image_folder(root, PIL_MAX_PIXELS)
    skipped = {_rel(root, s.path): s.reason for s in scan.skipped}
    assert set(skipped) == _with(outcomes, "skipped") - SKIPPED_AT_DECODE
    for rel, reason in skipped.items():
        assert SKIP_REASONS[rel] in reason, (rel, reason)
        assert "\n" not in reason
    # Everything else usable is a sample, hidden files are neither sample nor skipped.
    samples = {_rel(root, s.path) for s in scan.splits["all"]}
    assert samples == _with(outcomes, "ok") | SKIPPED_AT_DECODE
    assert not _with(outcomes, "ignored") & (samples | set(skipped))
    assert scan.layout == "flat"
    assert scan.classes == list(BAD_CORPUS_CLASSES)  # the hidden folder is not a class


def test_scan_labels_follow_class_folders(bad_corpus):
    root, _ = bad_corpus
    scan = scan_image_folder(root, PIL_MAX_PIXELS)
    for sample in scan.splits["all"]:
        assert scan.classes[sample.label] == _rel(root, sample.path).split("/")[0]
    assert UNICODE_JPG in {_rel(root, s.path) for s in scan.splits["all"]}


def test_bomb_reason_names_the_declared_size(bad_corpus):
    root, _ = bad_corpus
    scan = scan_image_folder(root, 1_000_000)
    (bomb,) = [s for s in scan.skipped if s.path.endswith("bomb.png")]
    assert f"{BOMB_SIDE}x{BOMB_SIDE}" in bomb.reason and "1000000" in bomb.reason


def test_flat_layout(image_folder):
    root = image_folder(counts={"cat": 5, "dog": 4})
    scan = scan_image_folder(root)
    assert scan.layout == "flat"
    assert scan.classes == ["cat", "dog"]
    assert set(scan.splits) == {"all"}
    assert scan.counts("all") == {"cat": 5, "dog": 4}


def test_split_layout(image_folder):
    root = image_folder(
        counts={"cat": 5, "dog": 4}, layout="split", val_counts={"cat": 2, "dog": 3}
    )
    scan = scan_image_folder(root)
    assert scan.layout == "split"
    assert scan.classes == ["cat", "dog"]
    assert scan.counts("train") == {"cat": 5, "dog": 4}
    assert scan.counts("val") == {"cat": 2, "dog": 3}
    train, val = train_val_samples(scan, 0.2, seed=0)
    assert (train, val) == (scan.splits["train"], scan.splits["val"])  # used as given


def _assert_one_line_data_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_no_images_is_a_data_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("nothing here")
    with pytest.raises(DataError) as excinfo:
        scan_image_folder(tmp_path)
    _assert_one_line_data_error(excinfo, "no images")


def test_missing_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        scan_image_folder(tmp_path / "nope")
    _assert_one_line_data_error(excinfo, "does not exist")


def test_one_class_is_a_data_error(image_folder):
    with pytest.raises(DataError) as excinfo:
        scan_image_folder(image_folder(counts={"only": 4}))
    _assert_one_line_data_error(excinfo, "only one class", "only")


def test_class_with_one_image_cannot_be_split(image_folder):
    scan = scan_image_folder(image_folder(counts={"a": 5, "lonely": 1}))
    with pytest.raises(DataError) as excinfo:
        train_val_samples(scan, 0.2, seed=0)
    _assert_one_line_data_error(excinfo, "lonely", "val/")


def test_val_class_missing_from_train_is_a_data_error(image_folder):
    root = image_folder(
        counts={"a": 3, "b": 3}, layout="split", val_counts={"a": 2, "b": 2, "extra": 2}
    )
    with pytest.raises(DataError) as excinfo:
        scan_image_folder(root)
    _assert_one_line_data_error(excinfo, "extra", "train/")


# --- decoding odd formats -------------------------------------------------------------------


def _decode(root: Path, rel: str) -> np.ndarray:
    img = load_rgb(root / rel, PIL_MAX_PIXELS)
    assert img.mode == "RGB"
    return np.asarray(img)


def _close(pixel, colour, tol=12) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) <= tol))


@pytest.mark.parametrize(
    "rel, size",
    [
        (PNG_NAMED_JPG, (24, 24)),
        (CMYK_JPEG, (24, 24)),
        (GRAY16_PNG, (64, 16)),
        (RGBA_PNG, (32, 16)),
        (PALETTE_PNG, (32, 16)),
        (ONE_BIT_PNG, (32, 16)),
        (LA_PNG, (32, 16)),
        (EXIF_JPEG, (20, 40)),  # stored 40x20, EXIF orientation 6: width and height swap
        (ANIMATED_GIF, (24, 24)),
        (UPPER_JPG, (24, 24)),
        (UNICODE_JPG, (24, 24)),
    ],
)
def test_odd_formats_decode_to_rgb_of_the_right_size(bad_corpus, rel, size):
    root, _ = bad_corpus
    pixels = _decode(root, rel)
    assert (pixels.shape[1], pixels.shape[0]) == size
    assert pixels.shape[2] == 3 and pixels.dtype == np.uint8


def test_16_bit_is_scaled_not_clipped(bad_corpus):
    root, _ = bad_corpus
    row = _decode(root, GRAY16_PNG)[0, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)  # the gradient survives
    assert row[0] <= 2 and row[-1] >= 253
    assert len(np.unique(row)) > 50  # clipping would leave (almost) only 255


def test_transparency_is_composited_on_white(bad_corpus):
    root, _ = bad_corpus
    rgba = _decode(root, RGBA_PNG)
    assert _close(rgba[8, 2], WHITE, 0) and _close(rgba[8, 30], RED, 0)
    palette = _decode(root, PALETTE_PNG)
    assert _close(palette[8, 2], WHITE, 0) and _close(palette[8, 30], BLUE, 0)
    la = _decode(root, LA_PNG)
    assert _close(la[8, 2], WHITE, 0) and _close(la[8, 30], (100, 100, 100), 0)


def test_exif_rotation_is_applied(bad_corpus):
    root, _ = bad_corpus
    pixels = _decode(root, EXIF_JPEG)  # stored red left / blue right, turned 90 degrees CW
    assert _close(pixels[5, 10], RED, 40) and _close(pixels[35, 10], BLUE, 40)


def test_other_modes_keep_their_colours(bad_corpus):
    root, _ = bad_corpus
    one_bit = _decode(root, ONE_BIT_PNG)
    assert _close(one_bit[8, 2], BLACK, 0) and _close(one_bit[8, 30], WHITE, 0)
    assert _close(_decode(root, CMYK_JPEG)[12, 12], (0, 255, 255), 12)  # pure cyan
    assert _close(_decode(root, ANIMATED_GIF)[12, 12], RED, 12)  # the first frame


def test_truncated_jpeg_raises_a_decode_error(bad_corpus):
    root, _ = bad_corpus
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_rgb(root / TRUNCATED_JPEG, PIL_MAX_PIXELS)


# --- split ----------------------------------------------------------------------------------


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [
        Sample(Path(f"c{label}/{i}.png"), label) for label, n in counts.items() for i in range(n)
    ]


def test_stratified_split_is_seeded_and_stratified():
    samples = _samples({0: 10, 1: 5, 2: 3})
    train, val = stratified_split(samples, ["a", "b", "c"], 0.2, seed=7)
    again = stratified_split(samples, ["a", "b", "c"], 0.2, seed=7)
    other = stratified_split(samples, ["a", "b", "c"], 0.2, seed=8)
    assert (train, val) == again
    assert set(val) != set(other[1])
    assert sorted(train + val, key=str) == sorted(samples, key=str)
    assert not set(train) & set(val)
    val_counts = {label: sum(s.label == label for s in val) for label in range(3)}
    assert val_counts == {0: 2, 1: 1, 2: 1}  # round(n * 0.2), at least one per class


def test_split_never_empties_a_side():
    train, val = stratified_split(_samples({0: 2, 1: 2}), ["a", "b"], 0.9, seed=0)
    assert len(train) == 2 and len(val) == 2


def test_split_saved_and_loaded_identically(tmp_path, image_folder):
    root = image_folder(counts={"a": 6, "b": 5})
    scan = scan_image_folder(root)
    train, val = train_val_samples(scan, 0.3, seed=1)
    save_split(tmp_path / "split.json", root, scan.classes, {"train": train, "val": val})
    classes, splits = load_split(tmp_path / "split.json", root)
    assert classes == scan.classes
    assert splits == {"train": train, "val": val}


# --- decode cache ---------------------------------------------------------------------------


def test_decode_images_skips_the_truncated_file_by_name(bad_corpus):
    root, _ = bad_corpus
    scan = scan_image_folder(root, PIL_MAX_PIXELS)
    samples = scan.splits["all"]
    decoded = decode_images(samples, 32, max_pixels=PIL_MAX_PIXELS, disk_cache=False)
    assert [_rel(root, s.path) for s in decoded.skipped] == [TRUNCATED_JPEG]
    assert "truncated" in decoded.skipped[0].reason
    assert decoded.pixels.shape == (len(samples) - 1, 32, 32, 3)
    assert decoded.pixels.dtype == np.uint8
    by_path = {s.path: s.label for s in samples}
    assert decoded.labels.tolist() == [by_path[p] for p in decoded.paths]


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    decoded: list[str] = []
    real = cache_module._decode_one

    def counting(args):
        decoded.append(args[0])
        return real(args)

    monkeypatch.setattr(cache_module, "_decode_one", counting)
    return decoded


def _cache_files(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "images").glob("*.npy")}


def test_decode_cache_is_reused_when_nothing_changed(image_folder, tmp_cache_dir, count_decodes):
    samples = scan_image_folder(image_folder()).splits["all"]
    first = decode_images(samples, 20)
    assert len(count_decodes) == len(samples)
    second = decode_images(samples, 20)
    assert len(count_decodes) == len(samples)  # nothing decoded again
    assert np.array_equal(first.pixels, second.pixels)
    assert len(_cache_files(tmp_cache_dir)) == 1


def test_decode_cache_is_invalidated_by_mtime_and_size(image_folder, tmp_cache_dir, count_decodes):
    samples = scan_image_folder(image_folder()).splits["all"]
    decode_images(samples, 20)
    n = len(samples)
    touched = samples[0].path
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decode_images(samples, 20)
    assert len(count_decodes) == 2 * n  # a touched file: a new cache
    edited = samples[1].path
    stat = edited.stat()
    edited.write_bytes(edited.read_bytes() + b"\0")  # bigger file, same mtime
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    decode_images(samples, 20)
    assert len(count_decodes) == 3 * n
    decode_images(samples, 24)  # another target size: another cache
    assert len(count_decodes) == 4 * n
    assert len(_cache_files(tmp_cache_dir)) == 4


def test_no_disk_cache_writes_nothing(image_folder, tmp_cache_dir):
    samples = scan_image_folder(image_folder()).splits["all"]
    decode_images(samples, 20, disk_cache=False)
    assert not _cache_files(tmp_cache_dir)


def test_bounded_map_keeps_order_and_few_jobs_in_flight(monkeypatch):
    """bounded_map = pool.map in order, but never more than MAX_PENDING_JOBS futures at once."""
    from concurrent.futures import ThreadPoolExecutor

    import tlcli.data.decode as decode

    monkeypatch.setattr(decode, "MAX_PENDING_JOBS", 4)
    submitted: list[int] = []
    with ThreadPoolExecutor(2) as pool:
        real_submit = pool.submit

        def counting_submit(fn, *args, **kwargs):
            submitted.append(1)
            return real_submit(fn, *args, **kwargs)

        pool.submit = counting_submit
        results = decode.bounded_map(pool, lambda x: x * x, iter(range(10)))
        assert next(results) == 0
        assert len(submitted) == 4  # the first chunk only, not all 10
        assert [0, *results] == [x * x for x in range(10)]
