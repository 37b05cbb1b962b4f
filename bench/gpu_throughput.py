"""Training images/s on a GPU: tlcli's pipeline and a plain reference loop against the
model's own ceiling (forward + backward + optimizer step on synthetic tensors already on the
GPU), for ResNet-50 and Lite0 at 224 px.

    python bench/gpu_throughput.py [--models resnet50 tf_efficientnet_lite0] [--write]

All three use the same model (random init: speed only), bf16 autocast, channels_last, AdamW
(fused) and batch size. tlcli: `finetune --strategy full` on the train split of --data (uint8
decode cache, batch-wise augmentation on the GPU). Reference: torchvision ImageFolder +
RandomResizedCrop/flip in DataLoader workers (pinned memory, persistent workers), the loop a
user would write. Images/s are of the last epoch (the first one decodes and warms up).
Runs on CPU too (`--device cpu` with a tiny model), which only checks that it works.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import measure

SECTION = "gpu_throughput"


def sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step_parts(name: str, num_classes: int, device: Any) -> tuple[Any, Any, Any]:
    """Model, optimizer and autocast dtype as all three sides use them."""
    import timm
    import torch

    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    model.to(device).to(memory_format=torch.channels_last).train()
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    return model, optimizer, dtype


def step(model: Any, optimizer: Any, dtype: Any, x: Any, y: Any, device: Any) -> None:
    import torch
    import torch.nn.functional as F

    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def ceiling(name: str, args: argparse.Namespace, num_classes: int, device: Any) -> float:
    import torch

    model, optimizer, dtype = train_step_parts(name, num_classes, device)
    size = (args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randn(size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (args.batch_size,), device=device)
    for _ in range(args.warmup):
        step(model, optimizer, dtype, x, y, device)
    sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step(model, optimizer, dtype, x, y, device)
    sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - started)


def pipeline(name: str, args: argparse.Namespace, work: Path) -> float:
    from tlcli.config import load_config
    from tlcli.train.run import finetune

    cfg = load_config(
        None,
        [
            f"model.name={name}",
            "model.pretrained=false",
            "strategy.name=full",
            f"data.batch_size={args.batch_size}",
            f"data.image_size={args.image_size}",
            f"train.epochs={args.epochs}",
            f"train.device={args.device}",
        ],
    )
    timer = measure.PhaseTimer()
    summary = finetune(args.data, cfg, out=work / f"tlcli-{name}", reporter=timer)
    return summary["num_train"] / timer.intervals["train"][-1]


def reference(name: str, args: argparse.Namespace, device: Any) -> float:
    import torch
    from torchvision import datasets, transforms

    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(args.image_size),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    data = datasets.ImageFolder(str(train_dir), transform)
    workers = os.cpu_count() or 2
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
        prefetch_factor=4,
    )
    model, optimizer, dtype = train_step_parts(name, len(data.classes), device)
    rates = []
    for _ in range(args.epochs):
        seen, started = 0, time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            step(model, optimizer, dtype, x, y.to(device, non_blocking=True), device)
            seen += len(y)
        sync(device)
        rates.append(seen / (time.perf_counter() - started))
    return rates[-1]


def report(rows: list[dict[str, Any]], args: argparse.Namespace, device: str) -> str:
    table = [
        [
            r["model"],
            f"{r['ceiling']:.0f}",
            f"{r['tlcli']:.0f}",
            f"{r['tlcli'] / r['ceiling']:.0%}",
            f"{r['reference']:.0f}",
            f"{r['reference'] / r['ceiling']:.0%}",
        ]
        for r in rows
    ]
    return "\n".join(
        [
            "## Training throughput on GPU vs the model's ceiling",
            "",
            f"Machine: {measure.machine_line(device)}; load average {measure.load_average()}.",
            f"Command: `{measure.command_line()}`",
            "",
            f"Random-init models, {args.image_size} px, batch {args.batch_size}, bf16 autocast, "
            f"channels_last, fused AdamW; ceiling: {args.steps} steps on synthetic tensors; "
            f"tlcli and reference: img/s of epoch {args.epochs} on {args.data}. Target: tlcli "
            ">= 90% of the ceiling.",
            "",
            measure.markdown_table(
                [
                    "model",
                    "ceiling img/s",
                    "tlcli img/s",
                    "tlcli / ceiling",
                    "reference img/s",
                    "reference / ceiling",
                ],
                table,
            ),
        ]
    )


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "tf_efficientnet_lite0"])
    parser.add_argument(
        "--data", type=Path, default=measure.DEFAULT_SHARED / measure.DATASETS["clothing_small"]
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    train_dir = args.data / "train" if (args.data / "train").is_dir() else args.data
    num_classes = len([p for p in train_dir.iterdir() if p.is_dir()])
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlcli-bench-") as work:
        for name in args.models:
            row = {"model": name, "ceiling": ceiling(name, args, num_classes, device)}
            row["tlcli"] = pipeline(name, args, Path(work))
            row["reference"] = reference(name, args, device)
            print(
                f"{name}: ceiling {row['ceiling']:.0f}, tlcli {row['tlcli']:.0f}, "
                f"reference {row['reference']:.0f} img/s"
            )
            rows.append(row)
    markdown = report(rows, args, args.device)
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
