"""`tlcli doctor`: which images to look at before training on them.

Out-of-fold class probabilities from k-fold L-BFGS heads on the cached frozen features (the
head-only fit, K times: seconds), then
- likely label issues, ranked by cleanlab's confident learning (Northcutt et al. 2021);
- ambiguous images: the two most likely classes within AMBIGUOUS_MARGIN;
- outliers (out of distribution): far from their nearest neighbours in feature space;
- near-duplicate clusters (the perceptual hashes of `recommend`).
Nothing under the data folder is written, moved or edited.
"""

from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlcli.atomic import holds_files, write_text_atomically
from tlcli.config import Config
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import resolve_workers
from tlcli.data.folds import stratified_folds
from tlcli.data.manifest import scan_data
from tlcli.data.scan import FolderScan
from tlcli.errors import ConfigError, DataError
from tlcli.models import create_model, data_spec_of, pick_device
from tlcli.progress import NullReporter, Reporter
from tlcli.recommend.contact_sheet import Tile, draw_contact_sheet
from tlcli.recommend.measure import hashed_duplicate_groups
from tlcli.train.head_fit import cached_features, out_of_fold_probabilities
from tlcli.train.run import decode_split, report_skipped

DEFAULT_FOLDS = 5
# One weight decay for the out-of-fold heads (the middle of finetune's grid), and fewer L-BFGS
# iterations: probabilities to rank by, not a head to ship (held-out accuracy on clothing_small:
# 0.857 after 50 iterations, 0.858 after 100).
DOCTOR_WEIGHT_DECAY = 1e-3
DOCTOR_MAX_ITER = 100
# Two classes this close in out-of-fold probability: the image could be either.
AMBIGUOUS_MARGIN = 0.1
# Outliers: mean cosine distance to the OUTLIER_NEIGHBOURS nearest images, beyond the median by
# OUTLIER_ROBUST_Z robust standard deviations (1.4826 x the median absolute deviation).
OUTLIER_NEIGHBOURS = 10
OUTLIER_ROBUST_Z = 5.0
MAD_TO_STD = 1.4826
# The contact sheet shows at most this many tiles of each kind.
SHEET_TILES = {"label": 40, "ambiguous": 8, "outlier": 8}
ISSUE_COLUMNS = ("path", "given_label", "suggested_label", "score", "issue", "split")


@dataclass
class DoctorData:
    """The samples doctor looks at: every labelled image of every split."""

    scan: FolderScan
    paths: list[Path]
    labels: np.ndarray
    splits: list[str]


def labelled_images(scan: FolderScan) -> DoctorData:
    entries = [(split, s) for split, samples in scan.splits.items() for s in samples]
    return DoctorData(
        scan,
        [s.path for _, s in entries],
        np.array([s.label for _, s in entries], dtype=np.int64),
        [split for split, _ in entries],
    )


def outlier_scores(features: np.ndarray, neighbours: int = OUTLIER_NEIGHBOURS) -> np.ndarray:
    """Mean cosine distance to the nearest `neighbours` other images (higher: more unusual)."""
    x = torch.from_numpy(features).double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(neighbours, len(x) - 1)
    scores = torch.empty(len(x), dtype=torch.float64)
    for start in range(0, len(x), 1024):  # bounded memory on big folders
        sims = x[start : start + 1024] @ x.T
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -2.0  # not itself
        scores[start : start + len(sims)] = 1.0 - sims.topk(k, dim=1).values.mean(1)
    return scores.numpy()


def outlier_flags(scores: np.ndarray, robust_z: float = OUTLIER_ROBUST_Z) -> np.ndarray:
    """Indices of scores beyond median + robust_z robust standard deviations, highest first."""
    med = float(np.median(scores))
    spread = MAD_TO_STD * float(np.median(np.abs(scores - med)))
    flagged = np.flatnonzero(scores > med + robust_z * max(spread, 1e-12))
    return flagged[np.argsort(-scores[flagged], kind="stable")]


def ambiguous_flags(probs: np.ndarray, exclude: set[int], margin: float = AMBIGUOUS_MARGIN):
    """Indices whose two most likely classes are within `margin`, closest first."""
    top2 = np.sort(probs, axis=1)[:, -2:]
    gaps = top2[:, 1] - top2[:, 0]
    flagged = [i for i in np.flatnonzero(gaps < margin) if int(i) not in exclude]
    return sorted(flagged, key=lambda i: (gaps[i], i)), gaps


def rank_label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices of likely label issues, most likely first; each image's label quality)."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        raise ConfigError(
            "tlcli doctor needs cleanlab; install it with pip install 'tlcli[doctor]'"
        ) from None
    issues = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return np.asarray(issues, dtype=np.int64), get_label_quality_scores(labels, probs)


def count_label_issues(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int
) -> int:
    """Label issues among these images (recommend's sample): doctor's method, in brief."""
    x, y = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    fold_sets = stratified_folds(labels, folds, seed)
    probs, _ = out_of_fold_probabilities(
        x, y, num_classes, fold_sets, DOCTOR_WEIGHT_DECAY, DOCTOR_MAX_ITER
    )
    return len(rank_label_issues(labels, probs)[0])


def group_ids(data: DoctorData, near: list[list[int]]) -> list[object]:
    """One id per image: its near-duplicate cluster, else its manifest group, else None."""
    groups: list[object] = [getattr(data.scan, "groups", {}).get(p) for p in data.paths]
    for k, members in enumerate(near):
        for i in members:
            groups[i] = ("near-duplicate", k)
    return groups


def diagnose(
    data_path: Path,
    cfg: Config,
    folds: int = DEFAULT_FOLDS,
    reporter: Reporter | None = None,
) -> tuple[dict[str, Any], FolderScan]:
    """Everything `tlcli doctor` reports, as plain values (paths relative to the data root),
    and the scan it looked at."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    scan, data = scan_for_doctor(data_path, cfg, folds, reporter)
    workers = resolve_workers(cfg.data.workers)
    _, near = hashed_duplicate_groups([str(p) for p in data.paths], workers, reporter)
    decoded, feats, labels = doctor_features(scan, cfg, reporter)
    kept = {str(p): i for i, p in enumerate(data.paths)}
    rows = np.array([kept[str(p)] for p in decoded.paths])  # decodable images only
    groups = group_ids(data, near)
    fold_sets = stratified_folds(labels.numpy(), folds, cfg.train.seed, [groups[i] for i in rows])

    reporter.start("heads", None, f"fit {folds} L-BFGS heads (out-of-fold)")
    weight_decay = DOCTOR_WEIGHT_DECAY
    probs, fold_acc = out_of_fold_probabilities(
        feats, labels, len(scan.classes), fold_sets, weight_decay, DOCTOR_MAX_ITER
    )
    reporter.finish("heads")
    y = labels.numpy()
    result = {
        "data": str(data_path),
        "root": str(scan.root),
        "classes": scan.classes,
        "num_images": len(y),
        "num_skipped": len(scan.skipped) + len(decoded.skipped),
        "folds": folds,
        "weight_decay": weight_decay,
        "fold_accuracy": fold_acc,
        "out_of_fold_accuracy": float((probs.argmax(1) == y).mean()),
        **flag_images(FlagContext(scan, data, rows, y, probs), feats.numpy()),
        "near_duplicates": near_duplicate_clusters(scan, data, near),
        "seconds": time.perf_counter() - started,
    }
    return result, scan


def scan_for_doctor(
    data_path: Path, cfg: Config, folds: int, reporter: Reporter
) -> tuple[FolderScan, DoctorData]:
    """The scan (its warnings and skipped files reported) and its labelled images; every class
    needs an image per fold."""
    reporter.start("scan", None, "scan images")
    scan = scan_data(data_path, cfg.data.max_pixels, lambda: reporter.advance("scan"))
    reporter.finish("scan")
    for warning in scan.warnings:
        reporter.note(warning, "warning")
    report_skipped(reporter, scan.skipped)
    data = labelled_images(scan)
    counts = np.bincount(data.labels, minlength=len(scan.classes))
    if counts.min() < folds:
        small = scan.classes[int(counts.argmin())]
        raise DataError(
            f"class {small!r} has {int(counts.min())} image(s), fewer than --folds {folds}; "
            "add images or lower --folds"
        )
    return scan, data


def doctor_features(
    scan: FolderScan, cfg: Config, reporter: Reporter
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """(the decoded images, their frozen backbone features, their labels)."""
    model = create_model(cfg.model.name, len(scan.classes), pretrained=cfg.model.pretrained)
    device = pick_device(cfg.train.device)
    model.to(device)
    spec = data_spec_of(model, cfg.data.image_size)
    samples = [s for split in scan.splits.values() for s in split]
    decoded = decode_split(samples, spec, cfg, reporter, "images")
    report_skipped(reporter, decoded.skipped)
    augmenter = BatchAugmenter(PRESETS["none"], spec.input_size, spec.mean, spec.std, 2)
    feats, labels = cached_features(
        model, decoded, augmenter, device, cfg, spec, reporter, "features", 0
    )
    return decoded, feats, labels


@dataclass(frozen=True)
class FlagContext:
    """What a flagged image's entry is read from: row i of the decoded images is image
    rows[i] of data, with label y[i] and out-of-fold probabilities probs[i]."""

    scan: FolderScan
    data: DoctorData
    rows: np.ndarray
    y: np.ndarray
    probs: np.ndarray

    def entry(self, i: int, issue: str, score: float) -> dict[str, Any]:
        r, probs = self.rows[i], self.probs
        return {
            "path": os.path.relpath(self.data.paths[r], self.scan.root),
            "file": str(Path(self.data.paths[r]).resolve()),
            "given_label": self.scan.classes[self.y[i]],
            "suggested_label": self.scan.classes[int(probs[i].argmax())],
            "score": float(score),
            "issue": issue,
            "split": self.data.splits[r],
            "given_prob": float(probs[i, self.y[i]]),
            "suggested_prob": float(probs[i].max()),
        }


def flag_images(where: FlagContext, feats: np.ndarray) -> dict[str, list[dict[str, Any]]]:
    """Label issues (cleanlab), ambiguous images (not already label issues) and outliers."""
    issues, quality = rank_label_issues(where.y, where.probs)
    ambiguous, gaps = ambiguous_flags(where.probs, set(issues.tolist()))
    scores = outlier_scores(feats)
    return {
        "label_issues": [where.entry(int(i), "label", quality[i]) for i in issues],
        "ambiguous": [where.entry(int(i), "ambiguous", gaps[i]) for i in ambiguous],
        "outliers": [where.entry(int(i), "outlier", scores[i]) for i in outlier_flags(scores)],
    }


def near_duplicate_clusters(
    scan: FolderScan, data: DoctorData, near: list[list[int]]
) -> list[dict[str, Any]]:
    return [
        {
            "paths": [os.path.relpath(data.paths[i], scan.root) for i in members],
            "labels": sorted({scan.classes[data.labels[i]] for i in members}),
            "splits": sorted({data.splits[i] for i in members}),
        }
        for members in near
    ]


def flagged(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every flagged image once, label issues first (in rank order), then ambiguous, outliers."""
    seen: set[str] = set()
    out = []
    for kind in ("label_issues", "ambiguous", "outliers"):
        for item in result[kind]:
            if item["path"] not in seen:
                seen.add(item["path"])
                out.append(item)
    return out


def issues_csv(result: dict[str, Any]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=ISSUE_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for item in flagged(result):
        writer.writerow({**item, "score": f"{item['score']:.6f}"})
    return buffer.getvalue()


def sheet_tiles(result: dict[str, Any]) -> list[Tile]:
    tiles = []
    kinds = (("label", "label_issues"), ("ambiguous", "ambiguous"), ("outlier", "outliers"))
    for kind, key in kinds:
        for rank, item in enumerate(result[key][: SHEET_TILES[kind]], start=1):
            head = {
                "label": f"#{rank} label? given {item['given_label']}",
                "ambiguous": f"ambiguous: given {item['given_label']}",
                "outlier": f"outlier: given {item['given_label']}",
            }[kind]
            tiles.append(
                Tile(
                    Path(item["file"]),
                    kind,
                    (
                        head,
                        f"suggested {item['suggested_label']} {item['suggested_prob']:.2f}",
                        Path(item["path"]).name,
                    ),
                )
            )
    return tiles


def check_outside_data(path: Path, result_root: Path, what: str) -> None:
    """Refuse to write under the data folder: doctor never touches a user's files."""
    target, root = Path(path).resolve(), Path(result_root).resolve()
    if target == root or root in target.parents:
        raise ConfigError(f"{what} {path} is inside the data folder {result_root}; write elsewhere")


def check_output_paths(data_path: Path, out: Path | None, relabel: Path | None) -> None:
    """Before any work: outputs must not land in a data folder, over a manifest or a file."""
    data_path = Path(data_path)
    root = data_path if data_path.is_dir() else None
    for path, what in ((out, "--out"), (relabel, "--write-relabel")):
        if path is None:
            continue
        if root is not None:
            check_outside_data(path, root, what)
        elif Path(path).resolve() == data_path.resolve():
            raise ConfigError(f"{what} {path} is the manifest itself; write to a new file")
    if out is not None and holds_files(out):
        raise ConfigError(f"--out {out} exists and is not an empty folder; pass a new one")
    if relabel is not None and Path(relabel).exists():
        raise ConfigError(f"--write-relabel {relabel} exists; pass a new file name")


def write_report(result: dict[str, Any], out: Path) -> dict[str, str]:
    """issues.csv and contact_sheet.png in out (a new or empty folder)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "issues.csv"
    write_text_atomically(csv_path, issues_csv(result))
    title = (
        f"tlcli doctor {result['data']}: {len(result['label_issues'])} label issues (red, "
        f"ranked), {len(result['ambiguous'])} ambiguous (orange), {len(result['outliers'])} "
        "outliers (blue)"
    )
    sheet = draw_contact_sheet(sheet_tiles(result), out / "contact_sheet.png", title)
    return {"issues_csv": str(csv_path), "contact_sheet": str(sheet)}


def relabel_manifest(result: dict[str, Any], scan_rows: list[dict[str, str]], target: Path) -> str:
    """A manifest of every image, label issues first with label = the suggested class (the
    given one kept in `given_label`): review it, then pass it back as DATA."""
    suggestions = {item["file"]: item for item in result["label_issues"]}
    order = {item["file"]: k for k, item in enumerate(result["label_issues"])}
    rows = sorted(scan_rows, key=lambda r: (order.get(r["file"], len(order)), r["file"]))
    buffer = io.StringIO(newline="")
    fields = ["path", "label", "split", "group", "given_label", "issue_score"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        item = suggestions.get(row["file"])
        writer.writerow(
            {
                "path": os.path.relpath(row["file"], target.resolve().parent),
                "label": item["suggested_label"] if item else row["label"],
                "split": row["split"],
                "group": row["group"],
                "given_label": row["label"],
                "issue_score": f"{item['score']:.6f}" if item else "",
            }
        )
    return buffer.getvalue()


def scan_rows(scan: FolderScan) -> list[dict[str, str]]:
    """Every image of a scan as manifest fields (absolute file, label, split, group)."""
    groups = getattr(scan, "groups", {})
    return [
        {
            "file": str(Path(s.path).resolve()),
            "label": scan.classes[s.label],
            "split": "" if split == "all" else split,
            "group": groups.get(s.path, ""),
        }
        for split, samples in scan.splits.items()
        for s in samples
    ]
