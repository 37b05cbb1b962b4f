"""Does `tlcli doctor` find planted label errors? Flip 5% of the train labels, then count.

Per dataset: a CSV manifest in a temp folder lists every image of the real folder (absolute
paths, its split), with 5% of the train labels flipped to another class (seeded). /work/shared
is never touched. `diagnose` (what `tlcli doctor` runs) is called once to fill the feature
cache, then timed on a warm cache. Reported: recall of the flipped files among the top 2N
label issues (N = number flipped), precision at N, wall and CPU time of the warm run.

    python bench/doctor_check.py [--shared ../shared] [--datasets clothing_small sign_digits]
        [--fraction 0.05] [--seed 0] [--write]
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import measure

SECTION = "doctor_check"
DATASETS = {"clothing_small": "data/clothing_small", "sign_digits": "data/sign_digits"}


def flipped_manifest(data_dir: Path, target: Path, fraction: float, seed: int) -> set[str]:
    """Write target (path,label,split) for every image, fraction of train labels flipped;
    returns the flipped files (resolved paths)."""
    from tlcli.data.manifest import scan_data

    scan = scan_data(data_dir)
    rng = random.Random(seed)
    train = scan.splits.get("train", scan.splits.get("all", []))
    flip = set(rng.sample(range(len(train)), round(fraction * len(train))))
    flipped = set()
    rows = []
    for split, samples in scan.splits.items():
        for i, s in enumerate(samples):
            label = scan.classes[s.label]
            if samples is train and i in flip:
                label = rng.choice([c for c in scan.classes if c != label])
                flipped.add(str(Path(s.path).resolve()))
            rows.append([str(Path(s.path).resolve()), label, "" if split == "all" else split])
    with target.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return flipped


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_dataset(data_dir: Path, model: str, fraction: float, seed: int, work: Path) -> dict:
    from tlcli.config import load_config
    from tlcli.recommend.doctor import diagnose

    manifest = work / f"{data_dir.name}-flipped.csv"
    flipped = flipped_manifest(data_dir, manifest, fraction, seed)
    cfg = load_config(None, [f"model.name={model}", "train.device=cpu"])
    diagnose(manifest, cfg, reporter=measure.PhaseTimer())  # fills the feature cache
    load = measure.load_average()
    timer = measure.PhaseTimer()
    cpu, started = cpu_seconds(), time.perf_counter()
    result, _ = diagnose(manifest, cfg, reporter=timer)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    ranked = [item["file"] for item in result["label_issues"]]
    n = len(flipped)
    return {
        "images": result["num_images"],
        "flipped": n,
        "flagged": len(ranked),
        "recall_2n": len(flipped & set(ranked[: 2 * n])) / n,
        "precision_n": len(flipped & set(ranked[:n])) / n,
        "oof_acc": result["out_of_fold_accuracy"],
        "wall": wall,
        "cpu": cpu,
        "phases": dict(timer.seconds),
        "load": load,
    }


def report(results: dict[str, dict], fraction: float, seed: int, model: str) -> str:
    rows = [
        [
            name,
            r["images"],
            r["flipped"],
            r["flagged"],
            f"{r['recall_2n']:.3f}",
            f"{r['precision_n']:.3f}",
            f"{r['oof_acc']:.3f}",
            f"{r['wall']:.1f}",
            f"{r['cpu']:.1f}",
            r["load"],
        ]
        for name, r in results.items()
    ]
    table = measure.markdown_table(
        [
            "dataset",
            "images",
            "flipped (N)",
            "label issues flagged",
            "recall in top 2N",
            "precision at N",
            "out-of-fold acc.",
            "warm wall (s)",
            "warm CPU (s)",
            "load 1-min",
        ],
        rows,
    )
    phases = "; ".join(
        f"{name}: "
        + ", ".join(f"{task} {sec:.1f}s" for task, sec in r["phases"].items() if sec >= 0.5)
        for name, r in results.items()
    )
    return "\n\n".join(
        [
            "## doctor: planted label errors found",
            f"Machine: {measure.machine_line()}.",
            f"Command: `{measure.command_line()}`",
            f"Model `{model}`. {fraction:.0%} of each train split's labels flipped to another "
            f"class (seed {seed}) in a manifest of the whole folder; doctor looks at every "
            "image (all splits), 5 out-of-fold L-BFGS heads, cleanlab's `find_label_issues` "
            "ranked by self-confidence. Recall: flipped files among the first 2N label "
            "issues; precision: flipped files among the first N. Wall and CPU time of a "
            "second run (warm feature and decode caches): scan, duplicate hashing, heads, "
            "cleanlab, outliers.",
            table,
            f"Where the warm run's time goes: {phases}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=measure.DEFAULT_SHARED)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="default: local-dir Lite0 in --shared")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    model = measure.model_name(args)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tlcli-doctor-") as work:
        for name in args.datasets:
            data_dir = args.shared / DATASETS[name]
            results[name] = check_dataset(data_dir, model, args.fraction, args.seed, Path(work))
            print(name, results[name], flush=True)
    markdown = report(results, args.fraction, args.seed, measure.shown_model(model, args.shared))
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
