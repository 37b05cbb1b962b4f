"""Streaming from the files: the fallback for folders too large to cache.

It must give exactly what the cache gives (pixels, skipped files, a whole training run), be
chosen only when the cache would not fit, and fail in one line when the folder changes under
a running job.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import make_bad_image_folder, make_image_folder
from typer.testing import CliRunner

import tlcli.data.stream as stream
import tlcli.train.loop as loop
from tlcli.cli import app
from tlcli.config import load_config
from tlcli.data.cache import cache_root, decode_images
from tlcli.data.scan import Sample, scan_image_folder
from tlcli.data.stream import StreamedPixels
from tlcli.errors import EXIT_DATA, DataError
from tlcli.train.run import finetune

SIZE = 24
TINY = [
    "model.name=test_resnet",
    "model.pretrained=false",
    "data.image_size=32",
    "data.batch_size=4",
    "data.workers=2",
    "train.device=cpu",
    "train.epochs=2",
    "strategy.name=partial",
    "train.ema=true",
]


def _samples(root: Path) -> list[Sample]:
    return [s for split in scan_image_folder(root, 10**8).splits.values() for s in split]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", {"red": 8, "blue": 8})


def test_streamed_pixels_equal_the_cached_ones(images):
    samples = _samples(images)
    cached = decode_images(samples, SIZE, workers=2, stream="never")
    streamed = decode_images(samples, SIZE, workers=2, stream="always")
    assert cached.streamed is None and streamed.streamed == "data.stream=always"
    assert isinstance(streamed.pixels, StreamedPixels)
    assert streamed.pixels.shape == cached.pixels.shape
    order = np.array([5, 0, 3])
    np.testing.assert_array_equal(streamed.pixels[np.sort(order)], cached.pixels[np.sort(order)])
    np.testing.assert_array_equal(streamed.pixels[np.arange(len(samples))], cached.pixels)
    assert streamed.paths == cached.paths
    np.testing.assert_array_equal(streamed.labels, cached.labels)


def test_streaming_skips_the_files_the_cache_skips(tmp_path):
    root = tmp_path / "bad"
    make_bad_image_folder(root)
    scan = scan_image_folder(root, 10**8)
    samples = [s for split in scan.splits.values() for s in split]
    cached = decode_images(samples, SIZE, stream="never", disk_cache=False)
    streamed = decode_images(samples, SIZE, stream="always")
    assert cached.skipped  # the corpus has files that only fail when decoded
    assert streamed.skipped == cached.skipped
    np.testing.assert_array_equal(streamed.pixels[np.arange(len(streamed))], cached.pixels)


def test_a_streamed_run_equals_a_cached_run(images, tmp_path):
    """The same pixels through the same loop: the same history and weights, bit for bit."""
    cached = finetune(images, load_config(None, [*TINY, "data.stream=never"]), out=tmp_path / "c")
    streamed = finetune(
        images, load_config(None, [*TINY, "data.stream=always"]), out=tmp_path / "s"
    )

    def rows(summary):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in summary["history"]]

    assert rows(streamed) == rows(cached)
    a = torch.load(tmp_path / "c" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "s" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_streams_only_when_the_cache_would_not_fit(images, monkeypatch):
    samples = _samples(images)
    assert decode_images(samples, SIZE).streamed is None  # plenty of room here
    monkeypatch.setattr(stream, "free_disk", lambda folder: 1000)
    assert decode_images(samples, SIZE).streamed is None  # the cache made before is used
    on_disk = decode_images(samples, SIZE + 2)  # no cache yet, and no room for one
    assert on_disk.streamed and "TLCLI_CACHE_DIR" in on_disk.streamed
    assert decode_images(samples, SIZE + 2, stream="never").streamed is None
    monkeypatch.setattr(stream, "available_ram", lambda: 1000)
    in_ram = decode_images(samples, SIZE, disk_cache=False)
    assert in_ram.streamed and "--no-cache" in in_ram.streamed


def test_cli_says_it_streams_and_trains_and_evaluates_the_same(images, tmp_path, monkeypatch):
    real_free_disk = stream.free_disk
    monkeypatch.setattr(stream, "free_disk", lambda folder: 1000)
    run = tmp_path / "run"
    sets = [arg for item in TINY for arg in ("--set", item)]
    result = CliRunner().invoke(app, ["finetune", str(images), *sets, "--out", str(run)])
    assert result.exit_code == 0, result.stderr
    assert "train: streaming the images from their files (the decode cache would" in " ".join(
        result.stderr.split()
    )
    assert not list((cache_root() / "images").glob("*.npy"))  # nothing was cached

    evaluate = ["evaluate", str(run / "best.pt"), str(images), "--json"]
    streamed = CliRunner().invoke(app, evaluate)
    assert streamed.exit_code == 0, streamed.stderr
    assert "streaming the images from their files" in streamed.stderr
    monkeypatch.setattr(stream, "free_disk", real_free_disk)
    cached = CliRunner().invoke(app, evaluate)
    assert "streaming" not in cached.stderr
    a, b = json.loads(streamed.stdout), json.loads(cached.stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # the same predictions and metrics


def test_a_file_removed_during_finetune_names_it_and_how_to_resume(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images", {"red": 8, "blue": 8})
    run = tmp_path / "run"
    victim = sorted(root.rglob("*.png"))[0]
    real_epoch = loop.train_one_epoch

    def delete_after_first_epoch(setup, state, reporter):
        if state.epoch == 1:
            victim.unlink()
        return real_epoch(setup, state, reporter)

    monkeypatch.setattr(loop, "train_one_epoch", delete_after_first_epoch)
    cfg = load_config(None, [*TINY, "data.stream=always", "train.epochs=3"])
    with pytest.raises(DataError) as excinfo:
        finetune(root, cfg, out=run)
    message = excinfo.value.message
    assert str(victim) in message and "\n" not in message
    assert f"{run / 'last.pt'} holds epoch 1" in message and f"--resume {run}" in message
    assert excinfo.value.exit_code == EXIT_DATA


def test_a_file_removed_during_a_run_is_a_one_line_data_error(tmp_path):
    root = make_image_folder(tmp_path / "images", {"red": 4, "blue": 4})
    samples = _samples(root)
    streamed = decode_images(samples, SIZE, stream="always")
    streamed.paths[2].unlink()
    with pytest.raises(DataError) as excinfo:
        streamed.pixels[np.arange(len(streamed))]
    message = excinfo.value.message
    assert str(streamed.paths[2]) in message and "\n" not in message
    assert excinfo.value.exit_code == EXIT_DATA
