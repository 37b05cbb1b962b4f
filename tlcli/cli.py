"""The `tlcli` command line: parses options, calls the library, renders. No training logic.

Heavy imports (torch, timm) happen inside commands so `tlcli --help` starts fast. Progress
and tables go to stderr; with --json, stdout carries only the JSON document.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tlcli import choices
from tlcli.config import FLAG_SETTINGS, SETTINGS
from tlcli.errors import TlcliError, resource_error_of
from tlcli.interrupt import (
    deferred_stop_signals,
    hold_stop_signals,
    interrupted_exit_code,
    interrupted_word,
    raise_if_interrupted,
    recorded_stop_signals,
)
from tlcli.runtime import set_up_process

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


class PipeConsole(Console):
    """Rich exits 1 on a closed pipe (a crash, by our table): leave it to run_command."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


stderr = PipeConsole(stderr=True, emoji=False)  # "cuda:abc" is not an emoji code
stdout = PipeConsole()
PIPED_TABLE_WIDTH = 200  # columns for a wide table written to a file or pipe
_state = {"debug": False}


def choice_enum(name: str, rows: tuple[choices.Choice | choices.OptimInfo, ...]) -> Any:
    """A str Enum of a registry's choices (Typer's choice type), named as the rows are."""
    return Enum(name, [(row.name.replace("-", "_"), row.name) for row in rows], type=str)


Strategy = choice_enum("Strategy", choices.STRATEGY_CHOICES)
Optimizer = choice_enum("Optimizer", choices.OPTIMIZER_INFOS)
Schedule = choice_enum("Schedule", choices.SCHEDULE_CHOICES)
Augment = choice_enum("Augment", choices.AUGMENT_CHOICES)
Balance = choice_enum("Balance", choices.BALANCE_CHOICES)
Track = choice_enum("Track", choices.TRACK_CHOICES)
EvalSplit = choice_enum("EvalSplit", choices.EVAL_SPLIT_CHOICES)
Weights = choice_enum("Weights", choices.WEIGHT_CHOICES_INFO)
ExportFormat = choice_enum("ExportFormat", choices.EXPORT_FORMAT_CHOICES)
Quantize = choice_enum("Quantize", choices.QUANTIZE_CHOICES_INFO)
Budget = choice_enum("Budget", choices.BUDGET_CHOICES)
Pruner = choice_enum("Pruner", choices.PRUNER_CHOICES)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


def run_command(body: Callable[[], Any]) -> Any:
    """Turn user errors into one line on stderr and their exit code; Ctrl-C exits 130 and
    SIGTERM 143."""
    try:
        with recorded_stop_signals():
            with deferred_stop_signals():
                import torch  # noqa: F401  (every command needs it: imported whole, never half)
            set_up_process()
            result = body()
            raise_if_interrupted()  # pressed, but swallowed where Python drops it
            return result
    except TlcliError as exc:
        exit_with_error(exc)
    except BrokenPipeError:  # `tlcli predict ... | head -1`: the reader had enough
        silence_closed_pipes()
        raise typer.Exit(0) from None
    except (OSError, RuntimeError) as exc:  # a full disk or GPU: a user's problem, not a bug
        error = resource_error_of(exc)
        if error is None:
            raise
        exit_with_error(error)
    except KeyboardInterrupt:
        stderr.print(f"[yellow]{interrupted_word()}[/]")
        raise typer.Exit(interrupted_exit_code()) from None


def silence_closed_pipes() -> None:
    """Point stdout (and stderr when it is the same pipe, `2>&1 | head`) at /dev/null, as
    Python's docs advise: the interpreter's last flush would otherwise print "Exception
    ignored ... BrokenPipeError"."""
    try:
        out = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file: nothing left to flush
        return
    targets = [out]
    try:
        if os.path.samestat(os.fstat(out), os.fstat(sys.stderr.fileno())):
            targets.append(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in targets:
        os.dup2(devnull, fd)
    os.close(devnull)


def exit_with_error(exc: TlcliError) -> None:
    if _state["debug"]:
        traceback.print_exc()
    stderr.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code) from None


def refuse_output_in_data(
    output: Path | None, what: str, inputs: list[Path], checkpoints: Sequence[Path] = ()
) -> None:
    """Before any work: refuse an output inside a data folder the command reads, or one that
    a checkpoint's run was trained on (its run.json)."""
    if output is None:
        return
    from tlcli.atomic import refuse_output_inside
    from tlcli.train.rundir import data_dir_of_run

    trained_on = [data_dir_of_run(Path(c).parent) for c in checkpoints]
    refuse_output_inside(output, [*inputs, *trained_on], what)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=1, default=str) + "\n")
    sys.stdout.flush()


def setting_option(key: str) -> Any:
    """The option of a config setting: its flag and help as configs' declaration says."""
    info = SETTINGS[key]
    return typer.Option(*info.flags, help=info.help_text())


def setting_overrides(ctx: typer.Context) -> dict[str, dict[str, Any]]:
    """The config settings given as options, {section: {key: value}}, found by flag in the
    declarations (config.FLAG_SETTINGS): None is not given; a --no-X flag alone sets False."""
    overrides: dict[str, dict[str, Any]] = {}
    for param in ctx.command.params:
        info = FLAG_SETTINGS.get(param.opts[0]) if param.opts else None
        if info is None:
            continue
        value = ctx.params.get(param.name)
        if isinstance(value, Enum):
            value = value.value
        if param.opts[0].startswith("--no-") and not param.secondary_opts:
            value = False if value else None
        overrides.setdefault(info.section, {})[info.key] = value
    return overrides


# Options of config settings shared by several commands: one definition each.
ModelOpt = Annotated[str | None, setting_option("model.name")]
NoPretrainedOpt = Annotated[bool, setting_option("model.pretrained")]
StrategyOpt = Annotated[Strategy | None, setting_option("strategy.name")]
TrainableStagesOpt = Annotated[int | None, setting_option("strategy.trainable_stages")]
OptimizerOpt = Annotated[Optimizer | None, setting_option("optim.name")]
BackboneLrMultOpt = Annotated[float | None, setting_option("optim.backbone_lr_mult")]
BatchSizeOpt = Annotated[int | None, setting_option("data.batch_size")]
TrainDeviceOpt = Annotated[str | None, setting_option("train.device")]
SeedOpt = Annotated[int | None, setting_option("train.seed")]
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


# What --resume accepts besides the run dir: the run's config.yaml rules everything else.
RESUME_OPTIONS = frozenset({"resume", "epochs", "json_", "track", "tracking_uri"})


def options_given(ctx: typer.Context) -> list[str]:
    """The options and arguments typed on the command line, as typed (--lr, --no-ema, DATA_DIR)."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        if param.param_type_name == "argument":
            given.append((param.name, param.name.upper()))
            continue
        flag = param.opts[0]
        if param.secondary_opts and not ctx.params.get(param.name):
            flag = param.secondary_opts[0]
        given.append((param.name, flag))
    return [flag for name, flag in given if name not in RESUME_OPTIONS]


def refuse_options_on_resume(resume: Path, given: list[str]) -> None:
    if given:
        raise_usage(
            f"{', '.join(given)} cannot be given with --resume: {resume} continues as its "
            "config.yaml says (only --epochs N may be added, to train it longer); drop "
            f"{'it' if len(given) == 1 else 'them'}, or start a new run with --out"
        )


# Arguments and options of finetune that are not config settings.
FinetuneDataArg = Annotated[
    Path | None,
    typer.Argument(help="Image folder: DATA_DIR/<class>/*.jpg, or DATA_DIR/train|val/<class>/."),
]
RunOutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Run dir to create (never overwritten).")
]
ResumeOpt = Annotated[
    Path | None, typer.Option(help="Continue the run in this run dir where it stopped.")
]
TrackOpt = Annotated[
    Track | None,
    typer.Option(
        help="Log config, every epoch's metrics, the plan and the artifacts to MLflow "
        "(pip install 'tlcli[mlflow]') or TensorBoard ('tlcli[tensorboard]')."
    ),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        help="MLflow: a tracking server or store (default ./mlruns); TensorBoard: the log "
        "folder (default RUN_DIR/tensorboard)."
    ),
]


@app.command()
def finetune(
    ctx: typer.Context,
    data_dir: FinetuneDataArg = None,
    model: ModelOpt = None,
    no_pretrained: NoPretrainedOpt = False,
    strategy: StrategyOpt = None,
    trainable_stages: TrainableStagesOpt = None,
    lr: Annotated[float | None, setting_option("optim.lr")] = None,
    backbone_lr_mult: BackboneLrMultOpt = None,
    layer_decay: Annotated[float | None, setting_option("optim.layer_decay")] = None,
    opt: OptimizerOpt = None,
    weight_decay: Annotated[float | None, setting_option("optim.weight_decay")] = None,
    momentum: Annotated[float | None, setting_option("optim.momentum")] = None,
    schedule: Annotated[Schedule | None, setting_option("schedule.name")] = None,
    warmup_epochs: Annotated[float | None, setting_option("schedule.warmup_epochs")] = None,
    augment: Annotated[Augment | None, setting_option("data.augment")] = None,
    label_smoothing: Annotated[float | None, setting_option("optim.label_smoothing")] = None,
    drop_rate: Annotated[float | None, setting_option("model.drop_rate")] = None,
    drop_path: Annotated[float | None, setting_option("model.drop_path_rate")] = None,
    ema: Annotated[bool | None, setting_option("train.ema")] = None,
    balance: Annotated[Balance | None, setting_option("train.balance")] = None,
    epochs: Annotated[int | None, setting_option("train.epochs")] = None,
    batch_size: BatchSizeOpt = None,
    seed: SeedOpt = None,
    patience: Annotated[int | None, setting_option("train.patience")] = None,
    cv: Annotated[int | None, setting_option("train.cv_folds")] = None,
    workers: Annotated[int | None, setting_option("data.workers")] = None,
    val_split: Annotated[float | None, setting_option("data.val_split")] = None,
    image_size: Annotated[int | None, setting_option("data.image_size")] = None,
    device: TrainDeviceOpt = None,
    compile: Annotated[bool | None, setting_option("train.compile")] = None,
    no_cache: Annotated[bool, setting_option("data.cache")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: RunOutOpt = None,
    resume: ResumeOpt = None,
    track: TrackOpt = None,
    tracking_uri: TrackingUriOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Fine-tune a pretrained backbone on an image folder.

    Writes a run dir with config.yaml, split.json, metrics.csv, best.pt, last.pt,
    summary.json and curves.png. Example (offline, with local weights):

      tlcli finetune ../shared/data/hymenoptera_data
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k
        --out runs/ants
    """

    def body() -> None:
        if resume is None and data_dir is None:
            raise_usage("give DATA_DIR, or --resume RUN_DIR to continue a run")
        tracking = tracking_of(track, tracking_uri)
        if resume is not None:
            refuse_options_on_resume(resume, options_given(ctx))
        cfg = build_config(config, set_, setting_overrides(ctx))
        check_cv_request(cfg)
        # Imported after the config: a bad one fails before torch loads, in a fraction of a second.
        from tlcli.render import RichReporter
        from tlcli.train.distributed import is_main_process
        from tlcli.train.run import finetune as run_finetune

        run = finetune_run_options(cfg, out, resume, tracking, epochs)
        if race_instead(cfg, resume):  # the race trains every plan itself, then the winner
            from tlcli.recommend.race_runs import finetune_with_race

            with RichReporter(stderr) as reporter:
                summary = finetune_with_race(data_dir, cfg, out, reporter, tracking)
            print_finetune_summary(summary, json_)
            return
        if not is_main_process():  # torchrun: rank 0 alone reports
            run_finetune(data_dir, cfg, **run)
            return
        with RichReporter(stderr) as reporter:
            summary = run_finetune(data_dir, cfg, reporter=reporter, **run)
        print_finetune_summary(summary, json_)

    run_command(body)


def race_instead(cfg: Any, resume: Path | None) -> bool:
    """--strategy auto with strategy.auto_budget=race, in one process (under torchrun every
    rank follows the quick decision)."""
    from tlcli.train.distributed import launched_by_torchrun

    return (
        resume is None
        and cfg.strategy.name == "auto"
        and cfg.strategy.auto_budget == "race"
        and not launched_by_torchrun()
    )


def tracking_of(track: Any, tracking_uri: str | None) -> Any:
    """The experiment tracking asked for (None without --track); a missing library fails
    now, not after the training."""
    from tlcli.track import Tracking, require_backend

    if tracking_uri is not None and track is None:
        raise_usage("--tracking-uri needs --track mlflow or --track tensorboard")
    tracking = Tracking(track.value, tracking_uri) if track else None
    require_backend(tracking)
    return tracking


def check_cv_request(cfg: Any) -> None:
    if cfg.train.cv_folds and (
        cfg.strategy.name != "head-only" or cfg.strategy.head_fit != "lbfgs"
    ):
        raise_usage(
            "--cv needs the head-only L-BFGS fit; add --strategy head-only (the other "
            "strategies train too long to repeat K times)"
        )


def finetune_run_options(
    cfg: Any, out: Path | None, resume: Path | None, tracking: Any, epochs: int | None
) -> dict[str, Any]:
    """The keyword arguments of train.run.finetune besides the data and config."""
    run: dict[str, Any] = {"out": out, "resume": resume, "tracking": tracking}
    if resume is not None:
        run["epochs"] = epochs  # --resume --epochs N
    if cfg.strategy.name == "auto":  # the probes (scikit-learn) load only when measured
        from tlcli.recommend.advise import auto_strategy

        run["choose_strategy"] = auto_strategy
    return run


def print_finetune_summary(summary: dict[str, Any], json_: bool) -> None:
    from tlcli.render import finetune_summary_table

    if json_:
        print_json({k: v for k, v in summary.items() if k != "history"})
    else:
        stdout.print(finetune_summary_table(summary))


# Options shared by evaluate, predict and export.
WeightsOpt = Annotated[
    Weights,
    typer.Option(
        help="best: the EMA weights when they scored higher on val in training, else raw; "
        "ema or raw: force one."
    ),
]
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta",
        help="Test-time augmentation: average the probabilities of the image "
        "and its horizontal flip.",
    ),
]
EvalBatchOpt = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")]


@app.command()
def recommend(
    ctx: typer.Context,
    data_dir: Annotated[Path, typer.Argument(help="Image folder (as for finetune).")],
    model: ModelOpt = None,
    candidates: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated backbones to rank by LogME and probe accuracy, "
            "e.g. resnet50.a1_in1k,convnext_tiny.fb_in22k."
        ),
    ] = None,
    budget: Annotated[
        Budget,
        typer.Option(
            help="quick: <=600 sampled images; thorough: <=3000; race: quick, then each plan "
            "trained briefly (successive halving) and the winner picked on the same val images."
        ),
    ] = Budget.quick,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Measure the data and pick how to fine-tune it (the CS231n 2x2 grid), with reasons.

    How big is the data (per class), and how similar to the pretraining domain? The choice
    and every reason are given with the measured numbers.

    Measures: images per class and imbalance; exact/near duplicates and train/val leakage;
    a linear and a kNN probe on frozen features (what head-only would reach), LogME, probes
    on earlier stages, and the original head's confidence. --budget race also trains the
    candidate plans briefly and keeps the best (its cost is printed first).

      tlcli recommend ../shared/data/hymenoptera_data
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k

      tlcli recommend DATA --budget race --json
    """

    def body() -> None:
        cfg = build_config(config, set_, setting_overrides(ctx))
        from tlcli.recommend.advise import recommend as run_recommend
        from tlcli.render import RichReporter, recommendation_panel

        names = [c.strip() for c in candidates.split(",") if c.strip()] if candidates else None
        with RichReporter(stderr) as reporter:
            result = run_recommend(data_dir, cfg, names, budget.value, reporter)
        if json_:
            print_json(result)
        else:
            for renderable in recommendation_panel(result):
                stdout.print(renderable)

    run_command(body)


@app.command()
def doctor(
    ctx: typer.Context,
    data_dir: Annotated[
        Path, typer.Argument(help="Image folder or manifest (.csv/.jsonl), as for finetune.")
    ],
    model: ModelOpt = None,
    folds: Annotated[
        int, typer.Option(min=2, help="Folds of the out-of-fold heads (each image held out once).")
    ] = 5,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write issues.csv and contact_sheet.png here (a new or empty folder).",
        ),
    ] = None,
    write_relabel: Annotated[
        Path | None,
        typer.Option(
            help="Write a manifest CSV of every image, label issues first with their suggested "
            "label: review it, then pass it back as DATA."
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Label issues shown in the table.")] = 20,
    device: TrainDeviceOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Find the images to look at: likely label issues, ambiguous images, outliers, near
    duplicates.

    Out-of-fold probabilities from k-fold L-BFGS heads on cached frozen features; label
    issues ranked by cleanlab (confident learning). Never moves or edits a file of DATA_DIR.

      tlcli doctor ../shared/data/clothing_small --out runs/doctor
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k
    """

    def body() -> None:
        from tlcli.atomic import write_text_atomically
        from tlcli.recommend.doctor import (
            check_output_paths,
            diagnose,
            relabel_manifest,
            scan_rows,
            write_report,
        )
        from tlcli.render import RichReporter, doctor_tables

        cfg = build_config(config, set_, setting_overrides(ctx))
        check_output_paths(data_dir, out, write_relabel)
        with RichReporter(stderr) as reporter:
            result, scan = diagnose(data_dir, cfg, folds, reporter)
        files = write_report(result, out) if out is not None else {}
        if write_relabel is not None:
            text = relabel_manifest(result, scan_rows(scan), write_relabel)
            write_text_atomically(write_relabel, text)
            files["relabel_manifest"] = str(write_relabel)
        result["files"] = files
        if json_:
            print_json(result)
        else:
            for table in doctor_tables(result, top):
                stdout.print(table)

    run_command(body)


EvalSplitOpt = Annotated[
    EvalSplit,
    typer.Option(
        help="Which folder of a DATA_DIR with train/val/test: auto = test, else val, else "
        "all; all = every image. A folder of class folders is always used whole."
    ),
]


@app.command()
def evaluate(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="CKPT [CKPT ...] DATA_DIR",
            help="One or more tlcli checkpoints (best.pt) or .onnx exports, then the image "
            "folder (last).",
            show_default=False,
        ),
    ],
    split: EvalSplitOpt = EvalSplit.auto,
    tta: TtaOpt = False,
    weights: WeightsOpt = Weights.best,
    batch_size: EvalBatchOpt = 64,
    device: DeviceOpt = "auto",
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write report.html, report.json, predictions.csv, confusion_matrix.png and "
            "reliability.png here (a new or empty folder)."
        ),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the full report as JSON on stdout.")
    ] = False,
) -> None:
    """Score checkpoints on a labelled image folder; several: each and their ensemble.

    Folder classes are matched by name to the checkpoint's (a subset is fine). Reports top-1,
    top-5, loss, balanced accuracy, per-class precision/recall/F1, the confusion matrix,
    calibration (ECE) and the misclassified files. Several checkpoints are also averaged
    (mean of softmax probabilities) and shown side by side. Needs only the checkpoint files:

      tlcli evaluate runs/ants/best.pt ../shared/data/hymenoptera_data --split val

      tlcli evaluate runs/a/best.pt runs/b/best.pt DATA --report-dir reports/ab
    """

    def body() -> None:
        from tlcli.atomic import check_new_dir
        from tlcli.evaluate import evaluate_models, write_report_dir
        from tlcli.inference import load_models
        from tlcli.render import RichReporter, evaluation_tables, shown

        if len(paths) < 2:
            raise_usage("give at least one checkpoint and then the data folder: CKPT DATA_DIR")
        check_option_ranges({"--batch-size": (batch_size, 1, MAX_EVAL_BATCH)})
        *checkpoints, data_dir = paths
        refuse_output_in_data(report_dir, "--report-dir", [data_dir], checkpoints)
        if report_dir is not None:
            check_new_dir(report_dir)  # fail before the work, not after
        models = load_models(checkpoints, weights.value)
        with RichReporter(stderr) as reporter:
            evaluation = evaluate_models(
                models,
                data_dir,
                split=split.value,
                tta=tta,
                batch_size=batch_size,
                device=device,
                reporter=reporter,
            )
        report = evaluation.report
        if report_dir is not None:
            report = {**report, "files": write_report_dir(evaluation, report_dir)}
        if json_:
            print_json(report)
        else:
            for table in evaluation_tables(report):
                stdout.print(table)
            if report_dir is not None:
                stdout.print(f"report written to {shown(report_dir)}/", highlight=False)

    run_command(body)


# Arguments and options of predict.
PredictCkptArg = Annotated[
    Path,
    typer.Argument(
        metavar="CKPT",
        help="A tlcli checkpoint (best.pt), or a model.onnx written by tlcli export "
        "(run by onnxruntime; its metadata has the classes and preprocessing).",
    ),
]
InputsArg = Annotated[
    list[Path],
    typer.Argument(
        metavar="INPUT...",
        help="Image files, folders (searched recursively) or manifests (.csv/.jsonl: "
        "the images their rows list).",
        show_default=False,
    ),
]
EnsembleCkptOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--ckpt",
        help="Another checkpoint to ensemble with CKPT (repeatable): the mean of their "
        "softmax probabilities is ranked.",
    ),
]
PredictionCsvOpt = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        help="Also write path, label, confidence and every class's probability to this CSV file.",
    ),
]


@app.command()
def predict(
    checkpoint: PredictCkptArg,
    inputs: InputsArg,
    ckpt: EnsembleCkptOpt = None,
    top_k: Annotated[int, typer.Option(min=1, help="How many labels per image.")] = 5,
    tta: TtaOpt = False,
    weights: WeightsOpt = Weights.best,
    batch_size: EvalBatchOpt = 64,
    device: DeviceOpt = "auto",
    csv_: PredictionCsvOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --csv file.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Top-k labels with probabilities for image files and folders.

    Files that are not readable images are reported and skipped. To ensemble, add
    checkpoints with --ckpt:

      tlcli predict runs/ants/best.pt photos/ --top-k 3

      tlcli predict ants.onnx photos/

      tlcli predict runs/a/best.pt --ckpt runs/b/best.pt photos/ --csv preds.csv
    """

    def body() -> None:
        from tlcli.atomic import check_new_file
        from tlcli.inference import load_models
        from tlcli.predict import predict_files, write_prediction_csv
        from tlcli.render import RichReporter, prediction_table, shown

        check_option_ranges(
            {"--batch-size": (batch_size, 1, MAX_EVAL_BATCH), "--top-k": (top_k, 1, MAX_TOP_K)}
        )
        refuse_output_in_data(csv_, "--csv", inputs, [checkpoint, *(ckpt or [])])
        if csv_ is not None:
            check_new_file(csv_, force)
        models = load_models([checkpoint, *(ckpt or [])], weights.value)
        with RichReporter(stderr) as reporter:
            result = predict_files(
                models,
                inputs,
                top_k=top_k,
                tta=tta,
                batch_size=batch_size,
                device=device,
                reporter=reporter,
            )
        if csv_ is not None:
            write_prediction_csv(result, csv_, force)
        if json_:
            print_json(result.report)
        else:
            stdout.print(prediction_table(result.report))
            if csv_ is not None:
                stdout.print(f"predictions written to {shown(csv_)}", highlight=False)

    run_command(body)


# Arguments and options of export.
ExportCkptArg = Annotated[
    Path, typer.Argument(metavar="CKPT", help="A tlcli checkpoint (best.pt).")
]
FormatOpt = Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx or torchscript.")]
ExportOutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="File to write; <out>.json gets the preprocessing."),
]
CheckImagesOpt = Annotated[
    Path | None,
    typer.Option(
        help="Images for the parity check (default: the run's val images, found through "
        "split.json next to CKPT)."
    ),
]
ToleranceOpt = Annotated[
    float,
    typer.Option(help="Largest allowed difference of softmax probabilities vs PyTorch."),
]
QuantizeOpt = Annotated[
    Quantize | None,
    typer.Option(
        help="int8: static onnxruntime quantization (QDQ, per-channel weights) calibrated "
        "on the run's train images; --out gets the int8 model, the checked fp32 one is "
        "kept as <out stem>.fp32.onnx, and their val top-1, CPU latency and size are "
        "compared.",
    ),
]
CalibrationImagesOpt = Annotated[
    int,
    typer.Option(min=1, help="--quantize: how many train images (a seeded sample) calibrate."),
]


@app.command()
def export(
    checkpoint: ExportCkptArg,
    format_: FormatOpt = ExportFormat.onnx,
    out: ExportOutOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset version.")] = 17,
    check_images: CheckImagesOpt = None,
    tolerance: ToleranceOpt = 1e-4,
    weights: WeightsOpt = Weights.best,
    quantize: QuantizeOpt = None,
    calibration_images: CalibrationImagesOpt = 64,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output files.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Export to ONNX or TorchScript, checked against PyTorch on real images.

    The model takes normalized NCHW float input with a dynamic batch size and returns logits;
    mean, std, input size, resize rule and class names go to <out>.json. The file is written
    only when the exported model's probabilities match PyTorch's within --tolerance (ONNX is
    run with onnxruntime when installed: pip install 'tlcli[onnx]').

      tlcli export runs/ants/best.pt --format onnx --out ants.onnx

      tlcli export runs/ants/best.pt --quantize int8 --out ants.int8.onnx
    """

    def body() -> None:
        from tlcli.atomic import check_new_file
        from tlcli.export import export_model, sidecar_path
        from tlcli.inference import load_for_inference
        from tlcli.render import RichReporter, export_table, quantization_table

        if out is None:
            raise_usage("give the file to write with --out FILE")
        check_option_ranges(
            {"--tolerance": (tolerance, 1e-12, 1.0), "--opset": (opset, *ONNX_OPSETS)}
        )
        inputs = [check_images] if check_images is not None else []
        refuse_output_in_data(out, "--out", inputs, [checkpoint])
        check_new_file(out, force)
        check_new_file(sidecar_path(out), force)
        loaded = load_for_inference(checkpoint, weights.value)
        with RichReporter(stderr) as reporter:
            result = export_model(
                loaded,
                format_.value,
                out,
                opset=opset,
                check_images=check_images,
                tolerance=tolerance,
                force=force,
                reporter=reporter,
                quantize=None if quantize is None else quantize.value,
                calibration_images=calibration_images,
            )
        if json_:
            print_json(result)
        else:
            stdout.print(export_table(result))
            if "quantization" in result:
                stdout.print(quantization_table(result["quantization"]))

    run_command(body)


# Options of the training job, shared by lr-find and tune (each also reachable via --set).
DataDirArg = Annotated[
    Path,
    typer.Argument(help="Image folder: DATA_DIR/<class>/*.jpg, or DATA_DIR/train|val/<class>/."),
]


@app.command("lr-find")
def lr_find(
    ctx: typer.Context,
    data_dir: DataDirArg,
    model: ModelOpt = None,
    no_pretrained: NoPretrainedOpt = False,
    strategy: StrategyOpt = None,
    trainable_stages: TrainableStagesOpt = None,
    opt: OptimizerOpt = None,
    backbone_lr_mult: BackboneLrMultOpt = None,
    batch_size: BatchSizeOpt = None,
    device: TrainDeviceOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    num_iter: Annotated[
        int, typer.Option(min=20, help="Steps of the test (cycles over the train set).")
    ] = 100,
    start_lr: Annotated[float, typer.Option(help="Head LR of the first step.")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="Head LR of the last step.")] = 10.0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="PNG file or folder for the plot (default lr_find.png; never overwritten).",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """The LR range test: find a learning rate before training (Smith 2017, fastai).

    Trains with the LR growing from --start-lr to --end-lr over up to
    --num-iter batches, with the chosen strategy (frozen stages stay frozen;
    the backbone gets lr x backbone_lr_mult), and stops when the smoothed loss
    explodes. Suggests the valley and the steepest-descent LR and plots loss
    vs LR. Model and optimizer are restored after: nothing is trained or saved
    but the plot. It starts from the zero head, as --set train.lp_ft=false
    trains (LP-FT fine-tunes from a fitted probe).

      tlcli lr-find ../shared/data/hymenoptera_data --strategy partial
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k
    """

    def body() -> None:
        check_option_ranges(
            {
                "--num-iter": (num_iter, 20, MAX_LR_FIND_STEPS),
                "--start-lr": (start_lr, 1e-12, 10.0),
                "--end-lr": (end_lr, 1e-12, 1000.0),
            }
        )
        cfg = build_config(config, set_, setting_overrides(ctx))
        from tlcli.render import RichReporter, lr_find_table
        from tlcli.tune.lr_find import find_lr, plot_path
        from tlcli.tune.plots import plot_lr_find

        path = plot_path(out)
        refuse_output_in_data(path, "the plot" if out is None else "--out", [data_dir])
        with RichReporter(stderr) as reporter:
            result = find_lr(data_dir, cfg, reporter, num_iter, start_lr, end_lr).to_dict()
        result["plot"] = str(plot_lr_find(result, path))
        if json_:
            print_json(result)
        else:
            stdout.print(lr_find_table(result))

    run_command(body)


# Options of tune's search.
TrialsOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Finished trials this run dir adds to the study; rerunning the same command "
        "runs only the missing ones.",
    ),
]
EpochsPerTrialOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Epochs of each trial (short: coarse). The final run's length is train.epochs.",
    ),
]
SpaceOpt = Annotated[
    Path | None,
    typer.Option(help="YAML search space: entries override the defaults (docs/tune.md)."),
]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Optuna storage URL shared by workers (default sqlite:///OUT/study.db)."),
]
StudyOpt = Annotated[str | None, typer.Option(help="Study name (default tune-<data folder name>).")]
TuneOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Run dir (default runs/tune-<data folder name>); reopened to resume.",
    ),
]
PrunerOpt = Annotated[
    Pruner,
    typer.Option(help="Stop trials behind the others' val accuracy: median, halving, none."),
]
LrFindOpt = Annotated[
    bool,
    typer.Option(
        "--lr-find/--no-lr-find",
        help="Centre the LR range on an LR range test (else on optim.lr).",
    ),
]


@app.command()
def tune(
    ctx: typer.Context,
    data_dir: DataDirArg,
    trials: TrialsOpt,
    epochs_per_trial: EpochsPerTrialOpt = 2,
    space: SpaceOpt = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    out: TuneOutOpt = None,
    pruner: PrunerOpt = Pruner.median,
    lr_find: LrFindOpt = True,
    model: ModelOpt = None,
    no_pretrained: NoPretrainedOpt = False,
    strategy: StrategyOpt = None,
    trainable_stages: TrainableStagesOpt = None,
    batch_size: BatchSizeOpt = None,
    device: TrainDeviceOpt = None,
    seed: SeedOpt = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Search hyperparameters: random trials (coarse), then TPE around the best (fine).

    Each trial is a short finetune; trials behind the others after an epoch are pruned.
    Searches the LR (log scale, centred by lr-find), backbone LR multiplier, weight
    decay, optimizer, label smoothing, augmentation, drop-path, and the strategy unless
    --strategy fixes it. Writes OUT/study.db, trials/, trials.csv, tune.png and best.yaml
    (use it as: tlcli finetune DATA_DIR --config OUT/best.yaml).

      tlcli tune ../shared/data/hymenoptera_data --trials 12 --strategy partial
        --model local-dir:../shared/weights/tf_efficientnet_lite0.in1k
        --out runs/tune-ants

    Two workers on one study (each adds its own --trials, each with its own --out):

      tlcli tune DATA --trials 6 --storage sqlite:////shared/tune.db --study ants
        --out runs/w1
      tlcli tune DATA --trials 6 --storage sqlite:////shared/tune.db --study ants
        --out runs/w2
    """

    def body() -> None:
        from tlcli.render import RichReporter
        from tlcli.tune.search import TuneSettings
        from tlcli.tune.search import tune as run_tune

        check_option_ranges(
            {
                "--trials": (trials, 1, MAX_TRIALS),
                "--epochs-per-trial": (epochs_per_trial, 1, MAX_TRIAL_EPOCHS),
            }
        )
        cfg = build_config(config, set_, setting_overrides(ctx))
        settings = TuneSettings(
            trials=trials,
            epochs_per_trial=epochs_per_trial,
            space_file=space,
            storage=storage,
            study=study,
            pruner=pruner.value,
            lr_find=lr_find,
        )
        with RichReporter(stderr) as reporter:
            summary = run_tune(data_dir, cfg, settings, out=out, reporter=reporter)
        if json_:
            print_json(summary)
        else:
            print_tune_summary(summary, data_dir)

    run_command(body)


def print_tune_summary(summary: dict[str, Any], data_dir: Path) -> None:
    """The trials table, then the best trial and the command that runs its config."""
    from tlcli.render import shown, tune_trials_table

    best = summary["best"]
    table = tune_trials_table(summary["trials"], best["number"])
    # One column per parameter: piped to a file or log, print it whole, not squeezed to 80
    # (Console.print caps its width= at the console's own width, hence a wider console).
    wide = stdout if stdout.is_terminal else PipeConsole(width=PIPED_TABLE_WIDTH)
    wide.print(table, crop=stdout.is_terminal)
    stdout.print(
        f"best: trial {best['number']}, val acc {best['val_acc']:.4f} -> "
        + shown(f"{best['config']}  (tlcli finetune {data_dir} --config {best['config']})")
        + "\n"
        + shown(f"plot: {summary['paths']['plot']}; table: {summary['paths']['trials_csv']}"),
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def report(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="RUN_DIR|REPORT_DIR",
            help="A finetune run dir, or an evaluate --report-dir folder.",
        ),
    ],
) -> None:
    """Rebuild report.html from what a run dir or a report dir holds.

    One self-contained page (figures inlined, no network): evaluate's summary, per-class
    metrics, confusion matrix, calibration and most confident errors; or finetune's plan,
    curves, epochs and update/weight health check.

      tlcli report runs/ants
    """

    def body() -> None:
        from tlcli.report import write_report

        stdout.print(f"report written to {write_report(directory)}", highlight=False)

    run_command(body)


# Bounds of the options that are not config keys (those are checked by config.validate).
MAX_EVAL_BATCH = 65536  # as data.batch_size
MAX_TOP_K = 100_000  # as many as a checkpoint may have classes
ONNX_OPSETS = (7, 20)  # what torch's TorchScript-based ONNX exporter writes
MAX_LR_FIND_STEPS = 100_000
MAX_TRIALS = 100_000
MAX_TRIAL_EPOCHS = 100_000  # as train.epochs


def check_option_ranges(options: dict[str, tuple[Any, float, float]]) -> None:
    """{option: (value, low, high)}: NaN, inf or out of range is one line, exit 2."""
    from tlcli.config import check_option_range

    for option, (value, low, high) in options.items():
        check_option_range(option, value, low, high)


def raise_usage(message: str) -> None:
    from tlcli.errors import ConfigError

    raise ConfigError(message)


def reflowed(doc: str) -> str:
    """A command's docstring as --help shows it (Rich markup): the lines of each prose
    paragraph joined, so the terminal wraps them at its own width (Typer keeps a docstring's
    line breaks, which leave ragged lines at 80 columns); indented lines (the examples) kept
    as written. Text in brackets is escaped, so pip install 'tlcli[onnx]' shows as written.
    Each example line starts with an empty style tag: Typer's cleandoc of the text would
    otherwise strip the examples' common indent when no prose line follows them."""
    from rich.markup import escape

    paragraphs = []
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        lines: list[str] = []
        for line in escape(paragraph).split("\n"):
            if line.startswith(" "):
                lines.append(f"[not bold]{line}[/not bold]")
            elif lines and not lines[-1].startswith("["):
                lines[-1] += " " + line
            else:
                lines.append(line)
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


for _command in app.registered_commands:
    _command.help = reflowed(inspect.getdoc(_command.callback) or "")


def main() -> None:
    hold_stop_signals()  # until the command's handler: a Ctrl-C then is raised there
    app()


if __name__ == "__main__":
    main()
