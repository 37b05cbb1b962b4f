"""Evaluate checkpoints on a labelled folder or manifest, and write the report.

The models and their probabilities come from inference.py (`load_models`,
`predict_probabilities`); here: which images to score (the split, the model's class index),
the metrics per model and of their ensemble, and the report dir (JSON, CSV, figures, HTML).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlcli.atomic import check_new_dir, write_text_atomically
from tlcli.choices import EVAL_SPLITS as SPLIT_CHOICES
from tlcli.data.manifest import is_manifest, manifest_entries
from tlcli.data.scan import (
    Sample,
    Skipped,
    detect_layout,
    no_readable_images,
    scan_class_folders,
)
from tlcli.errors import CheckpointError, DataError, printable
from tlcli.inference import (
    DEFAULT_BATCH_SIZE,
    MAX_PIXELS,
    LoadedModel,
    Predictions,
    predict_probabilities,
)
from tlcli.metrics import classification_report, expected_calibration_error
from tlcli.progress import NullReporter, Reporter
from tlcli.train.calibration import uncalibrated_probabilities

# Without --split: a held-out test set first; val picked the checkpoint, so it flatters it.
AUTO_SPLIT_ORDER = ("test", "val")
ENSEMBLE = "ensemble"


def select_eval_folders(root: Path, split: str = "auto") -> tuple[str, list[Path], list[str]]:
    """Which folders to evaluate: (split name, class-folder roots, warnings).

    A root with train/val/test folders uses the requested split (auto: test, else val, else all
    of them); a root of class folders is evaluated whole.
    """
    root = Path(root)
    if split not in SPLIT_CHOICES:
        raise DataError(f"--split {split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    # The training rule (a split holds class folders, a class holds images), so a shipped
    # val/ + test/ set is split and a class that happens to be named "val" stays a class.
    layout = detect_layout(root)
    split_dirs = layout.splits
    if layout.kind == "flat":
        if split in ("auto", "all"):
            return "all", [root], []
        raise DataError(
            f"{root} has no {split}/ folder (it holds class folders); "
            "leave out --split to evaluate all of it"
        )
    found = ", ".join(sorted(split_dirs))
    if split == "auto":
        for name in AUTO_SPLIT_ORDER:
            if name in split_dirs:
                return name, [split_dirs[name]], []
        split = "all"
    if split == "all":
        notes = []
        if "train" in split_dirs:
            notes.append("evaluating on images that include train/: accuracy there is optimistic")
        return "all", [split_dirs[s] for s in sorted(split_dirs)], notes
    if split not in split_dirs:
        raise DataError(f"{root} has no {split}/ folder (found: {found}); pick one with --split")
    notes = []
    if split == "train":
        notes.append("evaluating on the training images: accuracy there is optimistic")
    return split, [split_dirs[split]], notes


def labelled_samples(
    folders: Sequence[Path], classes: Sequence[str], reporter: Reporter | None = None
) -> tuple[list[Sample], list[str], list[Skipped], list[str]]:
    """Samples of folders/<class>/* labelled by the model's class index, matched by name.

    Returns (samples, the folder classes found, skipped files, warnings). A folder class the
    model does not know is an error; a subset of the model's classes is fine.
    """
    reporter = reporter or NullReporter()
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    found: list[str] = []
    skipped: list[Skipped] = []
    notes: list[str] = []
    for folder in folders:
        reporter.start("scan", None, f"scan {folder}")
        scan = scan_class_folders(folder, MAX_PIXELS, lambda: reporter.advance("scan"))
        reporter.finish("scan")
        unknown = [c for c in scan.classes if c not in index]
        if unknown:
            raise CheckpointError(
                f"{folder} has class folder(s) the checkpoint does not know: "
                f"{', '.join(unknown)}; it knows: {', '.join(classes)} (rename or remove them)"
            )
        samples += [Sample(s.path, index[scan.classes[s.label]]) for s in scan.splits["all"]]
        found += [c for c in scan.classes if c not in found]
        skipped += scan.skipped
        notes += scan.warnings
    missing = [c for c in classes if c not in found]
    if missing:
        notes.append(f"no images of {', '.join(missing)}: evaluating a subset of the classes")
    return samples, found, skipped, notes


def manifest_eval_samples(
    manifest: Path, split: str, classes: Sequence[str]
) -> tuple[str, list[Sample], list[str], list[Skipped], list[str]]:
    """labelled_samples for a manifest: its rows of the split (auto: test, else val, else all),
    labelled by the model's class index. Returns (split, samples, classes found, skipped,
    warnings)."""
    if split not in SPLIT_CHOICES:
        raise DataError(f"--split {split!r}: expected one of {', '.join(SPLIT_CHOICES)}")
    entries, skipped, has_split = manifest_entries(manifest, MAX_PIXELS)
    present = {s for _, _, s in entries}
    notes = []
    if split == "auto":
        split = next((s for s in AUTO_SPLIT_ORDER if s in present), "all")
    if split != "all" and split not in present:
        raise DataError(
            f"manifest {manifest} has no {split} rows (found: {', '.join(sorted(present))}); "
            "pick one with --split"
        )
    if split in ("all", "train") and "train" in present:
        notes.append("evaluating on images that include train rows: accuracy there is optimistic")
    chosen = [(row, image) for row, image, s in entries if split == "all" or s == split]
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({row.label for row, _ in chosen} - set(index))
    if unknown:
        raise CheckpointError(
            f"{manifest} has label(s) the checkpoint does not know: {', '.join(unknown)}; "
            f"it knows: {', '.join(classes)} (fix the labels)"
        )
    samples = [Sample(image, index[row.label]) for row, image in chosen]
    found = [c for c in classes if c in {row.label for row, _ in chosen}]
    missing = [c for c in classes if c not in found]
    if missing:
        notes.append(f"no images of {', '.join(missing)}: evaluating a subset of the classes")
    return split if has_split else "all", samples, found, skipped, notes


def model_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a classification report, for the side-by-side table."""
    keys = ("top1", "top5", "loss", "balanced_accuracy", "macro_f1", "weighted_f1", "ece")
    summary = {k: report[k] for k in keys}
    summary["ece_before_temperature"] = report.get("ece_before_temperature", report["ece"])
    summary["num_correct"] = round(report["top1"] * report["n"])
    return summary


@dataclass
class Evaluation:
    """The JSON report plus the per-file arrays the report dir's CSV is written from."""

    report: dict[str, Any]
    predictions: Predictions

    @property
    def primary(self) -> str:
        return self.report["primary"]

    def primary_probs(self) -> np.ndarray:
        preds = self.predictions
        return (
            preds.ensemble_probs if self.primary == ENSEMBLE else preds.member_probs[self.primary]
        )

    def primary_report(self) -> dict[str, Any]:
        if self.primary == ENSEMBLE:
            return self.report["ensemble"]["report"]
        return next(m["report"] for m in self.report["models"] if m["name"] == self.primary)


def evaluate_models(
    models: Sequence[LoadedModel],
    data_dir: Path,
    split: str = "auto",
    tta: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "auto",
    workers: int = -1,
    disk_cache: bool = True,
    reporter: Reporter | None = None,
) -> Evaluation:
    """Score each model, and their ensemble when there are several, on a labelled folder.

    models: from `load_models`, so a bad checkpoint is refused before any work starts.
    """
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    classes = models[0].classes
    if is_manifest(data_dir):
        split_name, samples, found, skipped, scan_notes = manifest_eval_samples(
            data_dir, split, classes
        )
        folders, notes = [Path(data_dir)], []
    else:
        split_name, folders, notes = select_eval_folders(data_dir, split)
        samples, found, skipped, scan_notes = labelled_samples(folders, classes, reporter)
    notes += scan_notes
    for note in notes:
        reporter.note(note, "warning")
    preds = predict_probabilities(
        models, samples, device, batch_size, tta, workers, disk_cache, reporter
    )
    skipped += preds.skipped
    for item in skipped:
        reporter.note(f"skipped {item.path}: {item.reason}", "warning")
    if not preds.paths:
        raise no_readable_images(", ".join(map(str, folders)), len(skipped))
    paths = [str(p) for p in preds.paths]
    entries = []
    for loaded in models:
        report = classification_report(
            preds.member_probs[loaded.name], preds.labels, classes, paths
        )
        report["temperature"] = loaded.temperature
        if loaded.temperature != 1.0:  # what the probabilities were before temperature scaling
            raw = uncalibrated_probabilities(preds.member_probs[loaded.name], loaded.temperature)
            report["ece_before_temperature"] = expected_calibration_error(raw, preds.labels)[0]
            # The NLL finetune logged for this epoch (its val_loss is before calibration).
            true_class = raw[np.arange(len(preds.labels)), preds.labels]
            report["loss_before_temperature"] = float(-np.log(np.clip(true_class, 1e-12, 1)).mean())
        entries.append({**loaded.describe(), "summary": model_summary(report), "report": report})
    ensemble = None
    if len(models) > 1:
        report = classification_report(preds.ensemble_probs, preds.labels, classes, paths)
        ensemble = {
            "name": ENSEMBLE,
            "members": [m.name for m in models],
            "combine": "mean of softmax probabilities",
            "summary": model_summary(report),
            "report": report,
        }
    result = {
        "data_dir": str(data_dir),
        "split": split_name,
        "folders": [str(f) for f in folders],
        "num_images": len(paths),
        "classes": classes,
        "folder_classes": found,
        "tta": "hflip" if tta else None,
        "models": entries,
        "ensemble": ensemble,
        "primary": ENSEMBLE if ensemble else entries[0]["name"],
        "skipped": [asdict(s) for s in skipped],
        "warnings": notes,
        "seconds": round(time.perf_counter() - started, 2),
    }
    return Evaluation(result, preds)


def write_predictions_csv(
    path: Path, rows: list[dict[str, Any]], probs: np.ndarray, classes: Sequence[str]
) -> Path:
    """One row per file: the rows' columns, then a probability column per class.

    Names are printable() in every cell: a newline in a file or class name would otherwise
    split a row (or the header) for every line-based reader, and a non-UTF-8 byte could not
    be written as UTF-8 at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    lead = list(rows[0]) if rows else ["path"]
    writer.writerow([printable(c) for c in lead + [f"p_{c}" for c in classes]])
    for row, row_probs in zip(rows, probs, strict=True):
        writer.writerow([printable(row[k]) for k in lead] + [f"{p:.6f}" for p in row_probs])
    write_text_atomically(path, buffer.getvalue())  # a half-written CSV never takes the name
    return path


def write_report_dir(evaluation: Evaluation, out: Path) -> dict[str, str]:
    """report.json, report.html, predictions.csv, confusion_matrix.png and reliability.png in a
    new folder.

    The CSV and the figures are of the primary model: the ensemble when there are several.
    """
    from tlcli.plots import plot_confusion_matrix, plot_reliability_diagram
    from tlcli.report import write_evaluate_report

    out = Path(out)
    check_new_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    report = evaluation.report
    preds = evaluation.predictions
    primary_report = evaluation.primary_report()
    files = {
        "report": out / "report.json",
        "predictions": out / "predictions.csv",
        "confusion_matrix": out / "confusion_matrix.png",
        "reliability": out / "reliability.png",
        "html": out / "report.html",
    }
    probs = evaluation.primary_probs()
    pred = probs.argmax(1)
    rows = []
    for i, path in enumerate(preds.paths):
        row: dict[str, Any] = {
            "path": str(path),
            "true": preds.classes[preds.labels[i]],
            "predicted": preds.classes[pred[i]],
            "confidence": f"{probs[i, pred[i]]:.6f}",
            "correct": int(pred[i] == preds.labels[i]),
        }
        if len(preds.member_probs) > 1:
            for name, member in preds.member_probs.items():
                row[f"predicted[{name}]"] = preds.classes[int(member[i].argmax())]
        rows.append(row)
    write_predictions_csv(files["predictions"], rows, probs, preds.classes)
    title = f"{evaluation.primary} on {report['split']} ({report['num_images']} images)"
    plot_confusion_matrix(
        primary_report["confusion_matrix"],
        preds.classes,
        files["confusion_matrix"],
        title=f"Confusion matrix: {title}",
    )
    plot_reliability_diagram(
        primary_report["reliability"], primary_report["ece"], files["reliability"]
    )
    written = {k: str(v) for k, v in files.items()}
    files["report"].write_text(json.dumps({**report, "files": written}, indent=1))
    write_evaluate_report(out)  # from report.json, as `tlcli report` rebuilds it
    return written
