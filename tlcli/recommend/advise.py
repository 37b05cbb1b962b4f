"""`recommend` end to end, and `finetune --strategy auto` built on the same measurements."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tlcli.config import Config
from tlcli.data.cache import resolve_workers
from tlcli.data.manifest import scan_data
from tlcli.data.scan import FolderScan, Sample
from tlcli.data.split import train_val_samples
from tlcli.errors import ModelError
from tlcli.progress import NullReporter, Reporter
from tlcli.recommend.decide import Recommendation, Signals, apply_recommendation, decide
from tlcli.recommend.measure import (
    BUDGETS,
    Similarity,
    find_duplicates,
    measure_similarity,
    measure_size,
    to_plain,
)
from tlcli.strategy import model_stages


def signals_from(
    scan: FolderScan,
    train: list[Sample],
    similarity: Similarity | None,
    stage_names: tuple[str, ...],
) -> Signals:
    counts = [sum(1 for s in train if s.label == i) for i in range(len(scan.classes))]
    counts.sort()
    mid = len(counts) // 2
    median = counts[mid] if len(counts) % 2 else (counts[mid - 1] + counts[mid]) / 2
    if similarity is None:
        return Signals(len(scan.classes), len(train), float(median), stage_names)
    return Signals(
        num_classes=len(scan.classes),
        num_train=len(train),
        per_class_median=float(median),
        stage_names=stage_names,
        probe_accuracy=similarity.probe_accuracy,
        num_sampled=similarity.num_sampled,
        logme=similarity.logme,
        stage_probes=tuple((p.stage, p.accuracy) for p in similarity.stage_probes),
        head_max_prob=(similarity.head_confidence or {}).get("mean_max_prob"),
    )


def quick_signals(
    cfg: Config, scan: FolderScan, train_samples: list[Sample], model: Any, reporter: Reporter
) -> tuple[Similarity | None, Signals]:
    """The quick budget's similarity probes (none for a random-init model) and the decision's
    signals: what auto, recommend quick and the race's prior all decide from."""
    stage_names = tuple(s.name for s in model_stages(model)[:-1])
    similarity = None
    if cfg.model.pretrained:
        similarity = measure_similarity(
            cfg.model.name,
            train_samples,
            len(scan.classes),
            BUDGETS["quick"],
            reporter,
            seed=cfg.train.seed,
            workers=resolve_workers(cfg.data.workers),
            disk_cache=cfg.data.cache,
            max_pixels=cfg.data.max_pixels,
            classes=scan.classes,
        )
    return similarity, signals_from(scan, train_samples, similarity, stage_names)


def auto_strategy(
    cfg: Config,
    scan: FolderScan,
    train_samples: list[Sample],
    model: Any,
    spec: Any,
    reporter: Reporter,
) -> tuple[Config, list[str]]:
    """finetune --strategy auto: the quick measurement, then follow the decision."""
    _, signals = quick_signals(cfg, scan, train_samples, model, reporter)
    rec = decide(signals)
    cfg = apply_recommendation(cfg, rec)
    plan = rec.strategy + (
        f" with {cfg.strategy.trainable_stages} stages" if rec.strategy == "partial" else ""
    )
    reporter.note(f"auto strategy: {plan} ({rec.size} data, {rec.similarity})")
    for reason in rec.reasons:
        reporter.note(f"  - {reason}")
    return cfg, rec.reasons


def recommend(
    data_dir: Path,
    cfg: Config,
    candidates: list[str] | None = None,
    budget: str = "quick",
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Measure size, hygiene and similarity; decide; rank candidate backbones if given."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    plan = BUDGETS[budget]
    workers = resolve_workers(cfg.data.workers)
    reporter.start("scan", None, "scan images")
    scan = scan_data(data_dir, cfg.data.max_pixels, lambda: reporter.advance("scan"))
    reporter.finish("scan")
    train, val = train_val_samples(scan, cfg.data.val_split, cfg.train.seed)
    size = measure_size(scan, train, val, plan.header_sample, cfg.train.seed)
    duplicates = find_duplicates(scan, workers, reporter)
    models = [cfg.model.name] + [c for c in (candidates or []) if c != cfg.model.name]
    measured: list[Similarity] = []
    for name in models:
        try:
            measured.append(
                measure_similarity(
                    name,
                    train,
                    len(scan.classes),
                    plan,
                    reporter,
                    cfg.train.seed,
                    workers,
                    cfg.data.cache,
                    cfg.data.max_pixels,
                    cfg.model.pretrained,
                    scan.classes,
                )
            )
        except ModelError:
            if name == cfg.model.name:
                raise
            reporter.note(
                f"candidate {name} skipped: its pretrained weights cannot be had", "warning"
            )
    main = measured[0]
    signals = signals_from(scan, train, main, tuple(main.stage_names))
    rec: Recommendation = decide(signals)
    rec.reasons.extend(hygiene_reasons(duplicates))
    race = None
    if budget == "race":
        from tlcli.recommend.race_runs import recommend_race

        race = recommend_race(data_dir, cfg, reporter, (main, rec, signals, len(train), len(val)))
    return {
        "data_dir": str(data_dir),
        "model": cfg.model.name,
        "budget": budget,
        "size": to_plain(size),
        "duplicates": to_plain(duplicates),
        "similarity": to_plain(main),
        "recommendation": to_plain(asdict(rec)),
        "candidates": candidate_ranking(measured) if len(measured) > 1 else [],
        "race": race,
        "seconds": round(time.perf_counter() - started, 2),
    }


def hygiene_reasons(duplicates: Any) -> list[str]:
    """The reasons the duplicate measurement adds: leakage across the split, label conflicts."""
    reasons = []
    if duplicates.cross_split_groups:
        reasons.append(
            f"{duplicates.cross_split_groups} near-duplicate group(s) cross the train/val(test) "
            "split: validation accuracy will be optimistic; remove the copies from one side"
        )
    if duplicates.label_conflict_groups:
        reasons.append(
            f"{duplicates.label_conflict_groups} picture(s) appear under two different classes "
            "(near-duplicates with different labels): check those labels"
        )
    return reasons


def candidate_ranking(measured: list[Similarity]) -> list[dict[str, Any]]:
    """The backbones by LogME, then probe accuracy, best first."""
    ranking = sorted(measured, key=lambda m: (m.logme, m.probe_accuracy), reverse=True)
    return [
        {
            "model": m.model,
            "logme": m.logme,
            "probe_accuracy": m.probe_accuracy,
            "knn_accuracy": m.knn_accuracy,
            "ms_per_image": 1000 * m.seconds_per_image,
            "rank": i + 1,
        }
        for i, m in enumerate(ranking)
    ]
