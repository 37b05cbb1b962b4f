"""Evaluate, ensemble and predict from tlcli checkpoints alone: no network, no config file.

One path turns checkpoint(s) + images into probabilities: each checkpoint rebuilds its model
(`build_model`), images are decoded by the same cache and center crop as finetune's
validation (so `evaluate --split val` reproduces finetune's val accuracy to the image), and
several checkpoints average their softmax probabilities: the lecture's model ensembles and
checkpoint ensembles. `evaluate` scores them on a labelled folder, `predict` ranks labels for
arbitrary files.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.torch_version import TorchVersion

from tlcli.atomic import check_new_dir, check_new_file, write_text_atomically
from tlcli.choices import EVAL_SPLITS as SPLIT_CHOICES
from tlcli.choices import WEIGHT_CHOICES
from tlcli.config import DEFAULT_MAX_PIXELS
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import DecodedImages, RowView, decode_images, resolve_workers
from tlcli.data.manifest import is_manifest, manifest_entries
from tlcli.data.scan import (
    Sample,
    Skipped,
    detect_layout,
    identify_image,
    no_readable_images,
    scan_class_folders,
)
from tlcli.errors import CheckpointError, DataError, printable
from tlcli.metrics import classification_report, expected_calibration_error
from tlcli.models import DataSpec, pick_device
from tlcli.onnx_model import OnnxClassifier, is_onnx_path, open_session, read_contract
from tlcli.progress import NullReporter, Reporter
from tlcli.train.calibration import temperature_of, uncalibrated_probabilities, with_temperature
from tlcli.train.checkpoint import (
    Checkpoint,
    build_model,
    checked_classes,
    checked_data_spec,
    load_checkpoint,
)
from tlcli.train.loop import predict_logits

# Without --split: a held-out test set first; val picked the checkpoint, so it flatters it.
AUTO_SPLIT_ORDER = ("test", "val")
DEFAULT_BATCH_SIZE = 64
DEFAULT_TOP_K = 5
ENSEMBLE = "ensemble"
# Same limit as training (PIL's decompression-bomb threshold), so the same files are refused.
MAX_PIXELS = DEFAULT_MAX_PIXELS


@dataclass
class LoadedModel:
    """A checkpoint rebuilt for inference, with what it needs to preprocess images."""

    path: Path
    name: str  # short label for tables: RUN/best.pt
    model: nn.Module
    weights: str  # "raw" or "ema": the weights actually loaded
    weights_note: str  # why those weights, for the report
    classes: list[str]
    spec: DataSpec
    architecture: str
    trained_val_acc: float | None
    # The checkpoint's calibration temperature (1.0 when it has none), applied inside `model`
    # (logits / T). An ONNX model keeps 1.0 here: its graph divides its logits itself.
    temperature: float = 1.0

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "checkpoint": str(self.path),
            "architecture": self.architecture,
            "input_size": self.spec.input_size,
            "weights": self.weights,
            "weights_note": self.weights_note,
            "trained_val_acc": self.trained_val_acc,
            "temperature": self.temperature,
        }


def _short_name(path: Path) -> str:
    # best.pt / last.pt say nothing alone: the run dir is the useful part of the name.
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _weights_note(ckpt: Checkpoint, requested: str, used: str) -> str:
    has_ema = ckpt.ema_state_dict is not None
    if requested != "best":
        return f"{used} weights (--weights {requested})"
    averaged = ckpt.best_weights
    if isinstance(averaged, str) and averaged not in ("raw", "ema"):  # swa, wise-ft 0.5
        return f"{averaged} weights: the average scored higher on val than every epoch"
    if not has_ema:
        return "raw weights (the run kept no EMA)"
    if used == "ema":
        return "EMA weights: they scored higher on val than the raw ones during training"
    # A tie keeps the raw weights (train.loop picks EMA only when strictly better).
    return "raw weights: the EMA ones scored no higher on val during training"


def load_for_inference(path: Path, weights: str = "best", name: str | None = None) -> LoadedModel:
    """Load a tlcli checkpoint safely (weights_only, never runs pickled code) and rebuild it.

    A `.onnx` file written by `tlcli export` loads too: onnxruntime runs it, and its
    metadata gives the classes and preprocessing (no checkpoint needed).
    """
    if weights not in WEIGHT_CHOICES:
        raise CheckpointError(f"--weights {weights!r}: expected one of {', '.join(WEIGHT_CHOICES)}")
    path = Path(path)
    if is_onnx_path(path):
        return load_onnx_for_inference(path, weights, name)
    with warnings.catch_warnings(), torch.serialization.safe_globals([TorchVersion]):
        # torch warns about pickle protocols before refusing a foreign file: keep one line.
        warnings.simplefilter("ignore")
        # Checkpoints record torch.__version__, a str subclass that weights_only refuses by
        # default; allowing that one harmless class keeps every other global refused.
        payload = load_checkpoint(path)
    ckpt = Checkpoint.from_payload(payload)
    classes = checked_classes(ckpt.classes, path)
    spec = checked_data_spec(ckpt.data, path)
    if weights == "ema" and ckpt.ema_state_dict is None:
        raise CheckpointError(
            f"--weights ema: {path} has no EMA weights; use --weights best, or finetune with --ema"
        )
    temperature = temperature_of(payload, path)
    model, used = build_model(payload, weights, path)
    architecture = ckpt.architecture  # checked by build_model
    model = with_temperature(model, temperature)  # evaluate, predict and export all see it
    val_acc = ckpt.best_val_acc
    if val_acc is not None and not (isinstance(val_acc, int | float) and 0 <= val_acc <= 1):
        raise CheckpointError(
            f"{path} is damaged or was not written by tlcli: its best_val_acc is not an "
            "accuracy; use best.pt or last.pt from a tlcli run dir"
        )
    return LoadedModel(
        path=path,
        name=name or _short_name(path),
        model=model,
        weights=used,
        weights_note=_weights_note(ckpt, weights, used),
        classes=classes,
        spec=spec,
        architecture=architecture,
        trained_val_acc=None if val_acc is None else float(val_acc),
        temperature=temperature,
    )


def load_onnx_for_inference(
    path: Path, weights: str = "best", name: str | None = None
) -> LoadedModel:
    """An exported .onnx as a LoadedModel: its session, and the contract in its metadata."""
    session = open_session(path)
    contract = read_contract(session, path)
    if weights != "best" and weights != contract.weights:
        raise CheckpointError(
            f"--weights {weights}: {path} holds the {contract.weights} weights it was exported "
            "with; leave out --weights, or export the checkpoint with --weights "
            f"{weights}"
        )
    quantized = "" if contract.quantization == "none" else f", {contract.quantization}"
    return LoadedModel(
        path=path,
        name=name or _short_name(path),
        model=OnnxClassifier(session),
        weights=contract.weights,
        weights_note=f"ONNX export of the {contract.weights} weights{quantized}, run by "
        f"onnxruntime (tlcli {contract.version})",
        classes=contract.classes,
        spec=contract.spec,
        architecture=contract.architecture,
        trained_val_acc=contract.trained_val_acc,
    )


def load_models(paths: Sequence[Path], weights: str = "best") -> list[LoadedModel]:
    """Load every checkpoint; an ensemble needs the same classes (any order) in each."""
    if not paths:
        raise CheckpointError("no checkpoint given; pass a best.pt from a tlcli run dir")
    names: list[str] = []
    for path in paths:
        base = _short_name(Path(path))
        names.append(base if base not in names else f"{base}#{len(names) + 1}")
    models = [load_for_inference(p, weights, n) for p, n in zip(paths, names, strict=True)]
    first = models[0]
    for other in models[1:]:
        if set(other.classes) != set(first.classes) or len(other.classes) != len(first.classes):
            raise CheckpointError(
                f"{other.path} knows classes {', '.join(other.classes)} but {first.path} knows "
                f"{', '.join(first.classes)}; ensemble checkpoints trained on the same classes"
            )
    return models


class _Probabilities(nn.Module):
    """Softmax on top of a classifier, so predict_logits' flip view averages probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=-1)


@dataclass
class Predictions:
    """Softmax probabilities per model (columns in `classes` order) for the decoded files."""

    classes: list[str]
    paths: list[Path]
    labels: np.ndarray  # the samples' labels, for the files that decoded
    member_probs: dict[str, np.ndarray]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def ensemble_probs(self) -> np.ndarray:
        """Mean of the members' softmax probabilities (one member: its own)."""
        return np.mean(np.stack(list(self.member_probs.values())), axis=0)


def predict_probabilities(
    models: Sequence[LoadedModel],
    samples: Sequence[Sample],
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
    tta: bool = False,
    workers: int = -1,
    disk_cache: bool = True,
    reporter: Reporter | None = None,
) -> Predictions:
    """Decode samples per distinct preprocessing and run every model on them (eval transform).

    tta adds the horizontally flipped view and averages the two softmax outputs.
    """
    reporter = reporter or NullReporter()
    torch_device = pick_device(device)
    classes = list(models[0].classes)
    decoded: dict[tuple[int, str], DecodedImages] = {}
    for loaded in models:
        key = (loaded.spec.cache_size, loaded.spec.interpolation)
        if key not in decoded:
            reporter.start("decode", len(samples), "decode images")
            decoded[key] = decode_images(
                samples,
                key[0],
                key[1],
                MAX_PIXELS,
                resolve_workers(workers),
                disk_cache,
                lambda n: reporter.advance("decode", n),
            )
            reporter.finish("decode")
            if decoded[key].cache_note:
                reporter.note(decoded[key].cache_note, "warning")
            if decoded[key].streamed:
                reporter.note(f"streaming the images from their files ({decoded[key].streamed})")
    # A file that fails to decode fails at every size; intersect anyway to stay aligned.
    kept = set.intersection(*({str(p) for p in d.paths} for d in decoded.values()))
    first = next(iter(decoded.values()))
    order = [i for i, p in enumerate(first.paths) if str(p) in kept]
    paths = [first.paths[i] for i in order]
    labels = first.labels[order]
    skipped = list(first.skipped)
    if not paths:  # nothing decoded: no model runs, the caller says so in one line
        empty = np.zeros((0, len(classes)))
        return Predictions(classes, [], labels, {m.name: empty for m in models}, skipped)

    member_probs: dict[str, np.ndarray] = {}
    for loaded in models:
        data = decoded[(loaded.spec.cache_size, loaded.spec.interpolation)]
        rows = {str(p): i for i, p in enumerate(data.paths)}
        pixels = data.pixels
        if len(data.paths) != len(paths):
            pixels = RowView(pixels, [rows[str(p)] for p in paths])
        augmenter = BatchAugmenter(
            PRESETS["none"], loaded.spec.input_size, loaded.spec.mean, loaded.spec.std, len(classes)
        )
        wrapped = _Probabilities(loaded.model).to(torch_device)
        task = f"predict-{loaded.name}"
        reporter.start(task, len(paths), f"predict {loaded.name}" + (" (+flip)" if tta else ""))
        probs = predict_logits(
            wrapped,
            pixels,
            augmenter,
            torch_device,
            batch_size,
            on_batch=lambda n, task=task: reporter.advance(task, n),
            hflip=tta,
        )
        reporter.finish(task)
        wrapped.to("cpu")
        column = [loaded.classes.index(c) for c in classes]
        member_probs[loaded.name] = probs.numpy().astype(np.float64)[:, column]
    return Predictions(classes, paths, labels, member_probs, skipped)


# ---------------------------------------------------------------------------------------------
# evaluate: a labelled folder


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


# ---------------------------------------------------------------------------------------------
# predict: any files


def collect_image_files(inputs: Sequence[Path]) -> tuple[list[Path], list[Skipped]]:
    """Files given, every file under folders given (recursively, hidden ones left out) and
    every row of manifests given (.csv/.jsonl, in row order), that look like images by
    content; everything else is reported as skipped. A manifest row that cannot be used at
    all (missing file, empty label, ...) is a DataError naming the row, as for finetune."""
    candidates: list[Path] = []
    skipped: list[Skipped] = []
    for item in inputs:
        item = Path(item)
        if is_manifest(item) and item.is_file():
            entries, unreadable = manifest_entries(item, MAX_PIXELS)[:2]
            candidates += [image for _, image, _ in entries]
            skipped += unreadable
        elif item.is_dir():
            for dirpath, dirnames, filenames in os.walk(item, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                candidates += [
                    Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".")
                ]
        elif item.is_file():
            candidates.append(item)
        else:
            skipped.append(Skipped(str(item), "no such file or folder"))
    files: list[Path] = []
    seen: set[str] = set()
    for path in candidates:
        key = os.path.abspath(path)
        if key in seen:
            continue
        seen.add(key)
        reason = identify_image(path, MAX_PIXELS)
        if reason is None:
            files.append(path)
        else:
            skipped.append(Skipped(str(path), reason))
    return files, skipped


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
