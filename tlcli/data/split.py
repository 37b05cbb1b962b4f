"""Stratified, seeded train/val split for folders that come without one; saved in the run dir."""

from __future__ import annotations

import json
import os
import random
from collections import Counter, defaultdict
from pathlib import Path

from tlcli.data.scan import FolderScan, Sample
from tlcli.errors import DataError

# A class needs one image on each side of the split.
MIN_IMAGES_TO_SPLIT = 2


def stratified_split(
    samples: list[Sample],
    classes: list[str],
    val_fraction: float,
    seed: int,
    groups: dict[Path, object] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Per class, hold out round(n * val_fraction) images (at least 1, at most n - 1).

    With groups (path -> group id: a near-duplicate cluster, a patient, a video), every image
    of a group lands on the same side: a group counts for its most common class, and whole
    groups are held out, in seeded order, while they fit the class's quota. Without groups
    (or with only singletons) this is the plain per-class split."""
    rng = random.Random(seed)
    units_of_class = _units_by_class(samples, groups or {})
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(classes):
        count = sum(1 for s in samples if s.label == label)
        if count < MIN_IMAGES_TO_SPLIT:
            raise DataError(
                f"class {name!r} has {count} usable image(s): need at least "
                f"{MIN_IMAGES_TO_SPLIT} to split train/val; add images or provide a val/ folder"
            )
        units = units_of_class.get(label, [])
        rng.shuffle(units)
        n = sum(len(u) for u in units)
        n_val = min(max(1, round(n * val_fraction)), n - 1)
        held = 0
        for unit in units:
            if held + len(unit) <= n_val:
                val.extend(unit)
                held += len(unit)
            else:
                train.extend(unit)
    return train, val


def _units_by_class(
    samples: list[Sample], groups: dict[Path, object]
) -> dict[int, list[list[Sample]]]:
    """Samples bundled by group (singletons when ungrouped), each bundle under its most common
    label, bundles sorted by their first path (a stable start for the seeded shuffle)."""
    bundles: dict[object, list[Sample]] = defaultdict(list)
    for s in sorted(samples, key=lambda s: str(s.path)):
        key = groups.get(s.path)
        bundles[("file", str(s.path)) if key is None else ("group", key)].append(s)
    by_class: dict[int, list[list[Sample]]] = defaultdict(list)
    for bundle in bundles.values():
        label = Counter(s.label for s in bundle).most_common(1)[0][0]
        by_class[label].append(bundle)
    for units in by_class.values():
        units.sort(key=lambda u: str(u[0].path))
    return by_class


def kept_together(samples: list[Sample], groups: dict[Path, object]) -> int:
    """How many groups of two or more of these samples a grouped split keeps on one side."""
    sizes = Counter(groups[s.path] for s in samples if groups.get(s.path) is not None)
    return sum(1 for n in sizes.values() if n > 1)


def merge_groups(
    paths: list[Path], named: dict[Path, object], clusters: list[list[int]]
) -> dict[Path, object]:
    """One group id per path from a manifest's groups and near-duplicate clusters (indices
    into paths): a cluster joins every group its members belong to."""
    parent: dict[object, object] = {}

    def find(key: object) -> object:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys = {p: ("group", named[p]) if p in named else ("file", str(p)) for p in paths}
    for members in clusters:
        first = find(keys[paths[members[0]]])
        for i in members[1:]:
            parent[find(keys[paths[i]])] = first
    merged = {p: find(k) for p, k in keys.items()}
    sizes = Counter(merged.values())
    return {p: g for p, g in merged.items() if sizes[g] > 1}


def train_val_samples(
    scan: FolderScan, val_fraction: float, seed: int, groups: dict[Path, object] | None = None
) -> tuple[list[Sample], list[Sample]]:
    """The train and val samples of a scan: as given, or split from the flat folder (each
    group on one side)."""
    if scan.layout == "split" and scan.splits.get("val"):
        return scan.splits["train"], scan.splits["val"]
    pool = scan.splits["train"] if scan.layout == "split" else scan.splits["all"]
    return stratified_split(pool, scan.classes, val_fraction, seed, groups)


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
