"""Did `recommend` pick well? Train head-only, partial and full with default settings (and the
recommended plan when it differs) on each shared dataset and compare val accuracy.

    python bench/recommend_check.py [--datasets hymenoptera clothing_small] [--epochs 5] [--write]
    python bench/make_digits.py /tmp/digits && python bench/recommend_check.py --datasets \
        --folders /tmp/digits --merge /tmp/shared_results.json --write

Every run is the real CLI (`python -m tlcli finetune ... --json`) on the same split and seed,
so the accuracies differ only by strategy. "Picked well" means the recommended plan's val
accuracy is the best or within 1 point of the best.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import measure

from tlcli.config import Config

SECTION = "recommend-check"
WITHIN = 0.01  # "one within 1 point of the best"


def plan_args(strategy: str, stages: int, warmup: int, augment: str) -> list[str]:
    args = ["--strategy", strategy, "--augment", augment]
    if strategy == "partial":
        args += ["--trainable-stages", str(stages)]
    if warmup:
        args += ["--set", f"strategy.head_warmup_epochs={warmup}"]
    return args


def check_dataset(data_dir: Path, model: str, epochs: int, work: Path) -> dict[str, Any]:
    report = measure.run_cli(["recommend", str(data_dir), "--model", model])
    rec = report["recommendation"]
    # Default settings of each strategy (partial: the default --trainable-stages), then the
    # recommended plan itself (strategy, stages, head-first epochs, augmentation) when it is
    # not one of those, all for the same number of epochs.
    default_augment = Config().data.augment
    plans = {
        "head-only": ("head-only", 0, 0, default_augment),
        "partial": ("partial", 2, 0, default_augment),
        "full": ("full", 0, 0, default_augment),
    }
    chosen = (rec["strategy"], rec["trainable_stages"], rec["head_warmup_epochs"], rec["augment"])
    label = next((name for name, plan in plans.items() if plan == chosen), None)
    if label is None:
        label = rec["strategy"]
        if rec["strategy"] == "partial":
            label += f" K={rec['trainable_stages']}"
        if rec["head_warmup_epochs"]:
            label += f", head first {rec['head_warmup_epochs']} ep"
        if rec["augment"] != default_augment:
            label += f", {rec['augment']} augmentation"
        plans[label] = chosen
    runs = {}
    for name, (strategy, stages, warmup, augment) in plans.items():
        out = work / f"{data_dir.name}-{epochs}ep-{strategy}-k{stages}-w{warmup}"
        if augment != default_augment:
            out = out.with_name(f"{out.name}-{augment}")
        if (out / "summary.json").is_file():  # finished in an earlier call with this --work
            summary = json.loads((out / "summary.json").read_text())
            summary["wall_seconds"] = summary["seconds"]
        else:
            args = ["finetune", str(data_dir), "--model", model, "--epochs", str(epochs)]
            plan = plan_args(strategy, stages, warmup, augment)
            summary = measure.run_cli(args + plan + ["--out", str(out)])
        runs[name] = summary
        print(f"{data_dir.name} {name}: val {summary['val_acc']:.4f}", file=sys.stderr)
    best = max(r["val_acc"] for r in runs.values())
    return {
        "recommendation": rec,
        "recommend_seconds": report["seconds"],
        "recommended": label,
        "runs": runs,
        "best": best,
        "picked_well": runs[label]["val_acc"] >= best - WITHIN,
    }


def report(results: dict[str, dict], epochs: int, model: str) -> str:
    lines = [
        "## Does `recommend` pick the best strategy?",
        "",
        f"Machine: {measure.machine_line()}; load average {measure.load_average()} at the end.",
        f"Command: `{measure.command_line()}`",
        "",
        f"Each strategy trained with default settings for {epochs} epochs on {model}; val top-1 "
        "is the best epoch's (the checkpoint `best.pt` keeps). Partial uses the default "
        "`--trainable-stages 2`; the recommended plan (its strategy, stages, head-first epochs "
        "and augmentation, for the same number of epochs) is run as well when it differs.",
        "",
    ]
    rows = []
    for name, r in results.items():
        for label, run in r["runs"].items():
            mark = " (recommended)" if label == r["recommended"] else ""
            rows.append(
                [
                    name,
                    label + mark,
                    f"{run['val_acc']:.4f}",
                    run["best_epoch"],
                    f"{run['wall_seconds']:.0f}",
                ]
            )
    lines.append(
        measure.markdown_table(["dataset", "strategy", "val top-1", "best epoch", "s"], rows)
    )
    lines.append("")
    for name, r in results.items():
        rec = r["recommendation"]
        verdict = "yes" if r["picked_well"] else "no"
        lines.append(
            f"- {name}: recommend ({r['recommend_seconds']:.0f} s) said {rec['size']} + "
            f"{rec['similarity']} -> {r['recommended']}; best {r['best']:.4f}; "
            f"picked the best or within {WITHIN * 100:.0f} point: **{verdict}**."
        )
    return "\n".join(lines)


def main() -> None:
    parser = measure.dataset_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--folders", type=Path, nargs="*", default=[], help="more image folders, by path"
    )
    parser.add_argument("--json-out", type=Path, help="also save the raw results here")
    parser.add_argument("--merge", type=Path, help="a JSON from an earlier --json-out to include")
    parser.add_argument(
        "--work", type=Path, help="keep the run dirs here; finished runs are reused (default: temp)"
    )
    args = parser.parse_args()
    model = measure.model_name(args)
    # Results of datasets measured in an earlier call (its --json-out), shown alongside.
    results = json.loads(args.merge.read_text()) if args.merge else {}
    with tempfile.TemporaryDirectory(prefix="tlcli-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folders = {name: args.shared / measure.DATASETS[name] for name in args.datasets}
        folders |= {folder.name: folder for folder in args.folders}
        for name, data_dir in folders.items():
            results[name] = check_dataset(data_dir, model, args.epochs, work)
            if args.json_out:
                args.json_out.write_text(json.dumps(results, indent=1, default=str))
    markdown = report(results, args.epochs, measure.shown_model(model, args.shared))
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
