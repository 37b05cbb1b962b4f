"""The 2x2 grid as a pure decision: measured size and similarity in, strategy and reasons out."""

from __future__ import annotations

import dataclasses
from statistics import median

from tlcli.config import Config
from tlcli.data.scan import FolderScan, Sample

# "Little data" is per class (the lecture): below this median of train images per class.
SMALL_PER_CLASS = 150


def auto_strategy(
    cfg: Config, scan: FolderScan, train_samples: list[Sample], model, spec, reporter
) -> tuple[Config, list[str]]:
    counts = [sum(1 for s in train_samples if s.label == i) for i in range(len(scan.classes))]
    per_class = median(counts)
    if per_class < SMALL_PER_CLASS:
        name, reasons = (
            "head-only",
            [
                f"median {per_class:g} train images per class is below {SMALL_PER_CLASS}: "
                "little data, so only the new head is trained"
            ],
        )
    else:
        name, reasons = (
            "partial",
            [
                f"median {per_class:g} train images per class is at least {SMALL_PER_CLASS}: "
                "enough data to retrain the last stages"
            ],
        )
    cfg = dataclasses.replace(cfg, strategy=dataclasses.replace(cfg.strategy, name=name))
    for reason in reasons:
        reporter.note(reason)
    return cfg, reasons
