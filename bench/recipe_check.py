"""Does fine-tuning beat its own linear probe? head-only, partial and full, the old recipe
(zero head, head LR 1e-3, backbone x0.1, 1 warmup epoch) against LP-FT (the defaults), on
every shared set and the digits, with the test split where there is one.

    python bench/recipe_check.py --work /tmp/recipe [--plans ...] [--datasets ...] [--write]

Every run is the real CLI (`python -m tlcli finetune ... --json`, then `tlcli evaluate` on
val and test) on the same split and seed. Each (dataset, plan) result is written to
WORK/results/DATASET--PLAN.json as soon as it finishes and reused on a rerun, so the long
runs can go in the background and be resumed; the table shows whatever is finished.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import measure
from make_digits import write_digits

SECTION = "recipe-check"
# In increasing size (train + val images): the short runs finish first.
DATASETS = {
    "hymenoptera": "data/hymenoptera_data",
    "digits": None,  # bench/make_digits.py, written into --work
    "sign_digits": "data/sign_digits",
    "clothing_small": "data/clothing_small",
    "chest_xray": "data/chest_xray",
}
# Today's recipe before LP-FT, every setting explicit so that new defaults do not leak in.
OLD_RECIPE = [
    "--lr",
    "1e-3",
    "--backbone-lr-mult",
    "0.1",
    "--warmup-epochs",
    "1",
    "--set",
    "train.lp_ft=false",
    "--set",
    "train.swa_epochs=0",
    "--set",
    "train.wise_ft=false",
    "--set",
    "train.balance=none",
]
PLANS = {
    "head-only": ["--strategy", "head-only"],
    "head-only, balance none": ["--strategy", "head-only", "--set", "train.balance=none"],
    "partial, old recipe": ["--strategy", "partial", "--trainable-stages", "2", *OLD_RECIPE],
    "partial, LP-FT": ["--strategy", "partial", "--trainable-stages", "2"],
    "full, old recipe": ["--strategy", "full", *OLD_RECIPE],
    "full, LP-FT": ["--strategy", "full"],
    "partial, LP-FT, balance none": [
        "--strategy",
        "partial",
        "--trainable-stages",
        "2",
        "--set",
        "train.balance=none",
    ],
}
# The balance comparison is only run where the classes are imbalanced.
BALANCE_PLANS = ("head-only, balance none", "partial, LP-FT, balance none")
BALANCE_DATASETS = ("clothing_small",)


def scores(evaluation: dict[str, Any]) -> dict[str, Any]:
    model = evaluation["models"][0]
    summary = model["summary"]
    return {
        "top1": summary["top1"],
        "balanced_accuracy": summary["balanced_accuracy"],
        "ece": summary["ece"],
        "ece_before": summary.get("ece_before_temperature", summary["ece"]),
        "temperature": model.get("temperature", 1.0),
        "n": evaluation["num_images"],
    }


def val_scores(summary: dict[str, Any], best: str, data_dir: Path) -> dict[str, Any]:
    """`tlcli evaluate --split val`; a folder without val/ (the digits: the run made its own
    split) has only the run's own val numbers (no balanced accuracy)."""
    if (data_dir / "val").is_dir() or (data_dir / "validation").is_dir():
        return scores(measure.run_cli(["evaluate", best, str(data_dir), "--split", "val"]))
    return {
        "top1": summary["val_acc"],
        "balanced_accuracy": None,
        "ece": summary.get("val_ece_after"),
        "ece_before": summary.get("val_ece_before"),
        "temperature": summary.get("temperature", 1.0),
        "n": summary["num_val"],
    }


def run_dir(work: Path, data_dir: Path, plan: str) -> Path:
    return work / "runs" / f"{data_dir.name}--{plan.replace(', ', '-').replace(' ', '_')}"


def in_progress(out: Path) -> str | None:
    """'epochs 0-2 done, best val 0.8827': an unfinished run's metrics.csv, for the notes."""
    metrics = out / "metrics.csv"
    if not metrics.is_file():
        return None
    with metrics.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    best = max(float(r["val_acc"]) for r in rows)
    return f"epochs {rows[0]['epoch']}-{rows[-1]['epoch']} done, best val so far {best:.4f}"


def run_plan(data_dir: Path, plan: str, model: str, epochs: int, work: Path) -> dict[str, Any]:
    out = run_dir(work, data_dir, plan)
    if (out / "summary.json").is_file():  # trained in an earlier call, evaluation missing
        summary = json.loads((out / "summary.json").read_text())
        summary["wall_seconds"] = summary["seconds"]
    elif (out / "last.pt").is_file():  # stopped part-way (killed): continue it
        summary = measure.run_cli(["finetune", "--resume", str(out)])
    else:
        args = ["finetune", str(data_dir), "--model", model, "--epochs", str(epochs)]
        summary = measure.run_cli(args + PLANS[plan] + ["--out", str(out)])
    best = str(out / "best.pt")
    result = {
        "plan": plan,
        "val_acc": summary["val_acc"],
        "probe_val_acc": summary.get("probe_val_acc"),
        "best_epoch": summary["best_epoch"],
        "best_weights": summary["best_weights"],
        "wall_seconds": summary["wall_seconds"],
        "val": val_scores(summary, best, data_dir),
    }
    if (data_dir / "test").is_dir():
        test = measure.run_cli(["evaluate", best, str(data_dir), "--split", "test"])
        result["test"] = scores(test)
    return result


def fmt(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report(
    results: dict[str, dict[str, dict]],
    epochs: int,
    model: str,
    unfinished: list[str],
    not_run: Sequence[tuple[str, str]] = (),
    not_run_why: str = "",
) -> str:
    lines = [
        "## Fine-tuning against its own linear probe: old recipe vs LP-FT",
        "",
        f"Machine: {measure.machine_line()}; load average {measure.load_average()} at the end "
        "(the 2 cores are shared: wall times are rough).",
        f"Command: `{measure.command_line()}`",
        "",
        f"{epochs} epochs on {model}. *Old recipe*: a zero head, head LR 1e-3, backbone x0.1, "
        "1 warmup epoch, no averaging, no class balance. *LP-FT*: the defaults (the L-BFGS head "
        "first, epoch 0 a candidate; SWA and WiSE-FT kept only when val improves; "
        "`--balance auto`). Val top-1 is `best.pt`'s; the val split also picked the weight "
        "decay, epoch, averaging and temperature, so the test column is the unbiased one. "
        "ECE (15 bins) before / after temperature scaling: on val the temperature was fit "
        "there, on test it was not.",
        "",
    ]
    rows = []
    for name, plans in results.items():
        for plan, r in plans.items():
            test = r.get("test") or {}
            rows.append(
                [
                    name,
                    plan,
                    fmt(r["val"]["top1"]),
                    fmt(r["val"]["balanced_accuracy"]),
                    fmt(test.get("top1")),
                    fmt(test.get("balanced_accuracy")),
                    f"{fmt(r['val']['ece_before'], 3)} / {fmt(r['val']['ece'], 3)}",
                    f"{fmt(test.get('ece_before'), 3)} / {fmt(test.get('ece'), 3)}"
                    if test
                    else "-",
                    f"{r['best_epoch']} ({r['best_weights']})",
                    fmt(r["wall_seconds"], 0),
                ]
            )
    header = [
        "dataset",
        "plan",
        "val top-1",
        "val bal. acc",
        "test top-1",
        "test bal. acc",
        "val ECE before / after",
        "test ECE before / after",
        "best epoch (weights)",
        "s",
    ]
    lines.append(measure.markdown_table(header, rows))
    lines.append("")
    for name, plans in results.items():
        probe = plans.get("head-only", {}).get("val", {}).get("top1")
        if probe is None:
            continue
        lpft = {p: r["val"]["top1"] for p, r in plans.items() if p.endswith("LP-FT")}
        if lpft:
            ok = all(acc >= probe for acc in lpft.values())
            lines.append(
                f"- {name}: LP-FT partial/full at least head-only's val top-1 ({probe:.4f}): "
                f"**{'yes' if ok else 'no'}** ("
                + ", ".join(f"{p} {a:.4f}" for p, a in lpft.items())
                + ")."
            )
    lines += [f"- not finished when this table was written: {u}." for u in unfinished]
    for name in dict.fromkeys(n for n, _ in not_run):
        plans = [p for n, p in not_run if n == name]
        started = results.get(name) or any(u.startswith(f"{name} ") for u in unfinished)
        shown = "; ".join(plans) if started else "every plan"
        lines.append(f"- not run on {name}: {shown} ({not_run_why}).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=measure.DEFAULT_SHARED)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--plans", nargs="*", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default=None, help="default: local-dir Lite0 in --shared")
    parser.add_argument("--work", type=Path, required=True, help="run dirs and results")
    parser.add_argument("--report-only", action="store_true", help="train nothing new")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument(
        "--not-run-why",
        default="no CPU time for it",
        help="the reason given under the table for each (dataset, plan) never started",
    )
    args = parser.parse_args()
    model = measure.model_name(args)
    (args.work / "results").mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    unfinished: list[str] = []
    not_run: list[tuple[str, str]] = []
    for name in DATASETS:
        if DATASETS[name] is None:
            data_dir = args.work / "digits"
            if not data_dir.is_dir() and name in args.datasets:
                write_digits(data_dir)
        else:
            data_dir = args.shared / DATASETS[name]
        results[name] = {}
        # The requested plans first, in the order given (the long ones can go first and
        # fill the feature cache the head-only fits then reuse), then the table's order.
        for plan in [*args.plans, *(p for p in PLANS if p not in args.plans)]:
            if plan in BALANCE_PLANS and name not in BALANCE_DATASETS:
                continue
            path = args.work / "results" / f"{name}--{plan}.json"
            run = name in args.datasets and plan in args.plans and not args.report_only
            if not path.is_file() and run:
                result = run_plan(data_dir, plan, model, args.epochs, args.work)
                path.write_text(json.dumps(result, indent=1))
                print(f"{name} {plan}: val {result['val_acc']:.4f}", file=sys.stderr, flush=True)
            if path.is_file():
                results[name][plan] = json.loads(path.read_text())
            elif progress := in_progress(run_dir(args.work, data_dir, plan)):
                unfinished.append(f"{name} {plan} ({progress})")
            else:
                not_run.append((name, plan))
    shown = measure.shown_model(model, args.shared)
    markdown = report(results, args.epochs, shown, unfinished, not_run, args.not_run_why)
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
