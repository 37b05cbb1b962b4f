"""Write scikit-learn's bundled handwritten digits (real scans, 8x8, 16 grey levels) as
upscaled PNGs in DIR/<digit>/: a real data set far from ImageNet photos, available offline.

    python bench/make_digits.py /tmp/digits [--size 96] [--per-class 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: Path, size: int = 96, per_class: int = 0) -> int:
    digits = load_digits()
    counts: dict[int, int] = {}
    for image, label in zip(digits.images, digits.target, strict=True):
        label = int(label)
        if per_class and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        # 0..16 ink -> dark ink on white paper, as a scan would look.
        pixels = (255 - image * (255 / 16)).astype(np.uint8)
        img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BICUBIC)
        img.save(folder / f"{label}_{counts[label]:04d}.png")
    return sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--per-class", type=int, default=0, help="0: all (~180 per class)")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty")
    print(f"wrote {write_digits(args.out, args.size, args.per_class)} images to {args.out}")


if __name__ == "__main__":
    main()
