"""CLI-side rendering: Rich progress bars for the library's Reporter callbacks, and tables."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

LEVEL_STYLE = {"info": "dim", "warning": "yellow", "error": "red"}


class RichReporter:
    """Implements tlcli.train.progress.Reporter with transient Rich bars on stderr."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, task: str, total: int | None, description: str = "") -> None:
        self.finish(task)
        self.tasks[task] = self.progress.add_task(description or task, total=total)

    def advance(self, task: str, amount: int = 1) -> None:
        if task in self.tasks:
            self.progress.advance(self.tasks[task], amount)

    def finish(self, task: str) -> None:
        if task in self.tasks:
            self.progress.remove_task(self.tasks.pop(task))

    def epoch(self, row: dict[str, Any]) -> None:
        self.console.print(format_epoch(row), highlight=False, soft_wrap=True)

    def note(self, message: str, level: str = "info") -> None:
        style = LEVEL_STYLE.get(level, "")
        prefix = "warning: " if level == "warning" else ""
        self.console.print(f"[{style}]{prefix}{message}[/]", highlight=False, soft_wrap=True)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_epoch(row: dict[str, Any]) -> str:
    parts = [
        f"epoch {row['epoch']:>3}",
        f"train loss {_fmt(row.get('train_loss'), '.4f')} acc {_fmt(row.get('train_acc'), '.4f')}",
        f"val loss {_fmt(row.get('val_loss'), '.4f')} acc {_fmt(row.get('val_acc'), '.4f')}",
    ]
    if row.get("ema_val_acc") is not None:
        parts.append(f"ema acc {row['ema_val_acc']:.4f}")
    if row.get("lr") is not None:
        parts.append(f"lr {row['lr']:.2e}")
    if row.get("update_ratio") is not None:
        parts.append(f"upd/w head {row['update_ratio']:.1e}")
    if row.get("backbone_update_ratio") is not None:
        parts.append(f"backbone {row['backbone_update_ratio']:.1e}")
    parts.append(f"{row.get('seconds', 0):.1f}s")
    return " | ".join(parts)


def finetune_summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="finetune summary", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        (
            "val accuracy",
            f"{summary['val_acc']:.4f} (epoch {summary['best_epoch']}, "
            f"{summary['best_weights']} weights)",
        ),
        (
            "strategy",
            summary["strategy"]
            + (
                f" ({summary['trainable_stages']} stages)"
                if summary["strategy"] == "partial"
                else ""
            ),
        ),
        ("trainable params", f"{summary['trainable_params']:,} of {summary['total_params']:,}"),
        (
            "images",
            f"{summary['num_train']} train, {summary['num_val']} val, "
            f"{len(summary['skipped'])} skipped",
        ),
        (
            "epochs",
            f"{summary['epochs_run']}" + (" (early stop)" if summary["stopped_early"] else ""),
        ),
        ("time", f"{summary['seconds']:.1f}s on {summary['device']}"),
        ("best checkpoint", summary["paths"]["best"]),
        ("curves", summary["paths"]["curves"]),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table
