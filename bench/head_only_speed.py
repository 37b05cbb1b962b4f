"""Head-only: cached features + L-BFGS head vs the epoch loop over the frozen backbone.

Per dataset, in one process, back to back on the same machine:
  (a) `finetune --strategy head-only` with the default head fit (L-BFGS on features) and a
      COLD feature cache: every train and val image goes through the backbone once;
  (b) the same run with `strategy.head_fit=epochs`: the plain epoch loop (augmented train
      pass + val pass per epoch) over the frozen backbone, same epochs, model and data;
  (a') (a) again with the feature cache warm (a rerun on an unchanged folder and model).
The uint8 decode cache is pre-warmed once before (a) and shared by all runs, so JPEG
decoding is excluded from both sides equally (it is a one-time cost of either).
Wall time is the whole `finetune` call (scan, model build, fit or epochs, checkpoints, plot).

    python bench/head_only_speed.py [--shared ../shared] [--epochs 5] [--write]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import measure

SECTION = "head_only_speed"


def head_only_config(model: str, epochs: int, head_fit: str) -> Any:
    from tlcli.config import load_config

    return load_config(
        None,
        [
            f"model.name={model}",
            "strategy.name=head-only",
            f"strategy.head_fit={head_fit}",
            f"train.epochs={epochs}",
            "train.device=cpu",
        ],
    )


def timed_finetune(data_dir: Path, cfg: Any, out: Path) -> dict[str, Any]:
    from tlcli.train.run import finetune

    timer = measure.PhaseTimer()
    load = measure.load_average()
    started = time.perf_counter()
    summary = finetune(data_dir, cfg, out=out, reporter=timer)
    wall = time.perf_counter() - started
    return {"summary": summary, "wall": wall, "timer": timer, "load": load}


def prewarm_decode_cache(data_dir: Path, cfg: Any) -> float:
    """Decode train and val once into the shared uint8 cache; returns the seconds it took."""
    from tlcli.progress import NullReporter
    from tlcli.train.run import prepare_job

    started = time.perf_counter()
    prepare_job(data_dir, cfg, NullReporter())
    return time.perf_counter() - started


def bench_dataset(name: str, data_dir: Path, model: str, epochs: int, work: Path) -> dict:
    cache = work / f"cache-{name}"
    os.environ["TLCLI_CACHE_DIR"] = str(cache)  # read by tlcli at every cache access
    lbfgs_cfg = head_only_config(model, epochs, "lbfgs")
    epochs_cfg = head_only_config(model, epochs, "epochs")
    decode_s = prewarm_decode_cache(data_dir, lbfgs_cfg)
    shutil.rmtree(cache / "features", ignore_errors=True)
    print(f"[{name}] decode cache warm ({decode_s:.1f} s); L-BFGS, cold features", file=sys.stderr)
    cold = timed_finetune(data_dir, lbfgs_cfg, work / f"{name}-lbfgs-cold")
    print(f"[{name}] L-BFGS {cold['wall']:.1f} s; epoch loop x{epochs}", file=sys.stderr)
    loop = timed_finetune(data_dir, epochs_cfg, work / f"{name}-epochs")
    print(f"[{name}] epochs {loop['wall']:.1f} s; L-BFGS, warm features", file=sys.stderr)
    warm = timed_finetune(data_dir, lbfgs_cfg, work / f"{name}-lbfgs-warm")
    return {"decode_s": decode_s, "cold": cold, "epochs": loop, "warm": warm}


def lbfgs_breakdown(run: dict) -> dict[str, float]:
    """Where an L-BFGS run's time goes: backbone forward, head fit, everything else."""
    timer, row = run["timer"], run["summary"]["history"][0]
    features = timer.seconds["features-train"] + timer.seconds["features-val"]
    fit_and_features = row["seconds"]
    return {
        "features": features,
        "fit": fit_and_features - features,
        "other": run["wall"] - fit_and_features,
    }


def loop_breakdown(run: dict) -> dict[str, float]:
    timer = run["timer"]
    train, val = timer.seconds["train"], timer.seconds["val"]
    return {"train": train, "val": val, "other": run["wall"] - train - val}


def report(results: dict[str, dict], epochs: int, model: str) -> str:
    rows, detail = [], []
    for name, r in results.items():
        cold, loop, warm = r["cold"], r["epochs"], r["warm"]
        s_cold, s_loop = cold["summary"], loop["summary"]
        acc_lbfgs, acc_loop = s_cold["val_acc"], s_loop["val_acc"]
        last_loop = s_loop["history"][-1]["val_acc"]
        rows.append(
            [
                name,
                f"{s_cold['num_train']} / {s_cold['num_val']}",
                f"{cold['wall']:.1f}",
                f"{loop['wall']:.1f}",
                f"**{loop['wall'] / cold['wall']:.1f}x**",
                f"{warm['wall']:.1f}",
                f"**{loop['wall'] / warm['wall']:.0f}x**",
                f"{100 * acc_lbfgs:.2f}",
                f"{100 * acc_loop:.2f} ({100 * last_loop:.2f})",
                f"{100 * (acc_lbfgs - acc_loop):+.2f}",
                f"{cold['load']} / {loop['load']} / {warm['load']}",
            ]
        )
        b_cold, b_warm, b_loop = lbfgs_breakdown(cold), lbfgs_breakdown(warm), loop_breakdown(loop)
        wd = s_cold["history"][0].get("head_weight_decay")
        detail.append(
            [
                name,
                f"{b_cold['features']:.1f}",
                f"{b_cold['fit']:.1f} (wd {wd:.0e})",
                f"{b_cold['other']:.1f}",
                f"{b_warm['features']:.1f} / {b_warm['fit']:.1f} / {b_warm['other']:.1f}",
                f"{b_loop['train']:.1f}",
                f"{b_loop['val']:.1f}",
                f"{b_loop['other']:.1f}",
                f"{r['decode_s']:.1f}",
            ]
        )
    table = measure.markdown_table(
        [
            "dataset",
            "train / val images",
            "L-BFGS, cold features (s)",
            f"epoch loop x{epochs} (s)",
            "ratio (cold)",
            "L-BFGS, warm features (s)",
            "ratio (warm)",
            "val acc L-BFGS (%)",
            "val acc epochs, best (last) (%)",
            "L-BFGS - epochs (points)",
            "load 1-min (cold / epochs / warm)",
        ],
        rows,
    )
    breakdown = measure.markdown_table(
        [
            "dataset",
            "cold: features (s)",
            "cold: L-BFGS fit incl. wd grid (s)",
            "cold: other (s)",
            "warm: features / fit / other (s)",
            "epochs: train passes (s)",
            "epochs: val passes (s)",
            "epochs: other (s)",
            "decode, pre-warmed, excluded (s)",
        ],
        detail,
    )
    return "\n\n".join(
        [
            "## Head-only: cached features + L-BFGS vs the epoch loop",
            f"Machine: {measure.machine_line()}.",
            f"Command: `{measure.command_line()}`",
            f"Model `{model}` (pretrained, frozen), CPU, batch 32, `standard` augmentation "
            f"for the epoch loop, {epochs} epochs. Wall time of the whole `finetune` call; "
            "the uint8 decode cache was pre-warmed once and shared, so JPEG decoding is "
            "excluded from both sides. Val accuracy is the accuracy of the checkpoint each "
            "run keeps (`best.pt`); for the epoch loop the last epoch is in brackets.",
            table,
            'Where the time goes ("other" = scan, model build, checkpoints, plot):',
            breakdown,
        ]
    )


def main() -> None:
    parser = measure.dataset_parser(__doc__.split("\n")[0])
    args = parser.parse_args()
    model = measure.model_name(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tlcli-bench-") as work:
        for name in args.datasets:
            data_dir = args.shared / measure.DATASETS[name]
            results[name] = bench_dataset(name, data_dir, model, args.epochs, Path(work))
    markdown = report(results, args.epochs, measure.shown_model(model, args.shared))
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
