"""Head-only in seconds: frozen features computed once, a linear head fit by full-batch L-BFGS.

With the backbone frozen, every epoch of the usual loop recomputes the same features. Here
they are computed once (the deterministic eval view, plus optional augmented views), cached
on disk keyed by model, weights, files and transform, and the head, a multinomial logistic
regression, is fit with L-BFGS: the lecture's case for a second-order method (full batch,
deterministic, convex). Weight decay is picked on the validation split.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tlcli.checkpoint import save_atomically
from tlcli.config import Config
from tlcli.data.augment import BatchAugmenter
from tlcli.data.batches import batch_indices, gather
from tlcli.data.cache import DecodedImages, cache_root, files_fingerprint, unwritable_reason
from tlcli.models import DataSpec
from tlcli.progress import Reporter
from tlcli.train.balance import (
    AUTO_CANDIDATES,
    LossBalance,
    balanced_accuracy,
    class_counts,
    loss_balance,
    needs_balance,
)
from tlcli.train.loop import LoopState, top1

# L2 strengths tried on the validation split (per-sample mean loss + wd/2 ||W||^2); the
# range spans "almost unregularised" to "strongly shrunk" for standardized features.
WEIGHT_DECAY_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
LBFGS_MAX_ITER = 300
FEATURE_CACHE_VERSION = 1


@dataclass
class HeadFit:
    weight_decay: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    weight: torch.Tensor  # (C, D) on raw features
    bias: torch.Tensor  # (C,)
    cv: dict[str, Any] | None = None  # --cv K: k-fold accuracy at the chosen weight decay
    temperature: float = 1.0  # the head in the model is (weight, bias) / temperature


def weights_fingerprint(model: nn.Module, skip: set[str]) -> str:
    """Hash of the backbone's tensors: other weights under the same name get another cache."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in skip:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the classifier sees (timm: forward_head with pre_logits=True)."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: DecodedImages,
    augmenter: BatchAugmenter,
    device: torch.device,
    batch_size: int,
    reporter: Reporter,
    task: str,
    views: int = 0,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels): the eval view of each image, then `views` augmented views."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    reporter.start(task, len(images) * (1 + views), "extract features")
    for view in range(1 + views):
        for idx in batch_indices(len(images), batch_size, None):
            batch = gather(images.pixels, idx, device)
            y = torch.from_numpy(images.labels[np.sort(idx)])
            if view == 0:
                x = augmenter.center_crop(batch)
            else:
                x, _ = augmenter(batch, y.to(device), generator)
            feats.append(penultimate(model, x).float().cpu())
            labels.append(y)
            reporter.advance(task, len(idx))
    reporter.finish(task)
    return torch.cat(feats), torch.cat(labels)


def _load_features(path: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (features, labels), or None when absent or unreadable (then extract again)."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        feats, labels = data["features"], data["labels"]
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, TypeError, pickle.PickleError):
        return None  # cut short, corrupt, or not a feature file
    if not (isinstance(feats, torch.Tensor) and isinstance(labels, torch.Tensor)):
        return None
    if len(feats) != rows or len(labels) != rows:
        return None
    return feats, labels


def cached_features(
    model: nn.Module,
    images: DecodedImages,
    augmenter: BatchAugmenter,
    device: torch.device,
    cfg: Config,
    spec: DataSpec,
    reporter: Reporter,
    task: str,
    views: int,
    store: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """extract_features through an on-disk cache keyed by everything that changes them
    (store=False: read it, but do not write to it)."""
    from tlcli.models import classifier_param_names

    head = set(classifier_param_names(model))  # the head is refit: not part of the key
    key_parts = {
        "version": FEATURE_CACHE_VERSION,
        "arch": model.pretrained_cfg.get("architecture"),
        "weights": weights_fingerprint(model, head),
        "files": files_fingerprint(images.paths),
        "spec": spec.to_dict(),
        "augment": repr(augmenter.spec) if views else "eval",
        "views": views,
        "seed": cfg.train.seed,
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_root() / "features" / f"{key}.pt"
    cached = _load_features(path, len(images) * (1 + views)) if cfg.data.cache else None
    if cached is not None:
        reporter.note(f"{task}: features from cache {path.name}")
        # The key holds the files, not their labels: a relabelled manifest reuses the features.
        return cached[0], torch.from_numpy(np.tile(images.labels, 1 + views))
    feats, labels = extract_features(
        model,
        images,
        augmenter,
        device,
        cfg.data.batch_size * 2,
        reporter,
        task,
        views,
        cfg.train.seed,
    )
    if cfg.data.cache and store:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic, with a temp file of its own: tune workers or DDP ranks may fill one key.
        save_atomically(path, {"features": feats, "labels": labels})
    return feats, labels


def feature_cache_writable(cfg: Config, images: DecodedImages, reporter: Reporter) -> bool:
    """Whether extracted features can be saved to the cache (its dir may be read-only, as on
    HPC nodes and in containers: then they stay in RAM). Said in one line, unless the decode
    cache has said so already."""
    if not cfg.data.cache:
        return False
    folder = cache_root() / "features"
    reason = unwritable_reason(folder)
    if reason is not None and images.cache_note is None:
        reporter.note(
            f"cannot write the feature cache in {folder} ({reason}): the features are kept "
            "in RAM only; set TLCLI_CACHE_DIR to a writable folder",
            "warning",
        )
    return reason is None


def fit_logistic_regression(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    weight_decay: float,
    max_iter: int = LBFGS_MAX_ITER,
    balance: LossBalance | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS; returns (W, b), float64.

    balance: class weights in the loss, or a logit adjustment added in the loss only."""
    x = train_x.double()
    class_weight = logit_bias = None
    if balance is not None and balance.class_weight is not None:
        class_weight = balance.class_weight.double()
    if balance is not None and balance.logit_bias is not None:
        logit_bias = balance.logit_bias.double()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        if logit_bias is not None:
            logits = logits + logit_bias
        loss = (
            F.cross_entropy(logits, train_y, weight=class_weight)
            + 0.5 * weight_decay * weight.pow(2).sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def _scores(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[float, float]:
    logits = x.double() @ weight.T + bias
    return F.cross_entropy(logits, y).item(), top1(logits, y)


def fit_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    grid: tuple[float, ...] = WEIGHT_DECAY_GRID,
    balance: LossBalance | None = None,
    max_iter: int = LBFGS_MAX_ITER,
) -> tuple[HeadFit, list[dict[str, float]]]:
    """Pick weight decay on val (accuracy, then loss); fold standardization into (W, b)."""
    mean = train_x.double().mean(0)
    std = train_x.double().std(0).clamp_min(1e-6)
    tx, vx = (train_x.double() - mean) / std, (val_x.double() - mean) / std
    best: HeadFit | None = None
    trials = []
    for wd in grid:
        weight, bias = fit_logistic_regression(
            tx, train_y, num_classes, wd, max_iter, balance=balance
        )
        train_loss, train_acc = _scores(tx, train_y, weight, bias)
        val_loss, val_acc = _scores(vx, val_y, weight, bias)
        trials.append(
            {"weight_decay": wd, "train_acc": train_acc, "val_acc": val_acc, "val_loss": val_loss}
        )
        if best is None or (val_acc, -val_loss) > (best.val_acc, -best.val_loss):
            # Fold the standardization: W (x - m) / s + b = (W / s) x + (b - W m / s).
            raw_w = weight / std
            raw_b = bias - (weight * (mean / std)).sum(1)
            best = HeadFit(wd, train_loss, train_acc, val_loss, val_acc, raw_w, raw_b)
    assert best is not None
    return best, trials


def out_of_fold_probabilities(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    folds: list[np.ndarray],
    weight_decay: float,
    max_iter: int = LBFGS_MAX_ITER,
) -> tuple[np.ndarray, list[float]]:
    """Class probabilities of every row from the head fit on the other folds (fit_head with one
    weight decay), and each fold's accuracy: k-fold estimates and label-issue finding."""
    probs = np.zeros((len(labels), num_classes))
    accuracies = []
    for held in folds:
        rest = np.setdiff1d(np.arange(len(labels)), held)
        hx, hy = features[held], labels[held]
        fit, _ = fit_head(
            features[rest], labels[rest], hx, hy, num_classes, (weight_decay,), max_iter=max_iter
        )
        logits = hx.double() @ fit.weight.T + fit.bias
        probs[held] = torch.softmax(logits, 1).numpy()
        accuracies.append(fit.val_acc)
    return probs, accuracies


def cross_validate(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    k: int,
    seed: int,
    weight_decay: float,
    groups: Sequence[object] | None = None,
) -> dict[str, Any]:
    """K-fold accuracy of the L-BFGS head (stratified, seeded folds): the honest number for a
    small set, where one val split moves by points. Rows with the same group (a patient, a
    near-duplicate cluster; None for none) stay in one fold: across folds they inflate it."""
    from tlcli.data.folds import stratified_folds

    folds = stratified_folds(labels.numpy(), k, seed, groups)
    _, accuracies = out_of_fold_probabilities(features, labels, num_classes, folds, weight_decay)
    return {
        "folds": k,
        "images": len(labels),
        "weight_decay": weight_decay,
        "fold_accuracy": accuracies,
        "fold_sizes": [len(f) for f in folds],
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies, ddof=1)),
    }


def fit_balance_candidates(
    features: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    num_classes: int,
    candidates: tuple[str, ...],
    reporter: Reporter,
) -> tuple[HeadFit, str, list[dict[str, float]]]:
    """A head per balance method on (train_x, train_y, val_x, val_y); the one with the best
    val balanced accuracy, its method, and the weight-decay grid the first method ran."""
    train_x, train_y, val_x, val_y = features
    chosen: tuple[float, HeadFit, str] | None = None
    grid_trials: list[dict[str, float]] = []  # the weight-decay grid, run by the first method
    for method in candidates:
        as_fit = "weights" if method == "sampler" else method
        lb = loss_balance(as_fit, train_y.numpy(), num_classes)
        # The weight decay is picked once, by the first method; the others reuse it (one
        # L-BFGS fit each instead of a grid: auto costs 3 + 2 fits, not 3 x 5).
        grid = (chosen[1].weight_decay,) if chosen is not None else WEIGHT_DECAY_GRID
        fit, trials = fit_head(train_x, train_y, val_x, val_y, num_classes, grid=grid, balance=lb)
        grid_trials = grid_trials or trials
        pred = (val_x.double() @ fit.weight.T + fit.bias).argmax(1)
        score = balanced_accuracy(pred, val_y, num_classes)
        if len(candidates) > 1:
            reporter.note(
                f"balance auto: probe with {method}: val balanced accuracy {score:.4f}, "
                f"top-1 {fit.val_acc:.4f}"
            )
        if chosen is None or score > chosen[0]:
            chosen = (score, fit, method)
    assert chosen is not None
    _, fit, method = chosen
    return fit, method, grid_trials


def report_cross_validation(cv: dict[str, Any], reporter: Reporter) -> None:
    per_fold = ", ".join(f"{a:.3f}" for a in cv["fold_accuracy"])
    reporter.note(
        f"{cv['folds']}-fold cross-validation on {cv['images']} train+val images: accuracy "
        f"{cv['mean']:.4f} +- {cv['std']:.4f} (folds {per_fold})"
    )


def fit_linear_probe(  # noqa: PLR0913 (the feature context: run.py passes it whole)
    model: nn.Module,
    train_data: DecodedImages,
    val_data: DecodedImages,
    augmenter: BatchAugmenter,
    device: torch.device,
    cfg: Config,
    spec: DataSpec,
    reporter: Reporter,
    views: int = 0,
    balance: str = "none",
    temper: bool = False,
    cv_groups: dict[Path, object] | None = None,
) -> tuple[HeadFit, str]:
    """Fit model's classifier in place on frozen features (the weight decay picked on val).

    temper: the head is divided by the temperature (>= 1) that calibrates it on val (LP-FT: the
    argmax, so the probe's accuracy, is unchanged; an over-confident head's few confident
    mistakes on augmented images would otherwise dominate the fine-tune's gradients).

    balance: a method of tlcli.train.balance, or auto: none unless the classes are
    imbalanced, then the method whose probe has the best val balanced accuracy. Returns
    the fit and the method used (the sampler is fit as the weighted loss: full batch).
    cv_groups: path -> group that --cv keeps inside one fold."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise TypeError(f"L-BFGS head fit needs a Linear classifier, got {type(classifier)}")
    store = feature_cache_writable(cfg, train_data, reporter)
    train_x, train_y = cached_features(
        model, train_data, augmenter, device, cfg, spec, reporter, "features-train", views, store
    )
    val_x, val_y = cached_features(
        model, val_data, augmenter, device, cfg, spec, reporter, "features-val", 0, store
    )
    num_classes = classifier.out_features
    counts = class_counts(train_y.numpy(), num_classes)
    if balance == "auto":
        candidates = AUTO_CANDIDATES if needs_balance(counts) else ("none",)
    else:
        candidates = (balance,)
    features = (train_x, train_y, val_x, val_y)
    fit, method, grid_trials = fit_balance_candidates(features, num_classes, candidates, reporter)
    if balance == "auto" and len(candidates) > 1:
        reporter.note(f"balance auto: {method} (best val balanced accuracy of the probe)")
    if temper:
        from tlcli.train.calibration import softening_temperature

        fit.temperature = softening_temperature(val_x.double() @ fit.weight.T + fit.bias, val_y)
    with torch.no_grad():
        classifier.weight.copy_((fit.weight / fit.temperature).to(classifier.weight))
        classifier.bias.copy_((fit.bias / fit.temperature).to(classifier.bias))
    for trial in grid_trials:
        reporter.note(
            f"L-BFGS head, weight decay {trial['weight_decay']:.0e}: "
            f"train {trial['train_acc']:.4f}, val {trial['val_acc']:.4f}"
        )
    if cfg.train.cv_folds:
        fit.cv = cross_validate(
            torch.cat([train_x[: len(train_data)], val_x]),
            torch.cat([train_y[: len(train_data)], val_y]),
            num_classes,
            cfg.train.cv_folds,
            cfg.train.seed,
            fit.weight_decay,
            [(cv_groups or {}).get(p) for p in [*train_data.paths, *val_data.paths]],
        )
        report_cross_validation(fit.cv, reporter)
    return fit, method


def probe_row(fit: HeadFit, epoch: int, seconds: float) -> dict[str, Any]:
    """The history row of an L-BFGS head: its train and val metrics (val loss without
    label smoothing, as the loop's validation)."""
    return {
        "epoch": epoch,
        "train_loss": fit.train_loss,
        "train_acc": fit.train_acc,
        "val_loss": fit.val_loss,
        "val_acc": fit.val_acc,
        "ema_val_loss": None,
        "ema_val_acc": None,
        "lr": None,
        "update_ratio": None,
        "seconds": seconds,
        "head_weight_decay": fit.weight_decay,
        "head_temperature": fit.temperature,
        "cv": fit.cv,
    }


def fit_head_on_features(
    model: nn.Module,
    train_data: DecodedImages,
    val_data: DecodedImages,
    augmenter: BatchAugmenter,
    device: torch.device,
    cfg: Config,
    spec: DataSpec,
    reporter: Reporter,
    cv_groups: dict[Path, object] | None = None,
) -> tuple[LoopState, Any]:
    """Fit model's classifier in place; returns a LoopState with one history row."""
    started = time.perf_counter()
    reporter.note(
        "head-only: features computed once, head fit by full-batch L-BFGS (one pass replaces "
        f"--epochs {cfg.train.epochs}; --set strategy.head_fit=epochs trains it epoch by epoch)"
    )
    fit, balance = fit_linear_probe(
        model,
        train_data,
        val_data,
        augmenter,
        device,
        cfg,
        spec,
        reporter,
        cfg.strategy.head_views,
        cfg.train.balance,
        cv_groups=cv_groups,
    )
    row = probe_row(fit, 1, time.perf_counter() - started)
    reporter.epoch(row)
    state = LoopState(
        epoch=1, step=0, history=[row], best_acc=fit.val_acc, best_epoch=1, balance=balance
    )
    return state, None
