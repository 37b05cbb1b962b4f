"""int8 quantization variants of one head-only run, scored against its fp32 ONNX export.

Each variant is `tlcli.export.quantize_int8` with other Int8Settings (calibration method,
per-channel weights, symmetric activations, QDQ vs QOperator, reduce_range, layers kept fp32)
or another calibration sample (64 or 256 train images; the eval transform or augmented
views), all from the same fp32 export. Scored on the run's val images in the eval transform,
as `tlcli predict` feeds them: top-1, agreement with fp32, mean squared logit error against
fp32, file size. The pick is the best val top-1 at <= 35% of the fp32 size (ties: agreement,
then logit error); fp32 and the picked int8 model are also scored on --test (a held-out folder).
Results go to a JSON-lines file (--results), so a rerun only runs the missing variants.

    python bench/int8_variants.py --run RUN_DIR --test ../shared/data/clothing_small/test
        [--variants NAME ...] [--results FILE] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import measure
import numpy as np

SECTION = "int8_variants"
MAX_SIZE_FRACTION = 0.35  # issue 17: the int8 file at most 35% of the fp32 one
EVAL_BATCH = 64
AUGMENT_SEED = 0
# name: (Int8Settings changes, calibration images, calibration views)
VARIANTS: dict[str, tuple[dict[str, Any], int, str]] = {
    "percentile-99.99": ({}, 64, "eval"),
    "percentile-99.99-256": ({}, 256, "eval"),
    "percentile-99.999": ({"percentile": 99.999}, 64, "eval"),
    "percentile-99.9": ({"percentile": 99.9}, 64, "eval"),
    "minmax": ({"method": "MinMax"}, 64, "eval"),
    "minmax-256": ({"method": "MinMax"}, 256, "eval"),
    "entropy": ({"method": "Entropy"}, 64, "eval"),
    "per-tensor": ({"per_channel": False}, 64, "eval"),
    "symmetric-activations": ({"symmetric_activations": True}, 64, "eval"),
    "qoperator": ({"quant_format": "QOperator"}, 64, "eval"),
    "reduce-range": ({"reduce_range": True}, 64, "eval"),
    "stem-fp32": ({"fp32_first_convs": 1}, 64, "eval"),
    "first-3-convs-fp32": ({"fp32_first_convs": 3}, 64, "eval"),
    "first-9-convs-fp32": ({"fp32_first_convs": 9}, 64, "eval"),
    "head-fp32": ({"fp32_head": True}, 64, "eval"),
    "stem-head-fp32": ({"fp32_first_convs": 1, "fp32_head": True}, 64, "eval"),
    "augmented-views": ({}, 64, "augmented"),
    "not-strided": ({"strided": False}, 64, "eval"),
}


def eval_batches(loaded, samples) -> np.ndarray:
    from tlcli.export import calibration_batches

    return np.concatenate(list(calibration_batches(loaded, samples, EVAL_BATCH)))


def augmented_batches(loaded, samples, batch: int) -> list[np.ndarray]:
    """The samples as training sees them (the `standard` augmentation, seeded)."""
    import torch

    from tlcli.data.augment import PRESETS, BatchAugmenter
    from tlcli.data.cache import decode_images
    from tlcli.inference import MAX_PIXELS

    spec = loaded.spec
    decoded = decode_images(
        samples, spec.cache_size, spec.interpolation, MAX_PIXELS, workers=1, disk_cache=False
    )
    augmenter = BatchAugmenter(
        PRESETS["standard"], spec.input_size, spec.mean, spec.std, len(loaded.classes)
    )
    generator = torch.Generator().manual_seed(AUGMENT_SEED)
    out = []
    for start in range(0, len(decoded), batch):
        pixels = torch.from_numpy(np.ascontiguousarray(decoded.pixels[start : start + batch]))
        x, _ = augmenter(pixels, torch.zeros(len(pixels), dtype=torch.long), generator)
        out.append(x.numpy())
    return out


def logits_of(path: Path, x: np.ndarray) -> np.ndarray:
    from tlcli.onnx_model import open_session

    session = open_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + EVAL_BATCH]})[0] for i in range(0, len(x), EVAL_BATCH)]
    )


def score(logits: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return {
        "top1": float((logits.argmax(1) == labels).mean()),
        "agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "logit_mse": float(((logits - reference) ** 2).mean()),
    }


def run_variant(name, loaded, splits, fp32: Path, val, work: Path) -> dict[str, Any]:
    from tlcli.export import (
        CALIBRATION_BATCH,
        INT8_DEFAULT,
        calibration_batches,
        calibration_sample,
        quantize_int8,
    )

    changes, images, views = VARIANTS[name]
    settings = replace(INT8_DEFAULT, **changes)
    chosen = calibration_sample(splits["train"], images, 0)
    if views == "eval":
        batches = list(calibration_batches(loaded, chosen))
    else:
        batches = augmented_batches(loaded, chosen, CALIBRATION_BATCH)
    out = work / f"{name}.onnx"
    started = time.perf_counter()
    row = {
        "variant": name,
        "settings": asdict(settings),
        "described": settings.describe(),
        "images": images,
        "views": views,
    }
    try:
        quantize_int8(fp32, out, iter(batches), work, settings)
    except Exception as exc:  # onnxruntime refuses some settings on some graphs: a result too
        return {**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    seconds = time.perf_counter() - started
    x, labels, reference = val
    return {
        **row,
        "bytes": out.stat().st_size,
        "fp32_bytes": fp32.stat().st_size,
        "quantize_s": round(seconds, 1),
        "load": measure.load_average(),
        **score(logits_of(out, x), labels, reference),
    }


def pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best val top-1 within the size limit; ties: agreement with fp32, then the smaller logit
    error (sizes within the limit differ by bytes: no reason to pick by them)."""
    small = [
        r for r in rows if "error" not in r and r["bytes"] <= MAX_SIZE_FRACTION * r["fp32_bytes"]
    ]
    return max(small, key=lambda r: (r["top1"], r["agreement"], -r["logit_mse"]))


def test_scores(loaded, test_dir: Path, fp32: Path, int8: Path) -> dict[str, Any]:
    """fp32 and int8 top-1 on a held-out folder (labels by the model's class names)."""
    from tlcli.data.scan import Sample, scan_image_folder

    scan = scan_image_folder(test_dir)
    index = {c: i for i, c in enumerate(loaded.classes)}
    samples = [
        Sample(s.path, index[scan.classes[s.label]])
        for split in scan.splits.values()
        for s in split
        if scan.classes[s.label] in index
    ]
    x = eval_batches(loaded, samples)
    labels = np.array([s.label for s in samples])
    reference = logits_of(fp32, x)
    return {
        "images": len(labels),
        "fp32_top1": float((reference.argmax(1) == labels).mean()),
        **score(logits_of(int8, x), labels, reference),
    }


def report(rows, fp32_top1: float, val_images: int, chosen, test, run: Path) -> str:
    table = measure.markdown_table(
        [
            "variant",
            "settings",
            "calibration",
            "size (% of fp32)",
            "val top-1 int8 (%)",
            "int8 - fp32 (points)",
            "agrees with fp32 (%)",
            "logit MSE",
            "quantize (s)",
            "load 1-min",
        ],
        [
            [r["variant"], r["described"], f"{r['images']}, {r['views']}"]
            + [f"fails: {r['error']}"]
            + [""] * 6
            if "error" in r
            else [
                f"**{r['variant']}**" if r is chosen else r["variant"],
                r["described"],
                f"{r['images']}, {r['views']}",
                f"{100 * r['bytes'] / r['fp32_bytes']:.1f}",
                f"{100 * r['top1']:.2f}",
                f"{100 * (r['top1'] - fp32_top1):+.2f}",
                f"{100 * r['agreement']:.2f}",
                f"{r['logit_mse']:.3f}",
                f"{r['quantize_s']:.0f}",
                r["load"],
            ]
            for r in rows
        ],
    )
    lines = [
        "## int8 quantization variants (clothing_small head-only)",
        f"Machine: {measure.machine_line()}.",
        f"Command: `{measure.command_line()}`",
        f"Run `{run}`: fp32 ONNX val top-1 {100 * fp32_top1:.2f}% on {val_images} val images "
        f"(one image is {100 / val_images:.2f} points). Every variant quantizes the same fp32 "
        "export with `tlcli.export.quantize_int8` (after `quant_pre_process`), calibrated on a "
        "seeded sample of the run's train images (the eval transform, or the `standard` "
        "augmentation's views); scored on the val images as `predict` feeds them. Logit MSE: "
        "mean squared difference from the fp32 logits. The pick (bold): best val top-1 at "
        f"<= {MAX_SIZE_FRACTION:.0%} of the fp32 size; ties by agreement, then logit MSE.",
        table,
    ]
    if test is not None:
        lines.append(
            f"The pick on the held-out test folder ({test['images']} images, not used to "
            f"pick): fp32 {100 * test['fp32_top1']:.2f}%, int8 {100 * test['top1']:.2f}% "
            f"({100 * (test['top1'] - test['fp32_top1']):+.2f} points), agreement "
            f"{100 * test['agreement']:.2f}%, logit MSE {test['logit_mse']:.3f}."
        )
    return "\n\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished head-only run dir")
    parser.add_argument("--test", type=Path, default=None, help="held-out folder for the pick")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=Path("/tmp/tlcli-int8-variants.jsonl"))
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    from tlcli.export import export_model, run_split_samples
    from tlcli.inference import load_for_inference

    loaded = load_for_inference(args.run / "best.pt")
    splits = run_split_samples(loaded)
    done = {}
    if args.results.is_file():
        for line in args.results.read_text().splitlines():
            row = json.loads(line)
            done[row["variant"]] = row
    with tempfile.TemporaryDirectory(prefix="tlcli-int8-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        export_model(loaded, "onnx", fp32)
        x = eval_batches(loaded, splits["val"])
        labels = np.array([s.label for s in splits["val"]])
        reference = logits_of(fp32, x)
        fp32_top1 = float((reference.argmax(1) == labels).mean())
        print(f"fp32 val top-1 {fp32_top1:.4f}", file=sys.stderr, flush=True)
        for name in args.variants:
            if name in done:
                continue
            row = run_variant(name, loaded, splits, fp32, (x, labels, reference), work)
            row["fp32_top1"] = fp32_top1
            done[name] = row
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows = [done[n] for n in VARIANTS if n in done]
        chosen = pick(rows)
        test = None
        if args.test is not None:
            if not (work / f"{chosen['variant']}.onnx").is_file():
                run_variant(chosen["variant"], loaded, splits, fp32, (x, labels, reference), work)
            test = test_scores(loaded, args.test, fp32, work / f"{chosen['variant']}.onnx")
    markdown = report(rows, fp32_top1, len(labels), chosen, test, args.run)
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
