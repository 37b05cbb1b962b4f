"""Training and evaluation images/s on CPU: tlcli's loop vs the loop a user would write.

Same model (Lite0, pretrained, full fine-tune: every parameter trained), same AdamW,
augmentation (random resized crop scale 0.25-1, flip, colour jitter 0.2), batch 32, the same
train subset of clothing_small (--train-images, stratified) and its whole validation split.
Each side runs in its own subprocess, back to back, so peak memory is per side:
  tlcli          `finetune --strategy full`: uint8 decode cache (decoded once, 2 threads),
                 batch-wise augmentation, channels_last;
  tlcli-stream   the same with data.stream=always: no cache, every batch decoded from the
                 files by 2 threads while the previous batch trains (the path for folders
                 too large to cache);
  reference      torchvision ImageFolder + transforms.Compose, DataLoader(num_workers=2,
                 shuffle), a hand-written epoch loop (JPEG decode + augment every epoch);
  reference+cl   the same reference with the model and batches in channels_last, to show how
                 much of tlcli's gain is the memory format alone.
The LR recipe is made identical on both sides (one LR for all layers, no schedule, no label
smoothing), so that the val accuracy per epoch (and time to reach --target-acc) compares
pipelines, not recipes.

    python bench/train_throughput.py [--shared ../shared] [--epochs 1] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import measure

SECTION = "train_throughput"
SIDES = ("tlcli", "tlcli-stream", "reference", "reference+cl")
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64  # tlcli validates with 2x the train batch; the reference does the same
LR = 1e-4  # one LR for the whole network: a gentle full fine-tune of a pretrained model
WEIGHT_DECAY = 0.01
NUM_WORKERS = 2
CROP_SCALE = (0.25, 1.0)  # tlcli's `standard` preset
COLOR_JITTER = 0.2


def make_subset(source: Path, target: Path, train_images: int) -> Path:
    """target/train/<class>/ (symlinks, classes taken round-robin) and target/val/<class>/
    (every validation image), so both sides read exactly the same files."""
    splits = {p.name: p for p in source.iterdir() if p.is_dir()}
    val_name = next(n for n in ("val", "validation", "valid") if n in splits)
    by_class = {
        c.name: sorted(f for f in c.iterdir() if f.is_file())
        for c in sorted(splits["train"].iterdir())
        if c.is_dir()
    }
    picked: dict[str, list[Path]] = {name: [] for name in by_class}
    rank = 0
    while sum(map(len, picked.values())) < train_images:
        for name, files in by_class.items():
            if rank < len(files) and sum(map(len, picked.values())) < train_images:
                picked[name].append(files[rank])
        rank += 1
    for name, files in picked.items():
        folder = target / "train" / name
        folder.mkdir(parents=True)
        for f in files:
            (folder / f.name).symlink_to(f.resolve())
    for c in sorted(splits[val_name].iterdir()):
        folder = target / "val" / c.name
        folder.mkdir(parents=True)
        for f in sorted(c.iterdir()):
            (folder / f.name).symlink_to(f.resolve())
    return target


# --- the sides, each in its own process ------------------------------------------------------


def run_tlcli(data: Path, model: str, epochs: int, work: Path, stream: bool) -> dict[str, Any]:
    os.environ["TLCLI_CACHE_DIR"] = str(work / "cache")  # cold: decoding is part of the cost
    from tlcli.config import load_config
    from tlcli.train.run import finetune

    cfg = load_config(
        None,
        [
            f"model.name={model}",
            "strategy.name=full",
            "data.augment=standard",
            f"data.batch_size={BATCH_SIZE}",
            f"data.workers={NUM_WORKERS}",
            f"optim.lr={LR}",
            "optim.backbone_lr_mult=1.0",
            f"optim.weight_decay={WEIGHT_DECAY}",
            "optim.label_smoothing=0",
            "schedule.name=none",
            "schedule.warmup_epochs=0",
            f"train.epochs={epochs}",
            "train.device=cpu",
            f"data.stream={'always' if stream else 'never'}",
        ],
    )
    timer = measure.PhaseTimer()
    started = time.perf_counter()
    summary = finetune(data, cfg, out=work / "run", reporter=timer)
    return {
        "wall": time.perf_counter() - started,
        "decode": timer.seconds["decode-train"] + timer.seconds["decode-val"],
        "train": timer.intervals["train"],
        "eval": timer.intervals["val"],
        "val_acc": [row["val_acc"] for row in summary["history"]],
        "num_train": summary["num_train"],
        "num_val": summary["num_val"],
    }


def run_reference(data: Path, model_name: str, epochs: int, channels_last: bool) -> dict:
    """What a user would write: ImageFolder, the standard transforms, a plain epoch loop."""
    import timm
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    started = time.perf_counter()
    torch.manual_seed(0)
    train_set = datasets.ImageFolder(str(data / "train"))
    model = timm.create_model(model_name, pretrained=True, num_classes=len(train_set.classes))
    config = timm.data.resolve_model_data_config(model)
    mean, std, size = config["mean"], config["std"], config["input_size"][-1]
    train_set.transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=CROP_SCALE),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(COLOR_JITTER, COLOR_JITTER, COLOR_JITTER),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    val_set = datasets.ImageFolder(
        str(data / "val"),
        transforms.Compose(
            [
                transforms.Resize(int(size / config["crop_pct"])),
                transforms.CenterCrop(size),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        ),
    )
    train_loader = DataLoader(train_set, BATCH_SIZE, shuffle=True, num_workers=NUM_WORKERS)
    val_loader = DataLoader(val_set, EVAL_BATCH_SIZE, num_workers=NUM_WORKERS)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    criterion = nn.CrossEntropyLoss()
    train_times, eval_times, accs = [], [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x = x.contiguous(memory_format=memory_format)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        train_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                x = x.contiguous(memory_format=memory_format)
                correct += (model(x).argmax(1) == y).sum().item()
        eval_times.append(time.perf_counter() - t0)
        accs.append(correct / len(val_set))
    return {
        "wall": time.perf_counter() - started,
        "decode": 0.0,
        "train": train_times,
        "eval": eval_times,
        "val_acc": accs,
        "num_train": len(train_set),
        "num_val": len(val_set),
    }


def run_side(side: str, data: Path, model: str, epochs: int, result: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tlcli-tp-") as work:
        if side.startswith("tlcli"):
            out = run_tlcli(data, model, epochs, Path(work), stream=side == "tlcli-stream")
        else:
            out = run_reference(data, model, epochs, channels_last=side == "reference+cl")
    out["peak_rss_mib"], out["peak_rss_child_mib"] = measure.peak_rss_mib()
    result.write_text(json.dumps(out))


# --- the parent: orchestrate, report -----------------------------------------------------------


def spawn_side(side: str, data: Path, model: str, epochs: int, work: Path) -> dict[str, Any]:
    result = work / f"{side}.json"
    load = measure.load_average()
    print(f"[{side}] load {load}", file=sys.stderr)
    command = [sys.executable, __file__, "--side", side, "--data", str(data)]
    command += ["--model", model, "--epochs", str(epochs), "--result", str(result)]
    subprocess.run(command, check=True)
    out = json.loads(result.read_text())
    out["load"] = load
    return out


def time_to_accuracy(r: dict[str, Any], target: float) -> float | None:
    """Seconds of decode + train + eval until the first epoch whose val acc reaches target."""
    elapsed = r["decode"]
    for train, evaluation, acc in zip(r["train"], r["eval"], r["val_acc"], strict=True):
        elapsed += train + evaluation
        if acc >= target:
            return elapsed
    return None


def report(rounds: list[dict[str, dict]], epochs: int, target: float, model: str) -> str:
    rows = []
    for index, results in enumerate(rounds, 1):
        ref = results["reference"]
        ref_train = ref["num_train"] / statistics.median(ref["train"])
        ref_eval = ref["num_val"] / statistics.median(ref["eval"])
        for side in [s for s in SIDES if s in results]:
            r = results[side]
            train_ips = r["num_train"] / statistics.median(r["train"])
            eval_ips = r["num_val"] / statistics.median(r["eval"])
            first_epoch = r["num_train"] / (r["decode"] + r["train"][0])
            tta = time_to_accuracy(r, target)
            rows.append(
                [
                    f"{side}" + (f" (round {index})" if len(rounds) > 1 else ""),
                    f"{train_ips:.1f}",
                    f"{train_ips / ref_train:.2f}x",
                    f"{first_epoch:.1f}",
                    f"{r['decode']:.1f}",
                    f"{eval_ips:.1f}",
                    f"{eval_ips / ref_eval:.2f}x",
                    f"{r['peak_rss_mib']:.0f} / {r['peak_rss_child_mib']:.0f}",
                    " / ".join(f"{100 * a:.1f}" for a in r["val_acc"]),
                    "-" if tta is None else f"{tta:.0f}",
                    r["load"],
                ]
            )
    table = measure.markdown_table(
        [
            "side",
            "train img/s",
            "vs reference",
            "1st epoch img/s incl. decode",
            "decode, one-time (s)",
            "eval img/s",
            "vs reference",
            "peak RSS main / largest worker (MiB)",
            "val acc per epoch (%)",
            f"time to {100 * target:.0f}% val acc (s)",
            "load 1-min",
        ],
        rows,
    )
    r0 = rounds[0]["tlcli"]
    return "\n\n".join(
        [
            "## Training and evaluation throughput on CPU (full fine-tune)",
            f"Machine: {measure.machine_line()}.",
            f"Command: `{measure.command_line()}`",
            f"Model `{model}`, every parameter trained, AdamW lr {LR:g} (all layers), weight "
            f"decay {WEIGHT_DECAY}, batch {BATCH_SIZE} (eval {EVAL_BATCH_SIZE}), augmentation "
            f"RandomResizedCrop(scale {CROP_SCALE[0]}-{CROP_SCALE[1]}) + flip + colour jitter "
            f"{COLOR_JITTER}; {r0['num_train']} train images of clothing_small (stratified "
            f"subset), all {r0['num_val']} validation images, {epochs} epoch(s). Train and eval "
            "img/s are medians over epochs of the epoch's own time (tlcli: decode cache "
            "already built; reference: JPEG decode + transforms in 2 DataLoader workers "
            'every epoch). "1st epoch incl. decode" adds tlcli\'s one-time decode (2 '
            "threads) to its first epoch; for tlcli-stream that column is the one-time check "
            "that every file decodes, and its epochs decode every image. Peak RSS: "
            "`ru_maxrss` of the side's own process "
            "and of its largest child process (reference: its DataLoader workers; tlcli decodes "
            "in threads of its own process). "
            "Time to accuracy counts decode + train + eval, not model build.",
            table,
            "tlcli's augmentation crops from the decoded center square (side 256 = 224 / "
            "crop_pct), the reference from the whole image; tlcli zero-inits the new head, "
            "the reference keeps timm's init. Both train with BatchNorm in train mode.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=measure.DEFAULT_SHARED)
    parser.add_argument("--model", default=None, help="default: local-dir Lite0 in --shared")
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--target-acc", type=float, default=0.6)
    parser.add_argument("--rounds", type=int, default=1, help="repeat all sides this often")
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    # Internal: run one side in this (child) process.
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model = measure.model_name(args)
    if args.side:
        run_side(args.side, args.data, model, args.epochs, args.result)
        return
    if "reference" not in args.sides:
        parser.error("--sides must include reference (the ratios are against it)")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="tlcli-bench-") as work:
        source = args.shared / measure.DATASETS["clothing_small"]
        data = make_subset(source, Path(work) / "subset", args.train_images)
        for _ in range(args.rounds):
            rounds.append(
                {s: spawn_side(s, data, model, args.epochs, Path(work)) for s in args.sides}
            )
    markdown = report(rounds, args.epochs, args.target_acc, measure.shown_model(model, args.shared))
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
