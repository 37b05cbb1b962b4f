"""Seeded, stratified K-fold assignment that keeps each group (a near-duplicate cluster, a
patient, a video) inside one fold: the honest estimate for small data (timm #1969), and the
out-of-fold predictions that find label issues."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from tlcli.errors import ConfigError

MIN_FOLDS = 2


def stratified_folds(
    labels: Sequence[int], k: int, seed: int, groups: Sequence[object] | None = None
) -> list[np.ndarray]:
    """k disjoint index arrays covering every row; per class, fold sizes differ by at most one
    when there are no groups. Rows with the same non-None group land in the same fold (then
    a group counts for its most common label)."""
    n = len(labels)
    if k < MIN_FOLDS:
        raise ConfigError(f"--cv {k}: need at least {MIN_FOLDS} folds")
    units: dict[object, list[int]] = defaultdict(list)
    for i in range(n):
        key = groups[i] if groups is not None and groups[i] is not None else ("row", i)
        units[key].append(i)
    by_class: dict[int, list[list[int]]] = defaultdict(list)
    for members in units.values():
        label = Counter(int(labels[i]) for i in members).most_common(1)[0][0]
        by_class[label].append(sorted(members))
    rng = random.Random(seed)
    fold_of = np.empty(n, dtype=np.int64)
    totals = [0] * k
    for label in sorted(by_class):
        class_units = sorted(by_class[label])
        rng.shuffle(class_units)
        in_class = [0] * k
        for members in class_units:
            fold = min(range(k), key=lambda f: (in_class[f], totals[f], f))
            fold_of[members] = fold
            in_class[fold] += len(members)
            totals[fold] += len(members)
    return [np.flatnonzero(fold_of == f) for f in range(k)]
