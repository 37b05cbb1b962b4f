"""The `tlcli` command line: parses options, calls the library, renders. No training logic.

Heavy imports (torch, timm) happen inside commands so `tlcli --help` starts fast. Progress
and tables go to stderr; with --json, stdout carries only the JSON document.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from tlcli.errors import EXIT_INTERRUPTED, TlcliError

app = typer.Typer(
    help=(
        "Transfer learning from the command line: fine-tune a pretrained timm backbone on a "
        "folder of images, get a measured recommendation of how to fine-tune, evaluate, "
        "predict and export."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stderr = Console(stderr=True)
stdout = Console()
_state = {"debug": False}


class Strategy(str, Enum):
    auto = "auto"
    head_only = "head-only"
    partial = "partial"
    full = "full"


class Optimizer(str, Enum):
    sgd = "sgd"
    momentum = "momentum"
    nesterov = "nesterov"
    adagrad = "adagrad"
    rmsprop = "rmsprop"
    adam = "adam"
    adamw = "adamw"


class Schedule(str, Enum):
    cosine = "cosine"
    step = "step"
    exponential = "exponential"
    none = "none"


class Augment(str, Enum):
    none = "none"
    light = "light"
    standard = "standard"
    strong = "strong"


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


def run_command(body: Callable[[], Any]) -> Any:
    """Turn user errors into one line on stderr and their exit code; Ctrl-C exits 130."""
    try:
        return body()
    except TlcliError as exc:
        if _state["debug"]:
            traceback.print_exc()
        stderr.print(f"[bold red]error:[/] {exc.message}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
    sys.stdout.flush()


# Options shared by finetune, recommend, lr-find and tune: one definition each.
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="timm model name, hf-hub:ORG/NAME, or local-dir:PATH (a folder with config.json "
        "and model.safetensors; works offline). Default: tf_efficientnet_lite0.in1k.",
    ),
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: section.key=value (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def build_config(
    config: Path | None, sets: list[str] | None, options: dict[str, dict[str, Any]]
) -> Any:
    """Defaults < --config file < --set < explicit options."""
    from tlcli.config import apply_overrides, load_config

    cfg = load_config(config, sets)
    explicit = {
        section: {k: v for k, v in values.items() if v is not None}
        for section, values in options.items()
    }
    return apply_overrides(cfg, explicit, "command-line options")


@app.command()
def finetune(
    data_dir: Annotated[
        Path | None,
        typer.Argument(
            help="Image folder: DATA_DIR/<class>/*.jpg, or DATA_DIR/train|val/<class>/."
        ),
    ] = None,
    model: ModelOpt = None,
    no_pretrained: Annotated[
        bool, typer.Option("--no-pretrained", help="Random init instead of pretrained weights.")
    ] = False,
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            help="head-only: a linear classifier on frozen features; partial: retrain the last "
            "--trainable-stages stages and the head; full: retrain everything; auto: measure "
            "the data and pick (the CS231n 2x2 grid)."
        ),
    ] = None,
    trainable_stages: Annotated[
        int | None, typer.Option(help="partial: how many of the last backbone stages to retrain.")
    ] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate of the new head.")] = None,
    backbone_lr_mult: Annotated[
        float | None,
        typer.Option(
            help="Pretrained layers train at lr x this (default 0.1): a from-scratch "
            "LR wrecks pretrained features."
        ),
    ] = None,
    layer_decay: Annotated[
        float | None, typer.Option(help="Per-stage LR decay towards the input (1 = off).")
    ] = None,
    opt: Annotated[Optimizer | None, typer.Option("--opt", help="Optimizer.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Weight decay.")] = None,
    momentum: Annotated[float | None, typer.Option(help="Momentum (SGD family, RMSProp).")] = None,
    schedule: Annotated[Schedule | None, typer.Option(help="LR decay after warmup.")] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option(help="Linear LR warmup, in epochs.")
    ] = None,
    augment: Annotated[
        Augment | None,
        typer.Option(
            help="none | light (crop+flip) | standard (+colour) | strong "
            "(+RandAugment, erasing, mixup/cutmix)."
        ),
    ] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing.")] = None,
    drop_rate: Annotated[float | None, typer.Option(help="Dropout before the head.")] = None,
    drop_path: Annotated[
        float | None, typer.Option(help="Stochastic depth (drop-path) rate in the backbone.")
    ] = None,
    ema: Annotated[
        bool | None,
        typer.Option(
            "--ema/--no-ema",
            help="Keep an EMA (Polyak average) of the weights and "
            "validate it alongside the raw weights.",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs to train (default 10).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default 32).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (split, order, init).")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Stop after this many epochs without val gain (0 = off).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Decode processes (-1 = all cores).")] = None,
    val_split: Annotated[
        float | None, typer.Option(help="Val fraction when the folder has no val/ split.")
    ] = None,
    image_size: Annotated[
        int | None, typer.Option(help="Input size (default: the model's own).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N.")] = None,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile (CUDA).")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not write decode/feature caches to disk.")
    ] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run dir to create (never overwritten).")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this run dir where it stopped.")
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune a pretrained backbone on an image folder.

    Writes a run dir with config.yaml, split.json, metrics.csv, best.pt, last.pt,
    summary.json and curves.png. Example (offline, with local weights):

      tlcli finetune ../shared/data/hymenoptera_data
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k --out runs/ants
    """

    def body() -> None:
        from tlcli.train.run import finetune as run_finetune

        if resume is None and data_dir is None:
            raise_usage("give DATA_DIR, or --resume RUN_DIR to continue a run")
        cfg = build_config(
            config,
            set_,
            {
                "model": {
                    "name": model,
                    "pretrained": False if no_pretrained else None,
                    "drop_rate": drop_rate,
                    "drop_path_rate": drop_path,
                },
                "strategy": {
                    "name": strategy.value if strategy else None,
                    "trainable_stages": trainable_stages,
                },
                "optim": {
                    "name": opt.value if opt else None,
                    "lr": lr,
                    "backbone_lr_mult": backbone_lr_mult,
                    "layer_decay": layer_decay,
                    "weight_decay": weight_decay,
                    "momentum": momentum,
                    "label_smoothing": label_smoothing,
                },
                "schedule": {
                    "name": schedule.value if schedule else None,
                    "warmup_epochs": warmup_epochs,
                },
                "data": {
                    "augment": augment.value if augment else None,
                    "batch_size": batch_size,
                    "workers": workers,
                    "val_split": val_split,
                    "image_size": image_size,
                    "cache": False if no_cache else None,
                },
                "train": {
                    "epochs": epochs,
                    "seed": seed,
                    "patience": patience,
                    "ema": ema,
                    "device": device,
                    "compile": compile,
                },
            },
        )
        from tlcli.render import RichReporter, finetune_summary_table

        with RichReporter(stderr) as reporter:
            summary = run_finetune(data_dir, cfg, out=out, resume=resume, reporter=reporter)
        if json_:
            print_json({k: v for k, v in summary.items() if k != "history"})
        else:
            stderr.print(finetune_summary_table(summary))

    run_command(body)


def raise_usage(message: str) -> None:
    from tlcli.errors import ConfigError

    raise ConfigError(message)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
