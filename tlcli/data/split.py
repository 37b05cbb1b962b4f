"""Stratified, seeded train/val split for folders that come without one; saved in the run dir."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tlcli.data.scan import FolderScan, Sample
from tlcli.errors import DataError

# A class needs one image on each side of the split.
MIN_IMAGES_TO_SPLIT = 2


def stratified_split(
    samples: list[Sample], classes: list[str], val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Per class, hold out round(n * val_fraction) images (at least 1, at most n - 1)."""
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(classes):
        members = sorted((s for s in samples if s.label == label), key=lambda s: str(s.path))
        if len(members) < MIN_IMAGES_TO_SPLIT:
            raise DataError(
                f"class {name!r} has {len(members)} usable image(s): need at least "
                f"{MIN_IMAGES_TO_SPLIT} to split train/val; add images or provide a val/ folder"
            )
        rng.shuffle(members)
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return train, val


def train_val_samples(
    scan: FolderScan, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """The train and val samples of a scan: as given, or split from the flat folder."""
    if scan.layout == "split" and scan.splits.get("val"):
        return scan.splits["train"], scan.splits["val"]
    pool = scan.splits["train"] if scan.layout == "split" else scan.splits["all"]
    return stratified_split(pool, scan.classes, val_fraction, seed)


def save_split(path: Path, root: Path, classes: list[str], splits: dict[str, list[Sample]]) -> None:
    data = {
        "root": str(root),
        "classes": classes,
        "splits": {
            name: [[os.path.relpath(s.path, root), s.label] for s in samples]
            for name, samples in splits.items()
        },
    }
    path.write_text(json.dumps(data, indent=1))


def load_split(path: Path, root: Path) -> tuple[list[str], dict[str, list[Sample]]]:
    data = json.loads(path.read_text())
    splits = {
        name: [Sample(root / rel, int(label)) for rel, label in items]
        for name, items in data["splits"].items()
    }
    return data["classes"], splits
