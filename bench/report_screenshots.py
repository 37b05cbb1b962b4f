"""Screenshots of report.html for the docs: clothing_small's finetune and evaluate pages,
rendered by headless Chromium (Debian's `chromium`).

    python bench/report_screenshots.py                       # finetune + evaluate, then shoot
    python bench/report_screenshots.py --run-dir runs/cloth  # reuse a finished run

Writes docs/report_finetune.png and docs/report_evaluate.png (256-colour PNGs, 1280 px wide).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser import screenshot  # noqa: E402

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data" / "clothing_small"
MODEL = f"local-dir:{SHARED / 'weights' / 'tf_efficientnet_lite0.in1k'}"
WIDTH = 1280
# Tall enough for the top sections of each page; the rest is the same tables, longer.
HEIGHTS = {"finetune": 1500, "evaluate": 3000}
COLOURS = 256  # a palette PNG: a few hundred KB instead of a few MB


def tlcli(*args: object) -> None:
    command = [sys.executable, "-m", "tlcli", *map(str, args)]
    print("+", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def shrink(path: Path) -> Path:
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--run-dir", type=Path, help="a finished finetune run (else trained)")
    parser.add_argument("--eval-dir", type=Path, help="an evaluate --report-dir (else made)")
    parser.add_argument("--work", type=Path, default=Path("runs/report-screenshots"))
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    args = parser.parse_args()

    run = args.run_dir
    if run is None:
        run = args.work / "finetune"
        tlcli("finetune", args.data, "--model", args.model, "--epochs", args.epochs, "--out", run)
    tlcli("report", run)  # rebuilt by this code, whichever code trained the run
    report = args.eval_dir
    if report is None:
        report = args.work / "evaluate"
        tlcli("evaluate", run / "best.pt", args.data, "--split", "test", "--report-dir", report)
    tlcli("report", report)
    for name, folder in (("finetune", run), ("evaluate", report)):
        out = args.docs / f"report_{name}.png"
        shrink(screenshot(folder / "report.html", out, WIDTH, HEIGHTS[name]))
        print(f"{out}: {out.stat().st_size / 1e3:.0f} KB")


if __name__ == "__main__":
    main()
