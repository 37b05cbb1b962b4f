"""Data-parallel finetune: 2 processes on CPU with gloo under torchrun vs 1 process."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tlcli.train.distributed import SINGLE, World, shard_batches

TINY = [
    "--model",
    "test_resnet",
    "--no-pretrained",
    "--strategy",
    "full",
    "--epochs",
    "3",
    "--set",
    "data.image_size=32",
    "--set",
    "data.batch_size=8",
    "--lr",
    "0.01",
    "--backbone-lr-mult",
    "1",
]
# Accuracy of the 2-process run vs the 1-process run on the same split: the same recipe, but a
# different batch partition and augmentation draws, so equal only up to noise.
ACC_TOLERANCE = 0.15
# The line the reporter prints for each epoch (render.format_epoch).
EPOCH_LINE = re.compile(r"^epoch +(\d+) \| train loss", re.MULTILINE)


def test_shard_batches_splits_every_global_batch():
    batches = [np.arange(0, 8), np.arange(8, 16), np.arange(16, 20)]
    parts = [shard_batches(batches, World(rank, 2, rank)) for rank in (0, 1)]
    assert [len(p) for p in parts] == [3, 3]  # same number of steps on every rank
    for i in range(3):
        together = np.concatenate([parts[0][i], parts[1][i]])
        assert sorted(together.tolist()) == batches[i].tolist()
        assert not set(parts[0][i]) & set(parts[1][i])
    assert shard_batches(batches, SINGLE) is batches
    # A global batch too small for two images per rank is dropped on every rank.
    assert len(shard_batches([np.arange(3)], World(0, 2, 0))) == 0


def run_finetune(
    launcher: list[str], data: Path, out: Path, cache: Path, *extra: str
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "TLCLI_CACHE_DIR": str(cache),
        "OMP_NUM_THREADS": "1",
    }
    command = [*launcher, "-m", "tlcli", "finetune", str(data), *TINY, "--out", str(out)]
    proc = subprocess.run(
        [*command, *extra],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def epochs_in(metrics: Path) -> list[int]:
    with metrics.open(newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_process_gloo_matches_one_process(image_folder, tmp_path, tmp_cache_dir):
    data = image_folder(counts={"red": 24, "blue": 24, "green": 24}, side=32)
    one = run_finetune([sys.executable], data, tmp_path / "one", tmp_cache_dir, "--json")
    single = json.loads(one.stdout)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    tensorboard = ("--track", "tensorboard", "--tracking-uri", str(tmp_path / "tb"))
    # Without --json, so that the table and the epoch lines are printed (torchrun passes every
    # rank's stdout and stderr through): rank 0 alone prints them, once.
    two = run_finetune(torchrun, data, tmp_path / "two", tmp_cache_dir, *tensorboard)
    assert two.stdout.count("finetune summary") == 1, two.stdout
    printed = [int(n) for n in EPOCH_LINE.findall(two.stderr)]  # epoch 0: LP-FT's head fit
    assert printed[-3:] == [1, 2, 3] and len(printed) == len(set(printed)), two.stderr
    double = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert double["epochs_run"] == single["epochs_run"] == 3
    assert abs(double["val_acc"] - single["val_acc"]) <= ACC_TOLERANCE
    assert double["val_acc"] >= 0.8  # colour-coded classes: learnable in 3 epochs
    # Files written once, by rank 0: one run dir, one of each file.
    run = tmp_path / "two"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    # One metrics row per epoch, as the 1-process run (epoch 0 there: LP-FT's head fit).
    epochs = epochs_in(run / "metrics.csv")
    assert epochs == epochs_in(tmp_path / "one" / "metrics.csv")
    assert epochs[-3:] == [1, 2, 3] and len(epochs) == len(set(epochs))
    # Tracked by rank 0 alone: one events file, each epoch once.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert len(list((tmp_path / "tb").rglob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(tmp_path / "tb" / "two"))
    events.Reload()
    assert sorted(s.step for s in events.Scalars("val_acc")) == epochs
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])  # unwrapped weights
