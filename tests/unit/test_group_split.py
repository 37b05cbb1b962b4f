"""Group-aware splits and folds: a near-duplicate cluster (or a manifest group) never crosses
the train/val split or a fold boundary; without groups the split is the plain stratified one."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from corpus import make_image_folder
from PIL import Image
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.data.folds import stratified_folds
from tlcli.data.scan import Sample
from tlcli.data.split import kept_together, merge_groups, stratified_split
from tlcli.errors import ConfigError

TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--epochs", "1", "--strategy", "head-only",
]  # fmt: skip


def _samples(counts: dict[int, int]) -> list[Sample]:
    return [
        Sample(Path(f"c{label}/{i:03d}.png"), label)
        for label, n in counts.items()
        for i in range(n)
    ]


def _plain_split(samples, classes, val_fraction, seed):
    """The split before groups existed, for comparison."""
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(classes)):
        members = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        rng.shuffle(members)
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    return train, val


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_without_groups_is_the_plain_stratified_split(seed):
    samples = _samples({0: 11, 1: 7, 2: 23})
    expected = _plain_split(samples, ["a", "b", "c"], 0.25, seed)
    assert stratified_split(samples, ["a", "b", "c"], 0.25, seed) == expected
    assert stratified_split(samples, ["a", "b", "c"], 0.25, seed, groups={}) == expected


@pytest.mark.parametrize("seed", range(5))
def test_no_group_crosses_the_split(seed):
    samples = _samples({0: 30, 1: 30})
    rng = random.Random(seed)
    # Groups of 2-4 images, some spanning both classes.
    groups = {}
    for g in range(12):
        for s in rng.sample(samples, rng.randint(2, 4)):
            groups.setdefault(s.path, f"g{g}")
    train, val = stratified_split(samples, ["a", "b"], 0.3, seed, groups)
    side = {s.path: "train" for s in train} | {s.path: "val" for s in val}
    assert sorted(side) == sorted(s.path for s in samples)
    for g in set(groups.values()):
        assert len({side[p] for p, gg in groups.items() if gg == g}) == 1, g
    assert Counter(s.label for s in val)[0] >= 1 and Counter(s.label for s in val)[1] >= 1


def test_merge_groups_joins_manifest_groups_through_clusters():
    paths = [Path(f"{i}.png") for i in range(6)]
    named = {paths[0]: "p1", paths[1]: "p1", paths[2]: "p2"}
    merged = merge_groups(paths, named, [[1, 2], [4, 5]])  # 1~2 joins p1 and p2
    assert merged[paths[0]] == merged[paths[1]] == merged[paths[2]]
    assert merged[paths[4]] == merged[paths[5]] != merged[paths[0]]
    assert paths[3] not in merged  # alone: no group
    assert kept_together([Sample(p, 0) for p in paths], merged) == 2


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_disjoint_cover_everything_and_are_stratified(k):
    labels = np.array([0] * 23 + [1] * 11 + [2] * 7)
    folds = stratified_folds(labels, k, seed=3)
    together = np.concatenate(folds)
    assert len(together) == len(labels) == len(set(together.tolist()))
    for label in range(3):
        per_fold = [int((labels[f] == label).sum()) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1, per_fold
    assert [f.tolist() for f in stratified_folds(labels, k, seed=3)] == [f.tolist() for f in folds]


def test_folds_keep_each_group_in_one_fold():
    labels = np.array([0, 1] * 20)
    groups = [f"g{i // 3}" if i < 18 else None for i in range(40)]
    folds = stratified_folds(labels, 4, seed=0, groups=groups)
    fold_of = {int(i): f for f, idx in enumerate(folds) for i in idx}
    for g in {g for g in groups if g}:
        assert len({fold_of[i] for i, gg in enumerate(groups) if gg == g}) == 1


def test_fewer_than_two_folds_is_refused():
    with pytest.raises(ConfigError, match="at least 2 folds"):
        stratified_folds(np.array([0, 1, 0, 1]), 1, seed=0)


def _plant_near_duplicates(root: Path, clusters: int) -> list[list[str]]:
    """Smooth pictures, each saved as a PNG in one class and as a JPEG (a near-duplicate) in
    another: clusters that cross classes."""
    planted = []
    classes = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    for k in range(clusters):
        fx, fy, phase = rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0, 6)
        base = 127 + 120 * np.sin(fx * xx + fy * yy + phase)
        img = Image.fromarray(np.stack([base, base[::-1], base.T], -1).astype(np.uint8))
        first, second = classes[k % 3], classes[(k + 1) % 3]
        img.save(root / first / f"dup{k}.png")
        img.save(root / second / f"dup{k}_copy.jpg", quality=92)
        planted.append([f"{first}/dup{k}.png", f"{second}/dup{k}_copy.jpg"])
    return planted


def _sides(run: Path) -> dict[str, str]:
    split = json.loads((run / "split.json").read_text())
    return {rel: side for side, rows in split["splits"].items() for rel, _ in rows}


def test_finetune_keeps_planted_near_duplicates_on_one_side(tmp_path):
    """Must-show 3: no cluster crosses the split, and the summary says how many it kept."""
    data = make_image_folder(tmp_path / "data", {"a": 10, "b": 10, "c": 10})
    planted = _plant_near_duplicates(data, 8)
    runner = CliRunner()
    result = runner.invoke(app, ["finetune", str(data), *TINY, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    sides = _sides(tmp_path / "run")
    for cluster in planted:
        assert len({sides[rel] for rel in cluster}) == 1, cluster
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["split_groups_kept_together"] == len(planted)
    assert f"split: {len(planted)} group(s) kept on one side" in result.stderr
    assert f"split kept {len(planted)} group(s)" in " ".join(result.stdout.split())

    # The same folder split without grouping: some planted cluster crosses (the test can fail).
    plain = tmp_path / "plain"
    args = [
        "finetune",
        str(data),
        *TINY,
        "--set",
        "data.group_duplicates=false",
        "--out",
        str(plain),
    ]
    assert runner.invoke(app, args).exit_code == 0
    sides = _sides(plain)
    assert any(len({sides[rel] for rel in cluster}) > 1 for cluster in planted)
