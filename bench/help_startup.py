"""`tlcli --help` start-up time: heavy imports (torch, timm) must stay inside the commands.

    python bench/help_startup.py [--runs 10] [--write]

Times the installed console script in a fresh process per run (what a user waits for), and
checks that torch was not imported on the way.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import measure

SECTION = "help_startup"
TARGET_S = 0.5


def time_help(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return times


def torch_imported_by_help() -> bool:
    probe = (
        "import sys; from typer.testing import CliRunner; from tlcli.cli import app; "
        "CliRunner().invoke(app, ['--help']); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    script = shutil.which("tlcli") or str(Path(sys.executable).parent / "tlcli")
    time_help([script, "--help"], 1)  # warm the file cache
    times = time_help([script, "--help"], args.runs)
    finetune = time_help([script, "finetune", "--help"], args.runs)
    median, worst = statistics.median(times), max(times)
    lines = [
        "## `tlcli --help` start-up",
        "",
        f"Machine: {measure.machine_line()}; load average {measure.load_average()}.",
        f"Command: `{measure.command_line()}`",
        "",
        measure.markdown_table(
            ["command", "runs", "median (s)", "max (s)", f"target < {TARGET_S} s"],
            [
                ["tlcli --help", args.runs, f"{median:.3f}", f"{worst:.3f}", median < TARGET_S],
                [
                    "tlcli finetune --help",
                    args.runs,
                    f"{statistics.median(finetune):.3f}",
                    f"{max(finetune):.3f}",
                    statistics.median(finetune) < TARGET_S,
                ],
            ],
        ),
        "",
        f"torch imported by `--help`: {torch_imported_by_help()}.",
    ]
    markdown = "\n".join(lines)
    measure.publish(SECTION, markdown, args.write)


if __name__ == "__main__":
    main()
