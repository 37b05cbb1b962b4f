"""Decode and feature caches: the same inputs reuse one cache file; any change gets a new one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import make_bad_image_folder, random_image

import tlcli.data.cache as decode_cache
import tlcli.train.head_fit as head_fit
from tlcli.atomic import temp_prefix
from tlcli.config import Config
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import RowView, cache_root, decode_images
from tlcli.data.scan import Sample, scan_image_folder
from tlcli.models import create_model, data_spec_of
from tlcli.progress import NullReporter

SIZE = 20  # decoded square side: tiny, so decoding is instant
IMAGE_SIZE = 16  # model input for the feature cache tests


def _samples(root: Path) -> list[Sample]:
    paths = sorted(root.rglob("*.png"))
    classes = sorted({p.parent.name for p in paths})
    return [Sample(p, classes.index(p.parent.name)) for p in paths]


def _cache_files(kind: str, suffix: str) -> list[Path]:
    return sorted((cache_root() / kind).glob(f"*{suffix}"))


def _bump_mtime(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def decode_calls(monkeypatch) -> list[int]:
    """Counts real decodes: a cache hit must not decode anything."""
    calls: list[int] = []
    real = decode_cache._decode_all

    def counting(jobs, out, workers, on_advance):
        calls.append(len(jobs))
        return real(jobs, out, workers, on_advance)

    monkeypatch.setattr(decode_cache, "_decode_all", counting)
    return calls


# --- decode cache ----------------------------------------------------------------------------


def test_same_files_reuse_the_decode_cache(image_folder, decode_calls):
    samples = _samples(image_folder())
    first = decode_images(samples, SIZE)
    second = decode_images(samples, SIZE)
    assert len(_cache_files("images", ".npy")) == 1
    assert decode_calls == [len(samples)]  # the second call read the cache
    np.testing.assert_array_equal(first.pixels, second.pixels)


@pytest.mark.parametrize(
    "change",
    ["touch", "content", "add file", "size", "interpolation"],
)
def test_any_change_gets_a_new_decode_cache(image_folder, decode_calls, change):
    root = image_folder()
    samples = _samples(root)
    before = decode_images(samples, SIZE, "bicubic")
    size, interpolation = SIZE, "bicubic"
    if change == "touch":
        _bump_mtime(samples[0].path)
    elif change == "content":
        random_image(np.random.default_rng(99), 1, side=31).save(samples[0].path)
    elif change == "add file":
        extra = samples[0].path.with_name("extra.png")
        random_image(np.random.default_rng(7), 0).save(extra)
        samples = _samples(root)
    elif change == "size":
        size = SIZE + 4
    else:
        interpolation = "nearest"
    after = decode_images(samples, size, interpolation)
    assert len(_cache_files("images", ".npy")) == 2
    assert len(decode_calls) == 2  # decoded again, not read from the old file
    if change == "content":
        assert not np.array_equal(before.pixels[0], after.pixels[0])


@pytest.mark.parametrize("damage", ["empty meta", "cut-short array", "no array header"])
def test_a_damaged_decode_cache_is_decoded_again(image_folder, decode_calls, damage):
    """A cache file cut short (a full disk, a copy of another machine's cache) is a miss."""
    samples = _samples(image_folder())
    first = np.array(decode_images(samples, SIZE).pixels)  # a copy: the file is damaged next
    (array,) = _cache_files("images", ".npy")
    if damage == "empty meta":
        array.with_suffix(".json").write_text("")
    elif damage == "cut-short array":
        os.truncate(array, array.stat().st_size // 2)
    else:
        array.write_bytes(b"not an npy file")
    second = decode_images(samples, SIZE)
    assert len(decode_calls) == 2
    np.testing.assert_array_equal(first, second.pixels)
    assert decode_images(samples, SIZE).pixels.shape == first.shape
    assert len(decode_calls) == 2  # the rewritten cache is whole again


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_mid_decode_leaves_no_temp_file(image_folder, monkeypatch, workers):
    samples = _samples(image_folder(counts={"a": 40, "b": 40}))  # 80: the pool is used
    real, calls = decode_cache._decode_one, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 10:
            raise KeyboardInterrupt
        time.sleep(0.02)  # a real photo takes longer than these tiny images
        return real(job)

    monkeypatch.setattr(decode_cache, "_decode_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decode_images(samples, SIZE, workers=workers)
    assert list((cache_root() / "images").iterdir()) == []
    assert len(calls) < len(samples) / 2  # the queued images were dropped, not decoded


def test_orphaned_temp_files_of_this_host_are_removed(image_folder):
    """A SIGKILLed decode leaves its temp file; the next decode here removes it if its writer
    is gone, and keeps those of a live writer or of another host sharing the cache dir."""
    folder = cache_root() / "images"
    folder.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = folder / f"{temp_prefix(decode_cache.TEMP_TAG, int(done.stdout))}abc.tmp"
    live = folder / f"{temp_prefix(decode_cache.TEMP_TAG, os.getppid())}def.tmp"
    other_host = folder / f".decode.other-host.{int(done.stdout)}.ghi.tmp"
    for path in (dead, live, other_host):
        path.write_bytes(b"half a cache")
    decode_images(_samples(image_folder()), SIZE)
    assert not dead.exists()
    assert live.exists() and other_host.exists()


def test_unreadable_files_leave_the_memory_mapped_cache_uncopied(tmp_path):
    """Skipping a corrupt file must not copy a large cache into RAM: the kept rows are a view
    (RowView) of the memory-mapped file, with the same pixels as a decode into RAM."""
    root = tmp_path / "bad"
    make_bad_image_folder(root)
    scan = scan_image_folder(root, 10**8)
    samples = [s for split in scan.splits.values() for s in split]
    on_disk = decode_images(samples, SIZE)
    in_ram = decode_images(samples, SIZE, disk_cache=False)
    assert on_disk.skipped and on_disk.skipped == in_ram.skipped
    assert isinstance(on_disk.pixels, RowView) and isinstance(on_disk.pixels.base, np.memmap)
    assert on_disk.pixels.shape == (len(on_disk), SIZE, SIZE, 3)
    np.testing.assert_array_equal(np.asarray(on_disk.pixels), np.asarray(in_ram.pixels))
    idx = np.array([0, 2, 3])
    np.testing.assert_array_equal(on_disk.pixels[idx], np.asarray(in_ram.pixels)[idx])
    subset = RowView(on_disk.pixels, [3, 1])  # a view of a view reads the file directly
    assert subset.base is on_disk.pixels.base
    np.testing.assert_array_equal(np.asarray(subset), np.asarray(in_ram.pixels)[[3, 1]])


def test_decode_cache_off_writes_nothing(image_folder):
    decode_images(_samples(image_folder()), SIZE, disk_cache=False)
    assert not (cache_root() / "images").exists()


# --- feature cache ---------------------------------------------------------------------------


@pytest.fixture
def extract_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = head_fit.extract_features

    def counting(model, images, *args, **kwargs):
        calls.append(len(images))
        return real(model, images, *args, **kwargs)

    monkeypatch.setattr(head_fit, "extract_features", counting)
    return calls


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("test_resnet", 2, pretrained=False).eval()


def _features(model, samples, image_size=IMAGE_SIZE, cfg=None):
    spec = data_spec_of(model, image_size)
    images = decode_images(samples, spec.cache_size, spec.interpolation)
    augmenter = BatchAugmenter(PRESETS["standard"], spec.input_size, spec.mean, spec.std, 2)
    return head_fit.cached_features(
        model,
        images,
        augmenter,
        torch.device("cpu"),
        cfg or Config(),
        spec,
        NullReporter(),
        "features-train",
        0,
    )


def test_same_inputs_reuse_the_feature_cache(image_folder, extract_calls):
    samples = _samples(image_folder())
    model = _model(0)
    x1, y1 = _features(model, samples)
    x2, y2 = _features(model, samples)
    assert len(_cache_files("features", ".pt")) == 1
    assert extract_calls == [len(samples)]
    torch.testing.assert_close(x1, x2)
    assert torch.equal(y1, y2)


def test_the_head_is_not_part_of_the_feature_key(image_folder, extract_calls):
    """The head is refit every run: a different head on the same backbone reuses features."""
    samples = _samples(image_folder())
    model = _model(0)
    _features(model, samples)
    with torch.no_grad():
        model.get_classifier().weight.add_(1.0)
    _features(model, samples)
    assert len(extract_calls) == 1


@pytest.mark.parametrize("change", ["weights", "transform", "touch file", "add file"])
def test_any_change_gets_a_new_feature_cache(image_folder, extract_calls, change):
    root = image_folder()
    samples = _samples(root)
    _features(_model(0), samples)
    model, image_size = _model(0), IMAGE_SIZE
    if change == "weights":
        model = _model(1)  # same architecture, other weights
    elif change == "transform":
        image_size = IMAGE_SIZE + 8
    elif change == "touch file":
        _bump_mtime(samples[-1].path)
    else:
        random_image(np.random.default_rng(3), 1).save(samples[-1].path.with_name("new.png"))
        samples = _samples(root)
    _features(model, samples, image_size)
    assert len(_cache_files("features", ".pt")) == 2
    assert len(extract_calls) == 2


def test_feature_cache_off_extracts_every_time(image_folder, extract_calls):
    samples = _samples(image_folder())
    cfg = Config()
    cfg.data.cache = False
    model = _model(0)
    _features(model, samples, cfg=cfg)
    _features(model, samples, cfg=cfg)
    assert len(extract_calls) == 2
    assert not (cache_root() / "features").exists()


@pytest.mark.parametrize("damage", ["empty", "cut short", "wrong rows"])
def test_a_damaged_feature_cache_is_extracted_again(image_folder, extract_calls, damage):
    samples = _samples(image_folder())
    model = _model(0)
    x1, _ = _features(model, samples)
    (path,) = _cache_files("features", ".pt")
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "cut short":
        os.truncate(path, path.stat().st_size // 2)
    else:
        torch.save({"features": x1[:1], "labels": torch.zeros(1)}, path)
    x2, _ = _features(model, samples)
    assert len(extract_calls) == 2
    torch.testing.assert_close(x1, x2)


def test_atomic_writes_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    from tlcli.atomic import write_text_atomically

    old = os.umask(0o022)
    try:
        write_text_atomically(tmp_path / "report.html", "<p>hi</p>")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644


# --- files that change, cache dirs that cannot be written ------------------------------------


def _swap_contents_keeping_mtimes(a: Path, b: Path) -> None:
    """What `cp --preserve=timestamps` or rsync -t of other photos over these does: same
    sizes, same mtimes, other pixels."""
    stats = {p: os.stat(p) for p in (a, b)}
    data = {a: b.read_bytes(), b: a.read_bytes()}
    for path in (a, b):
        path.write_bytes(data[path])
        os.utime(path, ns=(stats[path].st_atime_ns, stats[path].st_mtime_ns))
    assert all(os.stat(p).st_mtime_ns == stats[p].st_mtime_ns for p in (a, b))
    assert all(os.stat(p).st_size == stats[p].st_size for p in (a, b))


def test_contents_swapped_with_the_mtime_kept_are_decoded_again(image_folder, decode_calls):
    """The key has the ctime and inode: a write changes the ctime, which cannot be set back."""
    root = image_folder(counts={"a": 2, "b": 2}, ext=".bmp")  # BMP: equal sizes, same bytes
    samples = _samples_of(root, ".bmp")
    before = np.array(decode_images(samples, SIZE).pixels)
    _swap_contents_keeping_mtimes(samples[0].path, samples[-1].path)
    after = decode_images(samples, SIZE)
    assert len(decode_calls) == 2
    np.testing.assert_array_equal(after.pixels[0], before[-1])
    np.testing.assert_array_equal(after.pixels[-1], before[0])


def _samples_of(root: Path, ext: str) -> list[Sample]:
    paths = sorted(root.rglob(f"*{ext}"))
    classes = sorted({p.parent.name for p in paths})
    return [Sample(p, classes.index(p.parent.name)) for p in paths]


def test_evaluate_scores_swapped_contents_not_the_stale_cache(tmp_path):
    """Red files that now hold blue pixels and vice versa: top-1 falls from 1.0 to 0.0."""
    from corpus import make_image_folder
    from typer.testing import CliRunner

    from tlcli.cli import app

    data = make_image_folder(tmp_path / "data", {"red": 4, "blue": 4}, ext=".bmp")
    run = tmp_path / "run"
    tiny = ["--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--device", "cpu"]
    runner = CliRunner()

    def top1() -> float:
        result = runner.invoke(
            app, ["evaluate", str(run / "best.pt"), str(data), "--json"], catch_exceptions=False
        )
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)["models"][0]["report"]["top1"]

    args = ["finetune", str(data), *tiny, "--strategy", "head-only", "--out", str(run)]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    assert top1() == 1.0
    reds, blues = sorted((data / "red").iterdir()), sorted((data / "blue").iterdir())
    for red, blue in zip(reds, blues, strict=True):
        _swap_contents_keeping_mtimes(red, blue)
    assert top1() == 0.0


def _make_read_only(folder: Path, monkeypatch) -> None:
    """A read-only cache dir (an HPC node's, a container's). chmod stops no write of root's,
    so as root the file system's answer is made explicit, as the corpus does for chmod 000."""
    import errno
    import pathlib
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o555)
    if os.geteuid() != 0:
        return
    real_mkdir, real_mkstemp = pathlib.Path.mkdir, tempfile.mkstemp

    def refuse(path) -> None:
        if Path(os.path.abspath(path)).is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    def mkdir(self, *args, **kwargs):
        if not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        refuse(dir or ".")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.mark.parametrize("before", ["empty", "decoded already"])
def test_a_read_only_cache_dir_falls_back_to_ram_with_one_warning(
    image_folder, tmp_cache_dir, tmp_path, monkeypatch, before
):
    """finetune trains (exit 0) and says so in one line: the decode cache's, or, when the
    decoded images were cached already, the feature cache's."""
    from typer.testing import CliRunner

    from tlcli.cli import app

    data = image_folder(counts={"a": 4, "b": 4})
    tiny = ["--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--device", "cpu",
            "--strategy", "head-only", "--workers", "1"]  # fmt: skip
    runner = CliRunner()
    if before == "decoded already":
        split = ["--set", "strategy.head_fit=epochs", "--epochs", "1"]  # decodes, no features
        args = ["finetune", str(data), *tiny, *split, "--out", str(tmp_path / "r0")]
        assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    cache = tmp_cache_dir / "ro"
    cache.mkdir()
    if before == "decoded already":
        os.rename(tmp_cache_dir / "images", cache / "images")
    monkeypatch.setenv("TLCLI_CACHE_DIR", str(cache))
    _make_read_only(cache, monkeypatch)
    listing = sorted(cache.rglob("*"))
    try:
        args = ["finetune", str(data), *tiny, "--out", str(tmp_path / "r1")]
        result = runner.invoke(app, args, catch_exceptions=False)
    finally:
        os.chmod(cache, 0o755)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert len(warnings) == 1, result.stderr
    kind = "the cache" if before == "empty" else "the feature cache"
    assert f"cannot write {kind} in {cache}" in warnings[0], warnings
    assert "TLCLI_CACHE_DIR" in warnings[0]
    assert sorted(cache.rglob("*")) == listing  # nothing written


def test_an_image_deleted_after_the_scan_is_one_line(image_folder, monkeypatch):
    """Deleted between the scan and the decode: the "folder changed" line, exit 3."""
    from typer.testing import CliRunner

    import tlcli.train.run as run_module
    from tlcli.cli import app
    from tlcli.errors import EXIT_DATA

    data = image_folder(counts={"a": 4, "b": 4})
    victim = sorted((data / "a").iterdir())[0]
    real_scan = run_module.scan_data

    def scan_then_delete(*args, **kwargs):
        scan = real_scan(*args, **kwargs)
        victim.unlink()
        return scan

    monkeypatch.setattr(run_module, "scan_data", scan_then_delete)
    tiny = ["--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--device", "cpu"]
    out = data.parent / "run"
    result = CliRunner().invoke(
        app, ["finetune", str(data), *tiny, "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == EXIT_DATA, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert f"{victim} was in the folder when it was scanned" in lines[-1], lines[-1]
    assert "the folder changed; run the command again" in lines[-1]
    assert not any(out.iterdir()), "the failed run left files: the same --out must work"
