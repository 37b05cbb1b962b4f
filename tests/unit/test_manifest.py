"""CSV/JSONL manifests: the same run as the folder they list, and one line for each bad one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from corpus import BAD_MANIFEST_CASES, make_image_folder, make_manifest_images, write_bad_manifest
from typer.testing import CliRunner

from tlcli.cli import app
from tlcli.data.manifest import read_manifest, scan_data
from tlcli.data.split import train_val_samples
from tlcli.errors import EXIT_DATA, DataError

TINY = [
    "--model", "test_resnet", "--no-pretrained", "--image-size", "32", "--batch-size", "8",
    "--device", "cpu", "--workers", "1", "--epochs", "1", "--seed", "3",
]  # fmt: skip
runner = CliRunner()


def write_manifest(folder: Path, path: Path, with_split: bool = False) -> Path:
    """A manifest listing every image of folder, paths relative to the manifest."""
    scan = scan_data(folder)
    rows = [
        {
            "path": Path(s.path).relative_to(path.parent).as_posix(),
            "label": scan.classes[s.label],
            **({"split": split} if with_split else {}),
        }
        for split, samples in scan.splits.items()
        for s in reversed(samples)  # the order of rows must not matter
    ]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_manifest_scan_equals_folder_scan(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"b": 5, "a": 6, "c": 4}, layout="split")
    manifest = write_manifest(folder, tmp_path / "list.csv", with_split=True)
    by_folder, by_manifest = scan_data(folder), read_manifest(manifest)
    assert by_manifest.classes == by_folder.classes == ["a", "b", "c"]
    assert by_manifest.splits == by_folder.splits
    flat = make_image_folder(tmp_path / "flat", {"x": 7, "y": 9})
    flat_manifest = write_manifest(flat, tmp_path / "flat.csv")
    assert train_val_samples(read_manifest(flat_manifest), 0.3, 5) == train_val_samples(
        scan_data(flat), 0.3, 5
    )


def test_jsonl_manifest_with_absolute_paths_and_groups(tmp_path):
    folder = make_image_folder(tmp_path / "data", {"a": 2, "b": 2})
    lines = [
        json.dumps({"path": str(p), "label": p.parent.name, "group": f"g{i % 2}"})
        for i, p in enumerate(sorted(folder.rglob("*.png")))
    ]
    manifest = tmp_path / "elsewhere" / "m.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n")
    scan = read_manifest(manifest)
    assert scan.classes == ["a", "b"] and len(scan.splits["all"]) == 4
    assert sorted(set(scan.groups.values())) == ["g0", "g1"]


def test_finetune_on_a_manifest_equals_the_folder_run(tmp_path):
    """Same split, and on CPU with a seed bit-identical metrics (must-show 4)."""
    folder = make_image_folder(tmp_path / "data", {"a": 8, "b": 8, "c": 6})
    manifest = write_manifest(folder, tmp_path / "data.csv")
    runs = {}
    for name, data in (("folder", folder), ("manifest", manifest)):
        out = tmp_path / name
        result = runner.invoke(
            app, ["finetune", str(data), *TINY, "--strategy", "partial", "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        metrics = list(csv.DictReader((out / "metrics.csv").open()))
        split = json.loads((out / "split.json").read_text())
        runs[name] = (
            {
                name: [[str((Path(split["root"]) / rel).resolve()), y] for rel, y in rows]
                for name, rows in split["splits"].items()
            },
            [{k: v for k, v in row.items() if k != "seconds"} for row in metrics],
        )
    assert runs["manifest"] == runs["folder"]
    assert [row["epoch"] for row in runs["folder"][1]] == ["0", "1"]  # LP-FT's probe, epoch 1


@pytest.mark.parametrize("case", list(BAD_MANIFEST_CASES))
def test_bad_manifest_is_one_line_naming_the_row(case, tmp_path):
    root = make_manifest_images(tmp_path / "data")
    manifest = write_bad_manifest(root, case)
    before = manifest.read_bytes()
    result = runner.invoke(app, ["finetune", str(manifest), *TINY, "--out", str(tmp_path / "r")])
    assert "Traceback" not in result.output
    assert result.exit_code == EXIT_DATA, result.output
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in BAD_MANIFEST_CASES[case][1]:
        assert word in lines[0], (word, lines[0])
    assert manifest.read_bytes() == before
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_unreadable_image_in_a_manifest_is_skipped_and_named(tmp_path):
    root = make_manifest_images(tmp_path / "data")
    (root / "a" / "broken.png").write_text("not an image")
    manifest = root / "m.csv"
    manifest.write_text("path,label\na/a_0.png,a\na/a_1.png,a\na/broken.png,a\nb/b_0.png,b\n")
    scan = read_manifest(manifest)
    assert [Path(s.path).name for s in scan.skipped] == ["broken.png"]
    assert len(scan.splits["all"]) == 3


def test_manifest_that_is_not_there_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_cached_features_take_the_current_labels(tmp_path):
    """The feature cache is keyed by files, not labels: a relabelled manifest of the same files
    reuses the features, with its own labels (it used to get the cached, stale ones)."""
    import numpy as np
    import timm

    from tlcli.config import load_config
    from tlcli.data.augment import PRESETS, BatchAugmenter
    from tlcli.data.cache import DecodedImages
    from tlcli.models import data_spec_of
    from tlcli.progress import NullReporter
    from tlcli.train.head_fit import cached_features

    folder = make_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    paths = sorted(folder.rglob("*.png"))
    model = timm.create_model("test_resnet", pretrained=False, num_classes=2).eval()
    spec = data_spec_of(model, 32)
    pixels = np.zeros((len(paths), spec.cache_size, spec.cache_size, 3), np.uint8)
    augmenter = BatchAugmenter(PRESETS["none"], spec.input_size, spec.mean, spec.std, 2)
    cfg = load_config(None, ["data.image_size=32"])
    cpu = torch.device("cpu")
    first = DecodedImages(pixels, np.array([0, 0, 0, 1, 1, 1]), paths, [])
    relabelled = DecodedImages(pixels, np.array([1, 0, 1, 0, 1, 0]), paths, [])
    feats, labels = cached_features(model, first, augmenter, cpu, cfg, spec, NullReporter(), "t", 0)
    again, new_labels = cached_features(
        model, relabelled, augmenter, cpu, cfg, spec, NullReporter(), "t", 0
    )
    assert torch.equal(feats, again)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1] and new_labels.tolist() == [1, 0, 1, 0, 1, 0]


def test_predict_takes_a_manifest_as_the_files_it_lists(tmp_path):
    """predict MANIFEST: the listed images, in row order, as if given one by one; a bad row is
    the one line naming it, as for finetune."""
    from corpus import make_checkpoint

    folder = make_image_folder(tmp_path / "data", {"a": 3, "b": 3})
    manifest = write_manifest(folder, tmp_path / "list.csv")
    listed = [str(tmp_path / row["path"]) for row in csv.DictReader(manifest.open())]
    ckpt = make_checkpoint(tmp_path / "best.pt", ("a", "b"))
    by_manifest = runner.invoke(app, ["predict", str(ckpt), str(manifest), "--json"])
    assert by_manifest.exit_code == 0, by_manifest.output
    by_files = runner.invoke(app, ["predict", str(ckpt), *listed, "--json"])
    predicted = json.loads(by_manifest.stdout)["predictions"]
    assert [p["path"] for p in predicted] == listed
    assert predicted == json.loads(by_files.stdout)["predictions"]
    bad = write_bad_manifest(make_manifest_images(tmp_path / "bad"), "manifest-missing-file")
    result = runner.invoke(app, ["predict", str(ckpt), str(bad)])
    assert result.exit_code == EXIT_DATA and "Traceback" not in result.output
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "line 3" in line and "b/gone.png does not exist" in line


def test_cv_folds_keep_each_manifest_group_in_one_fold(tmp_path, monkeypatch):
    """finetune --cv: the manifest's groups reach the folds (a patient's images in two folds
    would score the fold on images the other fold's head was trained on)."""
    import tlcli.data.folds as folds

    folder = make_image_folder(tmp_path / "data", {"a": 12, "b": 12}, layout="split")
    scan = scan_data(folder)
    rows = [
        {
            "path": Path(s.path).relative_to(tmp_path).as_posix(),
            "label": scan.classes[s.label],
            "split": split,
            "group": f"patient{i // 3}",  # three images per patient, some across train/val
        }
        for split, samples in scan.splits.items()
        for i, s in enumerate(samples)
    ]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    seen = []
    real = folds.stratified_folds

    def recording(labels, k, seed, groups=None):
        result = real(labels, k, seed, groups)
        seen.append((groups, result))
        return result

    monkeypatch.setattr(folds, "stratified_folds", recording)
    out = tmp_path / "run"
    cv = ["--strategy", "head-only", "--cv", "3", "--out", str(out)]
    result = runner.invoke(app, ["finetune", str(manifest), *TINY, *cv])
    assert result.exit_code == 0, result.output
    ((groups, fold_sets),) = seen
    assert groups is not None and {g[1] for g in groups if g} == {r["group"] for r in rows}
    fold_of = {i: f for f, members in enumerate(fold_sets) for i in members}
    for group in set(groups) - {None}:
        assert len({fold_of[i] for i, g in enumerate(groups) if g == group}) == 1, group
