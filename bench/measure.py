"""What every benchmark script shares: the machine line, phase timings, the docs writer.

Each script prints a markdown section and, with --write, replaces its own section of
docs/benchmarks.md between `<!-- name -->` and `<!-- /name -->` (appended when missing), so
re-running one benchmark never touches another's numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
# Real data and weights live next to the repository, as for the integration tests.
DEFAULT_SHARED = REPO.parent / "shared"
LITE0_DIR = "weights/tf_efficientnet_lite0.in1k"
DATASETS = {
    "hymenoptera": "data/hymenoptera_data",
    "clothing_small": "data/clothing_small",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_line(device: str = "cpu") -> str:
    """CPU, cores, RAM, library versions and date: printed next to every table."""
    import timm
    import torch

    parts = [
        f"CPU {cpu_model()}, {os.cpu_count()} cores, {memory_gib():.0f} GiB RAM",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"timm {timm.__version__}",
        f"Python {platform.python_version()}",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.insert(0, f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return "; ".join(parts)


def load_average() -> str:
    """1-minute load average: the CPU is shared, so every timing carries it."""
    return f"{os.getloadavg()[0]:.2f}"


def command_line() -> str:
    """The command that produced a table, as a reader would type it from the repo root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    return "python " + shlex.join([str(script), *sys.argv[1:]])


def peak_rss_mib() -> tuple[float, float]:
    """(this process, its largest waited-for child) peak resident memory, MiB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


class PhaseTimer:
    """A tlcli Reporter that adds up wall time per task (decode-train, features-train,
    train, val, ...) and keeps the epoch rows."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.intervals: dict[str, list[float]] = defaultdict(list)  # one per start/finish
        self.items: dict[str, int] = defaultdict(int)
        self.epochs: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self._open: dict[str, float] = {}

    def start(self, task: str, total: int | None, description: str = "") -> None:
        self.finish(task)
        self._open[task] = time.perf_counter()

    def advance(self, task: str, amount: int = 1) -> None:
        self.items[task] += amount

    def finish(self, task: str) -> None:
        started = self._open.pop(task, None)
        if started is not None:
            elapsed = time.perf_counter() - started
            self.seconds[task] += elapsed
            self.intervals[task].append(elapsed)

    def epoch(self, row: dict[str, Any]) -> None:
        self.epochs.append(row)

    def note(self, message: str, level: str = "info") -> None:
        self.notes.append(message)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def publish(name: str, markdown: str, write: bool) -> None:
    """Print the section; with --write also put it into docs/benchmarks.md."""
    print(markdown)
    if write:
        write_section(name, markdown)


def shown_model(model: str, shared: Path) -> str:
    """The model name as the docs show it: the shared folder as ../shared."""
    return model.replace(str(shared.resolve()), "../shared")


def write_section(name: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the text between this benchmark's markers in docs/benchmarks.md."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


def dataset_parser(description: str) -> argparse.ArgumentParser:
    """The options every per-dataset benchmark takes: --shared, --datasets, --epochs,
    --model, --write."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--model", default=None, help="default: local-dir Lite0 in --shared")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    return parser


def model_name(args: argparse.Namespace) -> str:
    """--model, or the Lite0 weights in --shared as a local-dir: name."""
    return args.model or f"local-dir:{(args.shared / LITE0_DIR).resolve()}"


def run_cli(args: list[str]) -> dict[str, Any]:
    """`tlcli ARGS --json` in a subprocess: its JSON, with the wall time it took."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tlcli", *args, "--json"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"tlcli {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    result["wall_seconds"] = time.perf_counter() - started
    return result
