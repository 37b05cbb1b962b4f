"""Predict files: top-k labels for image files, folders and manifests, and the CSV.

A folder is walked by data/scan.py's rules (`image_files_under`), so predict and finetune's
scan agree about hidden files, `__MACOSX`, links and non-image files; a file named on the
command line is used when its content is an image. The probabilities come from
inference.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tlcli.atomic import check_new_file
from tlcli.data.manifest import is_manifest, manifest_entries
from tlcli.data.scan import (
    Sample,
    Skipped,
    identify_image,
    image_files_under,
    no_readable_images,
)
from tlcli.errors import DataError
from tlcli.evaluate import write_predictions_csv
from tlcli.inference import (
    DEFAULT_BATCH_SIZE,
    MAX_PIXELS,
    LoadedModel,
    predict_probabilities,
)
from tlcli.progress import NullReporter, Reporter

DEFAULT_TOP_K = 5
T = TypeVar("T")


def collect_image_files(inputs: Sequence[Path]) -> tuple[list[Path], list[Skipped]]:
    """The images of files given (by content), of folders given (data/scan.py's walk, the one
    finetune's scan makes: recursive, hidden files and `__MACOSX` left out, links to folders
    and broken links named, image extensions only) and of manifests given (.csv/.jsonl, in
    row order); everything else is reported as skipped, each path once. A manifest row that
    cannot be used at all (missing file, empty label, ...) is a DataError naming the row, as
    for finetune."""
    found: list[Path] = []
    skipped: list[Skipped] = []
    for item in inputs:
        item = Path(item)
        if is_manifest(item) and item.is_file():
            entries, unreadable = manifest_entries(item, MAX_PIXELS)[:2]
            found += [image for _, image, _ in entries]
            skipped += unreadable
        elif item.is_dir():
            found += image_files_under(item, MAX_PIXELS, skipped)
        elif item.is_file():
            reason = identify_image(item, MAX_PIXELS)
            if reason is None:
                found.append(item)
            else:
                skipped.append(Skipped(str(item), reason))
        else:
            skipped.append(Skipped(str(item), "no such file or folder"))
    files = first_of_each(found, str)
    used = {os.path.abspath(f) for f in files}  # a file given by name is used, not skipped
    unique = first_of_each(skipped, lambda s: s.path)
    passed_over = [s for s in unique if os.path.abspath(s.path) not in used]
    return files, passed_over


def first_of_each(items: Sequence[T], path_of: Callable[[T], str]) -> list[T]:
    """items in order, without a repeat of a path already seen (a file given twice, or a
    folder and a file in it)."""
    seen: set[str] = set()
    kept = []
    for item in items:
        key = os.path.abspath(path_of(item))
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return kept


def top_k_labels(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """Per row, the k most probable classes with their probabilities, most probable first."""
    k = min(k, len(classes))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [{"class": classes[j], "probability": float(row[j])} for j in idx]
        for row, idx in zip(probs, order, strict=True)
    ]


@dataclass
class FilePredictions:
    """predict's result: the JSON-ready report and the ensemble's probabilities per file."""

    report: dict[str, Any]
    probs: np.ndarray


def predict_files(
    models: Sequence[LoadedModel],
    inputs: Sequence[Path],
    top_k: int = DEFAULT_TOP_K,
    tta: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> FilePredictions:
    """Top-k labels for image files and folders; unreadable files are reported, not fatal."""
    reporter = reporter or NullReporter()
    if top_k < 1:
        raise DataError(f"--top-k {top_k}: expected 1 or more")
    files, skipped = collect_image_files(inputs)
    # One-off files: decoded in RAM, not written to the decode cache.
    preds = predict_probabilities(
        models,
        [Sample(p, 0) for p in files],
        device,
        batch_size,
        tta,
        workers=1,
        disk_cache=False,
        reporter=reporter,
    )
    skipped += preds.skipped
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}", "warning")
    if not preds.paths:
        raise no_readable_images(", ".join(map(str, inputs)), len(skipped))
    probs = preds.ensemble_probs
    ranked = top_k_labels(probs, preds.classes, top_k)
    members = {name: p.argmax(1) for name, p in preds.member_probs.items()}
    predictions = []
    for i, path in enumerate(preds.paths):
        entry: dict[str, Any] = {
            "path": str(path),
            "label": ranked[i][0]["class"],
            "confidence": ranked[i][0]["probability"],
            "top_k": ranked[i],
        }
        if len(members) > 1:
            entry["members"] = {n: preds.classes[int(m[i])] for n, m in members.items()}
        predictions.append(entry)
    report = {
        "models": [m.describe() for m in models],
        "combine": "mean of softmax probabilities" if len(models) > 1 else None,
        "classes": preds.classes,
        "tta": "hflip" if tta else None,
        "predictions": predictions,
        "skipped": [asdict(s) for s in skipped],
    }
    return FilePredictions(report, probs)


def write_prediction_csv(result: FilePredictions, path: Path, force: bool = False) -> Path:
    """predict --csv: path, label, confidence, then one probability column per class."""
    check_new_file(path, force)
    rows = [
        {"path": p["path"], "label": p["label"], "confidence": f"{p['confidence']:.6f}"}
        for p in result.report["predictions"]
    ]
    return write_predictions_csv(path, rows, result.probs, result.report["classes"])
