"""The regret judge: how many points of val accuracy does each way of picking a fine-tuning plan
lose to the best plan on that data? Fixed plans (5 epochs, defaults, LP-FT) on real data sets,
then the pickers: recommend quick, the race (finetune --strategy auto with
strategy.auto_budget=race), always head-only, always partial-2, always full, fastai's fine_tune.

    python bench/recommend_check.py --work /tmp/regret [--datasets ...] [--recipe-work /tmp/recipe]
        [--report-only] [--write]

Every run is the real CLI (`python -m tlcli ... --json`) on the same split and seed. Each result
is written to WORK/results/DATASET--NAME.json when it finishes and reused on a rerun (a run
killed part-way is resumed from its last.pt), so the long cells can go in the background; the
table shows whatever is finished and lists what is not. `--recipe-work` reuses
bench/recipe_check.py's results for the plans both scripts train (head-only, partial K=2 and
full with LP-FT, the same commands). The subsampled sets are manifests in WORK/manifests (the
shared folders are only read).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import measure
from make_digits import write_digits

SECTION = "regret-check"  # the earlier 3-strategy check keeps its section
# (folder under --shared, train images kept per class; 0 = all). In increasing cost.
DATASETS: dict[str, tuple[str | None, int]] = {
    "chest_xray_50": ("data/chest_xray", 50),
    "sign_digits_20": ("data/sign_digits", 20),
    "hymenoptera": ("data/hymenoptera_data", 0),
    "digits": (None, 0),  # bench/make_digits.py, written into WORK/digits
    "sign_digits": ("data/sign_digits", 0),
    "clothing_small": ("data/clothing_small", 0),
    "chest_xray": ("data/chest_xray", 0),
}
# fastai's fine_tune: one epoch with the body frozen, then everything with discriminative LRs
# (fastai: slice(lr/100, lr) over the layer groups; here the top stage x0.5 and each stage
# below x0.5 again: the stem of Lite0's 7 stages gets lr/128), its zero head (no LP-FT) and
# no weight averaging.
FASTAI_FINE_TUNE = [
    "--strategy", "full", "--lr", "1e-3", "--backbone-lr-mult", "0.5", "--layer-decay", "0.5",
    "--set", "strategy.head_warmup_epochs=1", "--set", "train.lp_ft=false",
    "--set", "train.swa_epochs=0", "--set", "train.wise_ft=false",
]  # fmt: skip
PLANS: dict[str, list[str]] = {
    "head-only": ["--strategy", "head-only"],
    "partial-1": ["--strategy", "partial", "--trainable-stages", "1"],
    "partial-2": ["--strategy", "partial", "--trainable-stages", "2"],
    "partial-4": ["--strategy", "partial", "--trainable-stages", "4"],
    "full": ["--strategy", "full"],
    "fastai fine_tune": FASTAI_FINE_TUNE,
}
# bench/recipe_check.py's plan names for the same commands.
RECIPE_PLANS = {"head-only": "head-only", "partial-2": "partial, LP-FT", "full": "full, LP-FT"}
RACE = ["--set", "strategy.auto_budget=race"]  # with --strategy auto, the default
# --set KEY=VALUE given to every tlcli command (--tlcli-set: a smoke test on a tiny model).
EXTRA_SETS: list[str] = []
PICKERS = (
    "recommend quick",
    "recommend race",
    "always head-only",
    "always partial-2",
    "always full",
    "fastai fine_tune",
)


def subsample_manifest(folder: Path, per_class: int, out: Path, seed: int = 0) -> Path:
    """A manifest of `per_class` train images of each class (seeded) and the whole val split."""
    rows = []
    for split in ("train", "val", "validation"):
        if not (folder / split).is_dir():
            continue
        for class_dir in sorted(p for p in (folder / split).iterdir() if p.is_dir()):
            files = sorted(str(p) for p in class_dir.iterdir() if p.is_file())
            if split == "train":
                random.Random(f"{seed}-{class_dir.name}").shuffle(files)
                files = sorted(files[:per_class])
            name = "val" if split == "validation" else split
            rows += [(path, class_dir.name, name) for path in files]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return out


def data_of(name: str, shared: Path, work: Path, make: bool) -> Path:
    folder, per_class = DATASETS[name]
    if folder is None:
        data = work / "digits"
        if make and not data.is_dir():
            write_digits(data)
        return data
    if not per_class:
        return shared / folder
    manifest = work / "manifests" / f"{name}.csv"
    if make and not manifest.is_file():
        subsample_manifest(shared / folder, per_class, manifest)
    return manifest


def run_dir(work: Path, dataset: str, name: str) -> Path:
    return work / "runs" / f"{dataset}--{name.replace(' ', '_')}"


def finetune(data: Path, args: list[str], out: Path, model: str, epochs: int) -> dict[str, Any]:
    """One finetune run (resumed when a killed one left last.pt), its summary and wall time."""
    if (out / "summary.json").is_file() and not (out / ".tlcli-claim").exists():
        summary = json.loads((out / "summary.json").read_text())
        summary["wall_seconds"] = summary["seconds"]
        return summary
    if (out / "last.pt").is_file() and (out / "config.yaml").is_file():
        return measure.run_cli(["finetune", "--resume", str(out)])
    if out.exists():  # a race stopped part-way is not resumed: started again
        shutil.rmtree(out)
    cli = ["finetune", str(data), "--model", model, "--epochs", str(epochs), *args, *EXTRA_SETS]
    return measure.run_cli([*cli, "--out", str(out)])


def plan_result(summary: dict[str, Any]) -> dict[str, Any]:
    keep = ("val_acc", "probe_val_acc", "best_epoch", "best_weights", "strategy")
    return {**{k: summary.get(k) for k in keep}, "wall_seconds": summary["wall_seconds"]}


def quick_pick(report: dict[str, Any]) -> str:
    rec = report["recommendation"]
    if rec["strategy"] == "partial":
        return f"partial-{rec['trainable_stages']}"
    return rec["strategy"]


def race_pick(summary: dict[str, Any]) -> str:
    """The race winner as a fixed plan's name (partial-after-X is partial-K)."""
    race = summary["race"]
    winner = next(p for p in race["plans"] if p["name"] == race["winner"])
    if winner["strategy"] == "partial":
        return f"partial-{winner['trainable_stages']}"
    return winner["strategy"]


def extra_plan(name: str) -> list[str]:
    """A partial-K the pickers chose that is not among PLANS."""
    return ["--strategy", "partial", "--trainable-stages", name.split("-")[1]]


class Results:
    """WORK/results/DATASET--NAME.json, read back on every run (and recipe_check's)."""

    def __init__(self, work: Path, recipe_work: Path | None) -> None:
        self.folder = work / "results"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recipe = recipe_work / "results" if recipe_work else None

    def path(self, dataset: str, name: str) -> Path:
        return self.folder / f"{dataset}--{name}.json"

    def get(self, dataset: str, name: str) -> dict[str, Any] | None:
        path = self.path(dataset, name)
        if path.is_file():
            return json.loads(path.read_text())
        if self.recipe and name in RECIPE_PLANS:
            theirs = self.recipe / f"{dataset}--{RECIPE_PLANS[name]}.json"
            if theirs.is_file():
                result = json.loads(theirs.read_text())
                return {**result, "from": f"recipe_check ({theirs})"}
        return None

    def put(self, dataset: str, name: str, result: dict[str, Any]) -> None:
        self.path(dataset, name).write_text(json.dumps(result, indent=1, default=str))


def measure_dataset(
    dataset: str,
    data: Path,
    results: Results,
    work: Path,
    model: str,
    epochs: int,
    quick_only: bool = False,
) -> None:
    """Everything of one data set not measured yet, the cheap pickers first."""

    def done(name: str, result: dict[str, Any]) -> None:
        results.put(dataset, name, result)
        print(f"{dataset} {name}: {json.dumps(result, default=str)[:200]}", file=sys.stderr)

    if results.get(dataset, "recommend quick") is None:
        report = measure.run_cli(["recommend", str(data), "--model", model, *EXTRA_SETS])
        done("recommend quick", {"pick": quick_pick(report), "seconds": report["seconds"],
                                 "wall_seconds": report["wall_seconds"],
                                 "recommendation": report["recommendation"]})  # fmt: skip
    if quick_only:
        return
    for name, args in PLANS.items():
        if results.get(dataset, name) is None:
            summary = finetune(data, args, run_dir(work, dataset, name), model, epochs)
            done(name, plan_result(summary))
    if results.get(dataset, "recommend race") is None:
        out = run_dir(work, dataset, "race")
        summary = finetune(data, RACE, out, model, epochs)
        race = summary.get("race") or json.loads((out / "race.json").read_text())  # resumed
        summary["race"] = race
        done("recommend race", {**plan_result(summary), "pick": race_pick(summary), "race": race})
    for picker in ("recommend quick", "recommend race"):
        pick = (results.get(dataset, picker) or {}).get("pick")
        if pick and pick not in PLANS and results.get(dataset, pick) is None:
            summary = finetune(data, extra_plan(pick), run_dir(work, dataset, pick), model, epochs)
            done(pick, plan_result(summary))


def picks_of(dataset: str, results: Results) -> dict[str, str | None]:
    fixed = {"always head-only": "head-only", "always partial-2": "partial-2",
             "always full": "full", "fastai fine_tune": "fastai fine_tune"}  # fmt: skip
    picks: dict[str, str | None] = dict(fixed)
    for picker in ("recommend quick", "recommend race"):
        picks[picker] = (results.get(dataset, picker) or {}).get("pick")
    return picks


def regret_table(datasets: list[str], results: Results) -> tuple[list[list[Any]], list[str]]:
    """Per picker: decision accuracy, mean and max regret (points) over the complete data
    sets (every fixed plan and the pick measured), and what was left out."""
    missing: list[str] = []
    regrets: dict[str, list[float]] = {p: [] for p in PICKERS}
    for dataset in datasets:
        accs = {n: r["val_acc"] for n in PLANS if (r := results.get(dataset, n))}
        absent = [n for n in PLANS if n not in accs]
        if absent:
            missing.append(f"{dataset}: {', '.join(absent)}")
            continue
        picks = picks_of(dataset, results)
        for picker in PICKERS:
            pick = picks[picker]
            result = results.get(dataset, pick) if pick else None
            if result is None:
                missing.append(f"{dataset}: {picker}" + (f" (its pick {pick})" if pick else ""))
                continue
            accs.setdefault(pick, result["val_acc"])
        best = max(accs.values())
        for picker in PICKERS:
            pick = picks[picker]
            if pick in accs:
                regrets[picker].append(100 * (best - accs[pick]))
    rows = []
    for picker in PICKERS:
        values = regrets[picker]
        if not values:
            rows.append([picker, "-", "-", "-", 0])
            continue
        hits = sum(1 for v in values if v <= 1e-9)
        rows.append([picker, f"{hits}/{len(values)}", f"{sum(values) / len(values):.2f}",
                     f"{max(values):.2f}", len(values)])  # fmt: skip
    return rows, missing


def fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(datasets: list[str], results: Results, epochs: int, model: str, why: str) -> str:
    lines = [
        "## Regret: what each way of picking a plan loses to the best plan",
        "",
        f"Machine: {measure.machine_line()}; load average {measure.load_average()} at the end "
        "(the 2 cores are shared: wall times are rough).",
        f"Command: `{measure.command_line()}`",
        "",
        f"Each fixed plan trained {epochs} epochs on {model} with the defaults (LP-FT for "
        "partial/full); val top-1 is `best.pt`'s. *Regret* is the best plan's val top-1 minus "
        "the picked plan's, in points; *decision accuracy* counts the data sets where the pick "
        "is a best plan. *recommend race* is `finetune --strategy auto --set "
        "strategy.auto_budget=race`: its pick is scored by the fixed plan's run (as every "
        "picker's is); its own run, the race and the winner continued, is in the last columns. "
        "`chest_xray_50` and `sign_digits_20` keep 50 and 20 train images per class and the "
        "whole val split.",
        "",
    ]
    plan_names = list(PLANS)
    rows = []
    for dataset in datasets:
        picks = picks_of(dataset, results)
        quick = results.get(dataset, "recommend quick") or {}
        race = results.get(dataset, "recommend race") or {}
        alone = results.get(dataset, race.get("pick")) if race.get("pick") else None
        ratio = (
            f"{race['wall_seconds'] / alone['wall_seconds']:.2f}x"
            if race and alone and alone.get("wall_seconds")
            else "-"
        )
        rows.append(
            [dataset]
            + [fmt((results.get(dataset, n) or {}).get("val_acc")) for n in plan_names]
            + [
                f"{picks['recommend quick'] or '-'} ({fmt(quick.get('wall_seconds'), 0)} s)",
                picks["recommend race"] or "-",
                fmt(race.get("val_acc")),
                f"{fmt(race.get('wall_seconds'), 0)} s, {ratio}",
            ]
        )
    header = ["dataset", *plan_names, "quick pick (recommend s)", "race pick", "race run val",
              "race run s, vs winner alone"]  # fmt: skip
    lines.append(measure.markdown_table(header, rows))
    lines.append("")
    table, missing = regret_table(datasets, results)
    lines.append(
        measure.markdown_table(
            ["picker", "decision accuracy", "mean regret", "max regret", "data sets"], table
        )
    )
    lines.append("")
    for dataset in datasets:
        race = (results.get(dataset, "recommend race") or {}).get("race")
        if race:
            notes = "; ".join(race["notes"]) or "no tie"
            lines.append(f"- {dataset} race: winner {race['winner']} (best {race['best']}); "
                         f"{notes}; estimated {race['estimated_seconds']:.0f} s, the race "
                         f"{race['seconds']:.0f} s.")  # fmt: skip
    for dataset in datasets:
        for name in ["recommend quick", *PLANS]:
            source = (results.get(dataset, name) or {}).get("from")
            if source:
                lines.append(f"- {dataset} {name}: reused, {source}.")
    if missing:
        lines.append(f"- not measured ({why}):")
        lines += [f"  - {m}" for m in missing]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=measure.DEFAULT_SHARED)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default=None, help="default: local-dir Lite0 in --shared")
    parser.add_argument("--work", type=Path, required=True, help="run dirs and results")
    parser.add_argument("--recipe-work", type=Path, help="bench/recipe_check.py's --work")
    parser.add_argument("--report-only", action="store_true", help="train nothing new")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--not-run-why", default="no CPU time for it")
    parser.add_argument("--tlcli-set", action="append", default=[], help="KEY=VALUE for all")
    parser.add_argument("--quick-only", action="store_true", help="only recommend quick")
    args = parser.parse_args()
    EXTRA_SETS.extend(arg for kv in args.tlcli_set for arg in ("--set", kv))
    model = measure.model_name(args)
    results = Results(args.work, args.recipe_work)
    if not args.report_only:
        for name in args.datasets:
            data = data_of(name, args.shared, args.work, make=True)
            measure_dataset(name, data, results, args.work, model, args.epochs, args.quick_only)
    shown = measure.shown_model(model, args.shared)
    markdown = report(list(DATASETS), results, args.epochs, shown, args.not_run_why)
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
