"""int8 ONNX vs fp32 ONNX: file size, val top-1 and CPU latency, on a real head-only run.

Per dataset: `finetune --strategy head-only` with Lite0 (or --run DIR to reuse a finished run
of that dataset), then `tlcli export best.pt --quantize int8`: the fp32 export (parity-checked
against PyTorch) and the int8 one (onnxruntime static quantization, QDQ, per-channel weights,
calibrated on a seeded sample of the run's train images), both scored on the run's val images
and timed at batch 1 on the CPU (median of --latency-runs). Also checks that
`tlcli predict model.onnx` equals `tlcli predict best.pt` on ../shared/weights/photos.

    python bench/export_int8.py [--shared ../shared] [--datasets clothing_small] [--write]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import measure

SECTION = "export_int8"
PHOTOS = "weights/photos"


def head_only_run(data_dir: Path, model: str, out: Path) -> Path:
    from tlcli.config import load_config
    from tlcli.train.run import finetune

    cfg = load_config(None, [f"model.name={model}", "strategy.name=head-only", "train.device=cpu"])
    summary = finetune(data_dir, cfg, out=out, reporter=measure.PhaseTimer())
    return Path(summary["paths"]["best"])


def export_int8(ckpt: Path, out: Path, calibration: int, latency_runs: int) -> dict[str, Any]:
    from tlcli.export import export_model
    from tlcli.inference import load_for_inference

    load = measure.load_average()
    started = time.perf_counter()
    result = export_model(
        load_for_inference(ckpt),
        "onnx",
        out,
        quantize="int8",
        calibration_images=calibration,
        latency_runs=latency_runs,
        reporter=measure.PhaseTimer(),
    )
    return {"result": result, "load": load, "wall": time.perf_counter() - started}


def predict_parity(ckpt: Path, onnx_file: Path, photos: Path) -> dict[str, Any]:
    """predict on the checkpoint vs on the .onnx alone: labels and max probability difference."""
    import numpy as np

    from tlcli.inference import load_models
    from tlcli.predict import predict_files

    by_ckpt = predict_files(load_models([ckpt]), [photos], device="cpu")
    by_onnx = predict_files(load_models([onnx_file]), [photos], device="cpu")
    labels = [p["label"] for p in by_ckpt.report["predictions"]]
    return {
        "files": len(labels),
        "same_labels": labels == [p["label"] for p in by_onnx.report["predictions"]],
        "max_prob_diff": float(np.abs(by_ckpt.probs - by_onnx.probs).max()),
    }


def report(results: dict[str, dict], model: str, calibration: int, runs: int) -> str:
    from tlcli.export import INT8_DEFAULT

    rows, parity_rows = [], []
    for name, r in results.items():
        q = r["export"]["result"]["quantization"]
        fp32, int8 = q["models"]
        rows.append(
            [
                name,
                f"{fp32['val_images']}",
                f"{fp32['bytes'] / 1e6:.2f}",
                f"{int8['bytes'] / 1e6:.2f} (**{100 * int8['bytes'] / fp32['bytes']:.0f}%**)",
                f"{100 * fp32['val_top1']:.2f}",
                f"{100 * int8['val_top1']:.2f}",
                f"**{100 * (int8['val_top1'] - fp32['val_top1']):+.2f}**",
                f"{100 * int8['agreement_with_fp32']:.2f}",
                f"{fp32['latency_ms']:.1f}",
                f"{int8['latency_ms']:.1f}",
                f"{fp32['latency_ms'] / int8['latency_ms']:.2f}x",
                f"{q['calibration']['images']} of {q['calibration']['of']}",
                r["export"]["load"],
            ]
        )
        p = r["predict"]
        parity_rows.append(
            [name, p["files"], "yes" if p["same_labels"] else "**no**", f"{p['max_prob_diff']:.1e}"]
        )
    table = measure.markdown_table(
        [
            "dataset",
            "val images",
            "fp32 (MB)",
            "int8 (MB)",
            "val top-1 fp32 (%)",
            "val top-1 int8 (%)",
            "int8 - fp32 (points)",
            "int8 agrees with fp32 (%)",
            "latency fp32 (ms)",
            "latency int8 (ms)",
            "speed-up",
            "calibration images",
            "load 1-min",
        ],
        rows,
    )
    parity = measure.markdown_table(
        ["dataset", "photos", "top-1 labels identical", "max |prob diff|"], parity_rows
    )
    return "\n\n".join(
        [
            "## int8 ONNX export: size, val top-1 and CPU latency",
            f"Machine: {measure.machine_line()}.",
            f"Command: `{measure.command_line()}`",
            f"Model `{model}`, head-only (`finetune --strategy head-only`), exported with "
            "`tlcli export best.pt --quantize int8`: onnxruntime static quantization "
            f"({INT8_DEFAULT.describe()}; the pick of `bench/int8_variants.py`) after "
            f"`quant_pre_process`, calibrated on a seeded sample of {calibration} train images "
            "of the run. Val top-1 on the run's val images; latency is the median of "
            f"{runs} batch-1 runs of onnxruntime's CPU provider (default threads), after 5 "
            "warm-up runs, on the shared CPU (its load average is given).",
            table,
            "`tlcli predict model.onnx` (the fp32 file alone) vs `tlcli predict best.pt` on "
            "`../shared/weights/photos`:",
            parity,
        ]
    )


def main() -> None:
    parser = measure.dataset_parser(__doc__.split("\n")[0])
    parser.set_defaults(datasets=["clothing_small"])
    parser.add_argument("--run", type=Path, default=None, help="reuse this finished run dir")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=50)
    args = parser.parse_args()
    model = measure.model_name(args)
    results = {}
    with tempfile.TemporaryDirectory(prefix="tlcli-bench-") as work:
        for name in args.datasets:
            data_dir = args.shared / measure.DATASETS[name]
            if args.run is not None:
                ckpt = args.run / "best.pt"
            else:
                print(f"[{name}] head-only finetune", file=sys.stderr)
                ckpt = head_only_run(data_dir, model, Path(work) / f"{name}-run")
            print(f"[{name}] export --quantize int8", file=sys.stderr)
            out = Path(work) / f"{name}.int8.onnx"
            exported = export_int8(ckpt, out, args.calibration_images, args.latency_runs)
            fp32 = Path(exported["result"]["paths"]["fp32_model"])
            parity = predict_parity(ckpt, fp32, args.shared / PHOTOS)
            results[name] = {"export": exported, "predict": parity}
    markdown = report(
        results, measure.shown_model(model, args.shared), args.calibration_images, args.latency_runs
    )
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
