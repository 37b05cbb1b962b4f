"""`finetune` end to end: folder -> scan -> split -> cache -> model + plan -> loop -> run dir.

The run dir holds everything needed to understand and resume a run: config.yaml (resolved),
run.json (data folder, strategy reasons), split.json, metrics.csv, best.pt, last.pt,
summary.json and curves.png. An existing run dir is never overwritten unless resumed.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from tlcli.atomic import (
    release_claim,
    write_text_atomically,
)
from tlcli.checkpoint import (
    Checkpoint,
    TrainState,
    checkpoint_metrics,
    load_checkpoint,
    save_checkpoint,
)
from tlcli.config import Config, apply_overrides, config_from_dict, config_to_dict
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import DecodedImages, decode_images, resolve_workers
from tlcli.data.duplicates import duplicate_groups
from tlcli.data.manifest import scan_data
from tlcli.data.scan import FolderScan, Sample, Skipped
from tlcli.data.split import (
    kept_together,
    load_split,
    merge_groups,
    save_split,
    train_val_samples,
)
from tlcli.errors import (
    ConfigError,
    DataError,
    FolderChanged,
    Interrupted,
    ResourceError,
    RunDirError,
    TrainingDiverged,
)
from tlcli.interrupt import interrupted_word
from tlcli.models import (
    DataSpec,
    architecture_of,
    classifier_param_names,
    create_model,
    data_spec_of,
    pick_device,
)
from tlcli.progress import NullReporter, Reporter
from tlcli.report import REPORT_FILE, write_finetune_report
from tlcli.strategy import FreezePlan, StagePlan, apply_plan, plan_for_model
from tlcli.track import Tracker, Tracking, open_tracker
from tlcli.train.averaging import (
    model_state,
    pick_average,
    recompute_batchnorm,
    running_average,
    score_averages,
)
from tlcli.train.distributed import (
    SINGLE,
    World,
    barrier,
    broadcast_object,
    close_world,
    init_world,
    rank_device,
    wrap_model,
)
from tlcli.train.loop import (
    EarlyStopping,
    EpochHook,
    LoopSetup,
    LoopState,
    call_hooks,
    run_epochs,
)
from tlcli.train.optim import create_optimizer
from tlcli.train.run_state import (
    cpu_state,
    library_versions,
    remove_stale_temp_files,
    rng_state,
    seed_everything,
    set_rng_state,
)
from tlcli.train.rundir import (
    RunDir,
    RunInfo,
    claim_run_to_resume,
    create_run_dir,
)
from tlcli.train.summary import RunSummary

# --strategy auto: measure the data, return the config to follow and the reasons. Given by the
# caller (recommend.advise.auto_strategy): train is below recommend and never imports it.
StrategyChooser = Callable[
    [Config, FolderScan, list[Sample], torch.nn.Module, DataSpec, Reporter],
    tuple[Config, list[str]],
]

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "ema_val_loss",
    "ema_val_acc",
    "lr",
    "update_ratio",
    "backbone_update_ratio",
    "seconds",
)
# Skipped files named on the terminal before "... and N more".
MAX_SKIPPED_NOTES = 20


# train.rundir.RunDir: the run dir's files; the name the code below grew up with.
RunPaths = RunDir


def amp_dtype_for(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 autocast on CUDA GPUs that support it (no loss scaling needed); fp32 elsewhere."""
    if enabled and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def decode_split(
    samples: list[Sample], spec: DataSpec, cfg: Config, reporter: Reporter, name: str
) -> DecodedImages:
    reporter.start(f"decode-{name}", len(samples), f"decode {name}")
    decoded = decode_images(
        samples,
        spec.cache_size,
        spec.interpolation,
        cfg.data.max_pixels,
        resolve_workers(cfg.data.workers),
        cfg.data.cache,
        lambda n: reporter.advance(f"decode-{name}", n),
        cfg.data.stream,
    )
    reporter.finish(f"decode-{name}")
    if decoded.streamed:
        reporter.note(f"{name}: streaming the images from their files ({decoded.streamed})")
    return decoded


def scan_with_progress(data_dir: Path, cfg: Config, reporter: Reporter) -> FolderScan:
    reporter.start("scan", None, "scan images")
    scan = scan_data(data_dir, cfg.data.max_pixels, lambda: reporter.advance("scan"))
    reporter.finish("scan")
    for warning in scan.warnings:
        reporter.note(warning, "warning")
    report_skipped(reporter, scan.skipped)
    return scan


def split_groups(scan: FolderScan, cfg: Config, reporter: Reporter) -> dict[Path, object]:
    """Groups a made split keeps on one side: a manifest's `group` column, and near-duplicate
    clusters (data.group_duplicates); {} when the data comes split already."""
    if scan.layout == "split" and scan.splits.get("val"):
        return {}
    pool = scan.splits["train"] if scan.layout == "split" else scan.splits["all"]
    return groups_of_samples(scan, pool, cfg, reporter, "split")


def groups_of_samples(
    scan: FolderScan, samples: list[Sample], cfg: Config, reporter: Reporter, use: str
) -> dict[Path, object]:
    """Path -> group for the samples in groups of two or more: the manifest's `group` column
    joined through near-duplicate clusters (data.group_duplicates); `use` ("split" or "cv")
    keeps each group on one side or inside one fold."""
    keep = "on one side" if use == "split" else "inside one fold"
    paths = [s.path for s in samples]
    clusters: list[list[int]] = []
    if cfg.data.group_duplicates:
        reporter.start("hash", len(paths), f"hash images (near-duplicates stay {keep})")
        _, clusters = duplicate_groups(
            [str(p) for p in paths],
            resolve_workers(cfg.data.workers),
            lambda: reporter.advance("hash"),
        )
        reporter.finish("hash")
    named = getattr(scan, "groups", {})
    groups = merge_groups(paths, named, clusters)
    together = kept_together(samples, groups)
    if together or clusters:
        reporter.note(
            f"{use}: {together} group(s) kept {keep} ({len(clusters)} near-duplicate "
            f"cluster(s), {len(set(named.values()))} manifest group(s))"
        )
    return groups


def cv_groups(
    scan: FolderScan, samples: list[Sample], cfg: Config, reporter: Reporter
) -> dict[Path, object]:
    """Groups --cv keeps inside one fold, over train+val: a split tlcli made already grouped
    its whole pool (prepare_job reuses it); one given as folders, or read back on resume,
    is grouped here."""
    return groups_of_samples(scan, samples, cfg, reporter, "cv")


def report_skipped(reporter: Reporter, skipped: list[Skipped]) -> None:
    """Name each file passed over (up to a screenful; summary.json lists them all)."""
    for item in skipped[:MAX_SKIPPED_NOTES]:
        reporter.note(f"skipped {item.path}: {item.reason}", "warning")
    if len(skipped) > MAX_SKIPPED_NOTES:
        reporter.note(
            f"... and {len(skipped) - MAX_SKIPPED_NOTES} more skipped files "
            "(all listed in summary.json / --json)",
            "warning",
        )


def checkpoint_payload(
    model: torch.nn.Module,
    ema: Any,
    arch: str,
    model_kwargs: dict,
    classes: list[str],
    spec: DataSpec,
    plan: FreezePlan,
    cfg: Config,
    state: LoopState,
    source: str,
) -> Checkpoint:
    last_row = state.history[-1] if state.history else {}
    return Checkpoint(
        architecture=arch,
        model_kwargs=model_kwargs,
        source=source,
        classes=list(classes),
        data=spec.to_dict(),
        plan=plan.to_dict(),
        config=config_to_dict(cfg),
        metrics=checkpoint_metrics(state.epoch, state.best_epoch, state.best_acc, last_row),
        best_weights=state.best_weights,
        versions=library_versions(),
        state_dict=cpu_state(model),
        ema_state_dict=cpu_state(ema.module) if ema else None,
    )


def write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    write_text_atomically(path, buffer.getvalue())


def plan_from_dict(data: dict[str, Any]) -> FreezePlan:
    return FreezePlan(
        data["strategy"],
        int(data["trainable_stages"]),
        tuple(StagePlan(**s) for s in data["stages"]),
    )


@dataclass
class TrainingJob:
    """Everything prepared for training: data decoded, model built, plan applied."""

    cfg: Config
    data_dir: Path
    scan: FolderScan
    classes: list[str]
    train_samples: list[Sample]
    val_samples: list[Sample]
    model: torch.nn.Module
    arch: str
    model_kwargs: dict[str, Any]
    spec: DataSpec
    plan: FreezePlan
    lr_mults: dict[str, float]
    device: torch.device
    augmenter: BatchAugmenter
    train_data: DecodedImages
    val_data: DecodedImages
    strategy_reasons: list[str]
    split_groups: int = 0  # groups (near-duplicates, manifest groups) a made split kept together
    cv_groups: dict[Path, object] = field(default_factory=dict)  # --cv keeps each in a fold

    @property
    def skipped(self) -> list[Skipped]:
        return self.train_data.skipped + self.val_data.skipped + list(self.scan.skipped)

    def probe_inputs(self) -> tuple:
        """The leading arguments of head_fit's fit_linear_probe and fit_head_on_features."""
        return (
            self.model,
            self.train_data,
            self.val_data,
            self.augmenter,
            self.device,
            self.cfg,
            self.spec,
        )

    def checkpoint(self, ema: Any, state: LoopState) -> Checkpoint:
        return checkpoint_payload(
            self.model,
            ema,
            self.arch,
            self.model_kwargs,
            self.classes,
            self.spec,
            self.plan,
            self.cfg,
            state,
            self.cfg.model.name,
        )


def prepare_job(
    data_dir: Path,
    cfg: Config,
    reporter: Reporter,
    last: Checkpoint | None = None,
    split_path: Path | None = None,
    world: World = SINGLE,
    choose_strategy: StrategyChooser | None = None,
) -> TrainingJob:
    """Scan, split, build the model, resolve the strategy, decode: shared by finetune,
    lr-find and tune. With `last` (resume), the split and weights come from the run.
    choose_strategy resolves --strategy auto, at this point of the seeded run."""
    seed_everything(cfg.train.seed)
    device = pick_device(rank_device(world, cfg.train.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: pick the fastest conv kernels
    scan = scan_with_progress(data_dir, cfg, reporter)
    classes, train_samples, val_samples, kept, groups = job_split(
        scan, cfg, reporter, last, split_path
    )
    model, model_kwargs = job_model(cfg, len(classes), last)
    spec = data_spec_of(model, cfg.data.image_size)
    reasons: list[str] = []
    if last is not None:
        plan = plan_from_dict(last.plan)
        model.load_state_dict(last.state_dict)
    else:
        if cfg.strategy.name == "auto":
            if choose_strategy is None:
                raise ValueError("strategy auto needs choose_strategy (advise.auto_strategy)")
            # Measured once, on rank 0; every rank follows the same decision.
            if world.is_main:
                cfg, reasons = choose_strategy(cfg, scan, train_samples, model, spec, reporter)
            cfg, reasons = broadcast_object((cfg, reasons), world)
        plan = plan_of_config(model, cfg)
    lr_mults = apply_plan(model, plan)
    reporter.note(
        f"strategy {plan.strategy}: training {plan.trainable_params:,} of {plan.total_params:,} "
        f"parameters; frozen: {', '.join(plan.frozen_stage_names) or 'nothing'}"
    )
    train_data, val_data = job_data(train_samples, val_samples, classes, spec, cfg, reporter, world)
    model.to(device)
    if cfg.train.channels_last:
        # NHWC: ~2x faster convs on CPU (oneDNN) and on tensor cores.
        model.to(memory_format=torch.channels_last)
    augmenter = BatchAugmenter(
        PRESETS[cfg.data.augment],
        spec.input_size,
        spec.mean,
        spec.std,
        len(classes),
        cfg.optim.label_smoothing,
    )
    return TrainingJob(
        cfg,
        Path(data_dir),
        scan,
        classes,
        train_samples,
        val_samples,
        model,
        architecture_of(model),
        model_kwargs,
        spec,
        plan,
        lr_mults,
        device,
        augmenter,
        train_data,
        val_data,
        reasons,
        kept,
        groups,
    )


def plan_of_config(model: torch.nn.Module, cfg: Config) -> FreezePlan:
    """The freeze plan of cfg.strategy (auto already resolved) for this model's stages."""
    return plan_for_model(
        model,
        cfg.strategy.name,
        cfg.strategy.trainable_stages,
        cfg.optim.backbone_lr_mult,
        cfg.optim.layer_decay,
    )


def job_split(
    scan: FolderScan,
    cfg: Config,
    reporter: Reporter,
    last: Checkpoint | None,
    split_path: Path | None,
) -> tuple[list[str], list[Sample], list[Sample], int, dict[Path, object]]:
    """(classes, train, val, groups kept together, --cv groups): a resumed run's own
    split.json, or the seeded stratified split with near-duplicate and manifest groups on one
    side. --cv reuses the split's groups, or groups train+val when the split came as folders."""
    groups: dict[Path, object] | None = None  # None: no split made here to reuse for --cv
    kept = 0
    if last is not None and split_path is not None:
        classes, splits = load_split(split_path, scan.root)
        train_samples, val_samples = splits["train"], splits["val"]
        refuse_missing_split_files(train_samples + val_samples, split_path.parent)
    else:
        classes = scan.classes
        groups = split_groups(scan, cfg, reporter)
        train_samples, val_samples = train_val_samples(
            scan, cfg.data.val_split, cfg.train.seed, groups
        )
        kept = kept_together(train_samples + val_samples, groups)
        if scan.layout == "split" and scan.splits.get("val"):
            groups = None  # the split came as folders: nothing was grouped
    if not cfg.train.cv_folds:
        groups = {}
    elif groups is None:
        groups = cv_groups(scan, train_samples + val_samples, cfg, reporter)
    return classes, train_samples, val_samples, kept, groups


def job_model(
    cfg: Config, num_classes: int, last: Checkpoint | None
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The timm model with a new head, and the kwargs a checkpoint rebuilds it with. A
    resumed run rebuilds from last.pt: no download, same head."""
    model = create_model(
        cfg.model.name,
        num_classes,
        pretrained=cfg.model.pretrained and last is None,
        drop_rate=cfg.model.drop_rate,
        drop_path_rate=cfg.model.drop_path_rate,
    )
    model_kwargs: dict[str, Any] = {"num_classes": num_classes, "drop_rate": cfg.model.drop_rate}
    if cfg.model.drop_path_rate > 0:
        model_kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    return model, model_kwargs


def job_data(
    train_samples: list[Sample],
    val_samples: list[Sample],
    classes: list[str],
    spec: DataSpec,
    cfg: Config,
    reporter: Reporter,
    world: World,
) -> tuple[DecodedImages, DecodedImages]:
    """Both splits decoded (rank 0 fills the disk cache first); a class with no decodable
    train image, or no decodable val image at all, is one line."""
    if not world.is_main:
        barrier(world)  # rank 0 fills the disk cache first; the others then read it
    train_data = decode_split(train_samples, spec, cfg, reporter, "train")
    val_data = decode_split(val_samples, spec, cfg, reporter, "val")
    if world.distributed and world.is_main:
        barrier(world)
    for note in dict.fromkeys(d.cache_note for d in (train_data, val_data) if d.cache_note):
        reporter.note(note, "warning")  # once, though both splits fell back
    report_skipped(reporter, train_data.skipped + val_data.skipped)
    missing = sorted(set(range(len(classes))) - set(train_data.labels.tolist()))
    if missing:
        raise DataError(
            "no decodable train images left for class(es) "
            f"{', '.join(classes[i] for i in missing)}; fix or add images"
        )
    if len(val_data) == 0:
        raise DataError("no decodable validation images; fix the val/ folder or the images")
    return train_data, val_data


def refuse_missing_split_files(samples: list[Sample], run_root: Path) -> None:
    """--resume trains on the split the run started with: a file of it that is gone since is
    a one-line FolderChanged that says how to go on."""
    gone = [s.path for s in samples if not s.path.exists()]
    if gone:
        more = f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""
        raise FolderChanged(
            f"{gone[0]}{more} is in the split of {run_root} but gone from the data folder: the "
            f"folder changed; restore it and run tlcli finetune --resume {run_root} again, or "
            "start a new run with --out"
        )


def finetune(
    data_dir: Path | None,
    cfg: Config,
    out: Path | None = None,
    resume: Path | None = None,
    reporter: Reporter | None = None,
    tracking: Tracking | None = None,
    epochs: int | None = None,
    choose_strategy: StrategyChooser | None = None,
    hooks: Sequence[EpochHook] = (),
) -> dict[str, Any]:
    """Train a classifier on an image folder; returns summary.json's dict (a RunSummary's
    to_dict(), as `finetune --json` prints it).

    resume: a run dir to continue with its own config.yaml (cfg is not used then); with
    epochs, to that many epochs (see resume_plan). Under torchrun, each process trains its
    share of every batch (DDP); rank 0 alone writes files, reports and logs to the tracker
    (tracking: MLflow or TensorBoard, opt-in). choose_strategy: needed for --strategy auto
    (recommend.advise.auto_strategy). hooks: more epoch-end hooks (train.loop.EpochHook, e.g.
    tune's pruning), run after early stopping and before the checkpoint."""
    world = init_world(cfg.train.device)
    try:
        # The run dir's claim (claims) is let go when the run ends.
        with open_tracker(tracking, world.is_main) as tracker, contextlib.ExitStack() as claims:
            main_reporter = reporter if world.is_main else None
            request = RunRequest(data_dir, cfg, out, resume, epochs, choose_strategy, hooks)
            return _finetune(world, request, main_reporter, tracker, claims).to_dict()
    finally:
        close_world(world)


@dataclass(frozen=True)
class RunRequest:
    """What finetune() was asked for: a new run of data_dir into out (None: a default run
    dir), or resume, a run dir to continue (to epochs); see finetune."""

    data_dir: Path | None
    cfg: Config
    out: Path | None = None
    resume: Path | None = None
    epochs: int | None = None
    choose_strategy: StrategyChooser | None = None
    hooks: Sequence[EpochHook] = ()


def _finetune(
    world: World,
    request: RunRequest,
    reporter: Reporter | None,
    tracker: Tracker,
    claims: contextlib.ExitStack,
) -> RunSummary:
    """Open or create the run dir, prepare the job, fit the head or train the epochs, then
    the results (calibration, metrics, summary, report)."""
    reporter = reporter or NullReporter()
    started = time.perf_counter()
    data_dir, cfg, epochs, last = request.data_dir, request.cfg, request.epochs, None
    if request.resume is not None:
        paths, cfg, data_dir, last = open_run_to_resume(Path(request.resume), epochs, world, claims)
    else:
        if data_dir is None:
            raise DataError("give a DATA_DIR (or --resume RUN_DIR)")
        paths = new_run_dir(request.out, data_dir, world, claims)
    job = prepare_job(data_dir, cfg, reporter, last, paths.split, world, request.choose_strategy)
    if world.is_main:
        write_run_files(job, paths, last, epochs)
    cfg, plan = job.cfg, job.plan
    reasons = job.strategy_reasons  # a resumed run: run.json's (every rank may read it)
    if last is not None:
        reasons = paths.read_info().strategy_reasons
    plan_info = {**plan.to_dict(), "reasons": reasons, "data_dir": str(job.data_dir)}
    tracker.on_run_start(config_to_dict(cfg), plan_info, paths.root)
    lbfgs_head = plan.strategy == "head-only" and cfg.strategy.head_fit == "lbfgs"
    if lbfgs_head:
        state = fit_lbfgs_head(job, paths, reporter, world)
    else:
        state = _train_epochs(job, paths, last, reporter, world, tracker, request.hooks)
    try:
        return finish_run(job, paths, state, reporter, world, tracker, lbfgs_head, started, reasons)
    except KeyboardInterrupt:
        if lbfgs_head:
            raise Interrupted(
                f"{interrupted_word()} while the results were written: {paths.best} is saved, "
                f"{paths.summary.name} is not; run it again with another --out"
            ) from None
        raise stopped_after_training(paths, state.epoch) from None


def open_run_to_resume(
    root: Path, epochs: int | None, world: World, claims: contextlib.ExitStack
) -> tuple[RunPaths, Config, Path, Checkpoint]:
    """--resume RUN_DIR: claimed (one process trains a run), its own config and data dir,
    and last.pt with what is left to do (resume_plan); or a one-line RunDirError."""
    paths = RunPaths(root)
    if paths.config.is_file() and world.is_main:  # a run dir: one process trains it
        claims.callback(release_claim, paths.root, claim_run_to_resume(paths.root))
    if paths.config.is_file() and not paths.last.is_file():
        raise RunDirError(
            f"{root} was stopped before its first checkpoint: nothing to resume; "
            f"start again with a new --out (or delete {root})"
        )
    if not paths.last.is_file() or not paths.config.is_file():
        raise RunDirError(
            f"{root} is not a resumable run dir (no last.pt / config.yaml); "
            "pass the --out folder of an earlier finetune"
        )
    cfg = config_from_dict(yaml.safe_load(paths.config.read_text()))
    data_dir = Path(paths.read_info().data_dir)
    last = Checkpoint.from_payload(load_checkpoint(paths.last))
    cfg, last = resume_plan(paths.root, cfg, last, epochs)
    remove_stale_temp_files(paths.root)  # half-written checkpoints of a killed process
    return paths, cfg, data_dir, last


def new_run_dir(
    out: Path | None, data_dir: Path, world: World, claims: contextlib.ExitStack
) -> RunPaths:
    """A new run dir, created and claimed by rank 0; every rank gets its path."""
    root = None
    if world.is_main:
        created, claim = create_run_dir(out, data_dir)
        claims.callback(release_claim, created.root, claim)
        root = created.root
    return RunPaths(Path(broadcast_object(root, world)))


def write_run_files(
    job: TrainingJob, paths: RunPaths, last: Checkpoint | None, epochs: int | None
) -> None:
    """What --resume reads: the resolved config (auto made explicit), the split and run.json;
    an extended run's config.yaml says its new epoch count, so a later --resume goes on to N."""
    if last is None:
        save_split(
            paths.split,
            job.scan.root,
            job.classes,
            {"train": job.train_samples, "val": job.val_samples},
        )
        paths.config.write_text(yaml.safe_dump(config_to_dict(job.cfg), sort_keys=False))
        info = RunInfo(str(job.data_dir.resolve()), time.strftime("%FT%T%z"), job.strategy_reasons)
        paths.write_info(info)
    elif epochs is not None:
        config = yaml.safe_dump(config_to_dict(job.cfg), sort_keys=False)
        write_text_atomically(paths.config, config)


def fit_lbfgs_head(
    job: TrainingJob, paths: RunPaths, reporter: Reporter, world: World
) -> LoopState:
    """head-only: one full-batch L-BFGS fit on cached features, by rank 0 alone; best.pt and
    last.pt are the same model."""
    from tlcli.train.head_fit import fit_head_on_features

    if not world.is_main:
        return LoopState()
    state, ema = fit_head_on_features(
        *job.probe_inputs(),
        reporter,
        job.cv_groups,
    )
    save_checkpoint(paths.best, job.checkpoint(ema, state))
    save_checkpoint(paths.last, job.checkpoint(ema, state))
    return state


def finish_run(
    job: TrainingJob,
    paths: RunPaths,
    state: LoopState,
    reporter: Reporter,
    world: World,
    tracker: Tracker,
    lbfgs_head: bool,
    started: float,
    reasons: list[str],
) -> RunSummary:
    """After training: temperature scaling, metrics, curves, summary.json and the report;
    last, last.pt is marked finalized, so a run stopped before that redoes these on resume.
    reasons: why the strategy was chosen (every rank has them: none reads run.json here)."""
    cfg, plan = job.cfg, job.plan
    calibration: dict[str, Any] = {
        "temperature": 1.0,
        "val_ece_before": None,
        "val_ece_after": None,
    }
    if world.is_main and cfg.train.calibrate:
        calibration = calibrate_best(job, paths, reporter, also_last=lbfgs_head)
    if world.is_main:
        write_metrics(paths.metrics, state.history)
        from tlcli.plots import plot_training_curves

        if state.history:
            plot_training_curves(state.history, paths.curves)
    summary = RunSummary(
        run_dir=str(paths.root),
        data_dir=str(job.data_dir),
        model=cfg.model.name,
        strategy=plan.strategy,
        trainable_stages=plan.trainable_stages,
        strategy_reasons=reasons,
        classes=job.classes,
        num_train=len(job.train_data),
        num_val=len(job.val_data),
        split_groups_kept_together=job.split_groups,
        cv=state.history[-1].get("cv") if state.history else None,
        val_acc=state.best_acc,
        best_epoch=state.best_epoch,
        best_weights=state.best_weights,
        **probe_summary(state.history, state.best_acc, lbfgs_head),
        averages=state.averages,
        **selection_note(plan.strategy, lbfgs_head, cfg, job.data_dir, paths.best),
        balance=state.balance,
        **calibration,
        epochs_run=state.epoch,
        stopped_early=state.stopped_early,
        trainable_params=plan.trainable_params,
        total_params=plan.total_params,
        device=str(job.device),
        world_size=world.size,
        seconds=round(time.perf_counter() - started, 2),
        skipped=[dataclasses.asdict(s) for s in job.skipped],
        paths={
            "best": str(paths.best),
            "last": str(paths.last),
            "metrics": str(paths.metrics),
            "curves": str(paths.curves),
            "config": str(paths.config),
            "report": str(paths.root / REPORT_FILE),
        },
        plan=plan.to_dict(),
        history=state.history,
    )
    if world.is_main:
        paths.write_summary(summary)
        write_finetune_report(paths.root)  # from summary.json, as `tlcli report` rebuilds it
        if not lbfgs_head:
            mark_finalized(paths.last)
    artifacts = {"curves": paths.curves, "report": paths.root / REPORT_FILE, "best": paths.best}
    tracker.on_run_end(summary, artifacts)
    return summary


def mark_finalized(last: Path) -> None:
    """last.pt says the run is complete: --resume then refuses it as finished."""
    ckpt = Checkpoint.from_payload(load_checkpoint(last))
    ckpt.train_state.loop["finalized"] = True
    save_checkpoint(last, ckpt)


def resume_plan(
    root: Path, cfg: Config, last: Checkpoint, epochs: int | None
) -> tuple[Config, Checkpoint]:
    """What --resume continues: the run's own config (cfg, from its config.yaml) and last.pt,
    or with epochs, the same run extended (or cut) to that many epochs.

    A finished run (all its epochs, an early stop, or a head-only L-BFGS fit, which has no
    epochs) has nothing to resume: refused alike, exit 6. An extended run's LR schedule is
    recomputed over the new total: epoch k gets the LR that an `epochs`-epoch run has at
    epoch k (after a finished cosine that is a warm restart), and early stopping's patience
    counts afresh.
    """
    if last.train_state is None:
        raise RunDirError(
            f"{root} is finished (a head-only L-BFGS fit: one pass, no epochs to add): "
            "nothing to resume; start a new run with --out (--set strategy.head_fit=epochs "
            "trains the head by epochs)"
        )
    loop = last.train_state.loop
    done = int(loop["epoch"])
    if epochs is None:
        # Stopped after its last epoch but before the averaging, calibration and summary
        # (finalized; a checkpoint without the key predates it and was finished): redo those.
        trained_all = loop["stopped_early"] or done >= cfg.train.epochs
        if trained_all and loop.get("finalized", True):
            early = ", stopped early" if loop["stopped_early"] else ""
            raise RunDirError(
                f"{root} is finished ({done} of {cfg.train.epochs} epochs{early}): nothing to "
                f"resume; add --epochs N (more than {done}) to train it longer"
            )
        return cfg, last
    if epochs <= done:
        raise ConfigError(
            f"--epochs {epochs}: {root} has trained {done} epochs already; pass more than "
            f"{done} to train it longer"
        )
    cfg = apply_overrides(cfg, {"train": {"epochs": epochs}}, "--epochs")
    loop = {**loop, "stopped_early": False, "epochs_since_best": 0, "finalized": False}
    return cfg, dataclasses.replace(
        last, train_state=dataclasses.replace(last.train_state, loop=loop)
    )


def _train_epochs(
    job: TrainingJob,
    paths: RunPaths,
    last: Checkpoint | None,
    reporter: Reporter,
    world: World = SINGLE,
    tracker: Tracker | None = None,
    hooks: Sequence[EpochHook] = (),
) -> LoopState:
    """The epoch loop of partial/full (and head-only by epochs): LP-FT's probe or the
    resumed state first, then run_epochs with its hooks (early stopping, the caller's hooks,
    checkpoints, tracking: in that order, so last.pt records a stop), then weight averages."""
    from timm.utils import ModelEmaV3

    cfg, model = job.cfg, job.model
    lp_ft = cfg.train.lp_ft and job.plan.strategy != "head-only"
    state, probe, swa = LoopState(), None, {"state": None, "count": 0}
    if last is None:
        state, probe = fresh_state(job, paths, reporter, world, lp_ft)
    lr_mults = fine_tune_lr_mults(job, reporter) if lp_ft else job.lr_mults
    optimizer = create_optimizer(model, lr_mults, cfg.optim, fused=job.device.type == "cuda")
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay, use_warmup=True) if cfg.train.ema else None
    if last is not None:
        state, probe, swa = resumed_state(last, optimizer, ema, swa)
        reporter.note(f"resuming {paths.root} after epoch {state.epoch} of {cfg.train.epochs}")
    setup = loop_setup(job, optimizer, ema, state, lr_mults, lp_ft, world)
    hook = EpochCheckpoints(job, paths, optimizer, ema, probe, swa, world, state.epoch)
    epoch_hooks = [EarlyStopping(cfg.train.patience), *hooks, hook, tracker or Tracker()]
    with stop_messages(paths, cfg, hook):
        if last is None and state.history:  # LP-FT: the probe is epoch 0 (tracked; a trial
            others = [h for h in epoch_hooks if h is not hook]  # may be pruned on it)
            for stop in call_hooks(others, state, improved=True):
                reporter.note(stop)
        if last is None and world.is_main:
            hook.save_last(state)  # epoch 0: a run killed before its first epoch can resume
            if state.history:  # LP-FT: the probe alone is the first candidate for best.pt
                save_checkpoint(paths.best, job.checkpoint(ema, state))
        elif world.is_main and not paths.best.is_file():
            restore_best(job, paths, ema, state, probe)
        run_epochs(setup, state, reporter, epoch_hooks)
    try:
        if world.is_main:  # after the last epoch; a resume of a run stopped here redoes it
            try_weight_averages(job, paths, setup, state, ema, probe, swa, reporter)
    except KeyboardInterrupt:
        raise stopped_after_training(paths, state.epoch) from None
    return state


def fresh_state(
    job: TrainingJob, paths: RunPaths, reporter: Reporter, world: World, lp_ft: bool
) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    """A new run's state before epoch 1: LP-FT's probe (epoch 0; its weights kept for
    WiSE-FT), or the class balance resolved for a zero head."""
    if not lp_ft:
        return LoopState(balance=resolve_balance(job, reporter)), None
    try:
        state = linear_probe_first(job, reporter, world)  # before the EMA copies the model
    except KeyboardInterrupt:
        raise Interrupted(
            f"{interrupted_word()} while the linear probe was fit, before the first epoch: "
            f"nothing to resume yet; start again with another --out (or delete {paths.root})"
        ) from None
    return state, model_state(job.model)


def fine_tune_lr_mults(job: TrainingJob, reporter: Reporter) -> dict[str, float]:
    """LP-FT's fine-tune stage: a fitted head is already good, so it gets its own LRs."""
    cfg = job.cfg
    lr_mults = lp_ft_lr_mults(
        job.lr_mults,
        set(classifier_param_names(job.model)),
        cfg.train.lp_ft_head_lr_mult,
        cfg.train.lp_ft_lr_scale,
    )
    scaled = cfg.optim.lr * cfg.train.lp_ft_lr_scale
    head, backbone = scaled * cfg.train.lp_ft_head_lr_mult, scaled * cfg.optim.backbone_lr_mult
    reporter.note(
        f"LP-FT: fine-tuning at head LR {head:.2g}, backbone LR {backbone:.2g}, label smoothing "
        f"{cfg.train.lp_ft_label_smoothing:g} (the probe was fit without)"
    )
    return lr_mults


def resumed_state(
    last: Checkpoint, optimizer: torch.optim.Optimizer, ema: Any, swa: dict[str, Any]
) -> tuple[LoopState, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """last.pt's loop state, probe and SWA mean; the optimizer, EMA and RNGs restored."""
    train_state = last.train_state
    optimizer.load_state_dict(train_state.optimizer)
    if ema is not None and last.ema_state_dict is not None:
        ema.module.load_state_dict(last.ema_state_dict)
    set_rng_state(train_state.rng)
    return LoopState(**train_state.loop), train_state.probe_state_dict, train_state.swa or swa


def loop_setup(
    job: TrainingJob,
    optimizer: torch.optim.Optimizer,
    ema: Any,
    state: LoopState,
    lr_mults: dict[str, float],
    lp_ft: bool,
    world: World,
) -> LoopSetup:
    """What train.loop needs, from the job and the config (the model wrapped for DDP)."""
    from tlcli.train.balance import loss_balance

    model, cfg, device = job.model, job.cfg, job.device
    head_names = set(classifier_param_names(model))
    trained = [(n, p) for n, p in model.named_parameters() if n in lr_mults]
    setup = LoopSetup(
        model=model,
        optimizer=optimizer,
        augmenter=job.augmenter,
        device=device,
        train_pixels=job.train_data.pixels,
        train_labels=job.train_data.labels,
        val_pixels=job.val_data.pixels,
        val_labels=job.val_data.labels,
        epochs=cfg.train.epochs,
        batch_size=cfg.data.batch_size,
        seed=cfg.train.seed,
        schedule=cfg.schedule,
        label_smoothing=cfg.train.lp_ft_label_smoothing if lp_ft else cfg.optim.label_smoothing,
        clip_grad_norm=cfg.optim.clip_grad_norm,
        monitor_every=cfg.train.monitor_every,
        ratio_params={
            "head": [p for n, p in trained if n in head_names],
            "backbone": [p for n, p in trained if n not in head_names],
        },
        head_warmup_epochs=cfg.strategy.head_warmup_epochs,
        ema=ema,
        balance=loss_balance(state.balance, job.train_data.labels, len(job.classes)),
        frozen_norm_stats=lp_ft and cfg.train.lp_ft_freeze_bn,
        amp_dtype=amp_dtype_for(device, cfg.train.amp),
        channels_last=cfg.train.channels_last,
        world=world,
    )
    setup.model = wrap_model(model, world, device, cfg.strategy.head_warmup_epochs > 0)
    if cfg.train.compile and device.type == "cuda":
        setup.model = torch.compile(setup.model)
    return setup


@dataclass
class EpochCheckpoints:
    """The loop's checkpoint hook: the SWA mean, best.pt when val improved, last.pt (with the
    optimizer, RNGs, probe and SWA state, so a resume is bit-exact), metrics.csv. It never
    stops the run."""

    job: TrainingJob
    paths: RunPaths
    optimizer: torch.optim.Optimizer
    ema: Any
    probe: dict[str, torch.Tensor] | None
    swa: dict[str, Any]
    world: World
    saved_epoch: int = 0  # what last.pt holds, for the messages

    def save_last(self, current: LoopState) -> None:
        payload = self.job.checkpoint(self.ema, current)
        payload.train_state = TrainState(
            optimizer=self.optimizer.state_dict(),
            loop=dataclasses.asdict(current),
            rng=rng_state(),
            probe_state_dict=self.probe,
            swa=self.swa,
        )
        save_checkpoint(self.paths.last, payload)
        self.saved_epoch = current.epoch

    def on_epoch_end(self, current: LoopState, improved: bool) -> str | None:
        if not self.world.is_main:  # one writer
            return None
        if swa_window(self.job.cfg, current.epoch):
            self.swa["state"] = running_average(
                self.swa["state"], self.swa["count"], self.job.model.state_dict()
            )
            self.swa["count"] += 1
        if improved:
            save_checkpoint(self.paths.best, self.job.checkpoint(self.ema, current))
        self.save_last(current)
        write_metrics(self.paths.metrics, current.history)
        return None


@contextlib.contextmanager
def stop_messages(paths: RunPaths, cfg: Config, hook: EpochCheckpoints) -> Iterator[None]:
    """Ctrl-C, a changed folder, CUDA OOM or divergence during the epochs: one line that says
    which epoch last.pt holds and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(
            f"{interrupted_word()}; {paths.last} holds epoch {hook.saved_epoch}: resume with "
            f"tlcli finetune --resume {paths.root}"
        ) from None
    except FolderChanged as exc:
        raise FolderChanged(
            f"{exc.message}; {paths.last} holds epoch {hook.saved_epoch}: restore the folder "
            f"and resume with tlcli finetune --resume {paths.root}"
        ) from None
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory_error(cfg.data.batch_size, paths.last, hook.saved_epoch) from None
    except FloatingPointError as exc:
        raise TrainingDiverged(
            f"training diverged: {exc}; lower the learning rate (--lr {cfg.optim.lr:g} now; "
            f"tlcli lr-find suggests one); {paths.last} holds epoch {hook.saved_epoch}"
        ) from None


def stopped_after_training(paths: RunPaths, epoch: int) -> Interrupted:
    """Ctrl-C or SIGTERM after the last epoch: averaging, calibration or the results left."""
    return Interrupted(
        f"{interrupted_word()} after the last epoch, while the results were made; "
        f"{paths.last} holds epoch {epoch}: finish with tlcli finetune --resume {paths.root}"
    )


def restore_best(
    job: TrainingJob,
    paths: RunPaths,
    ema: Any,
    state: LoopState,
    probe: dict[str, torch.Tensor] | None,
) -> None:
    """A resumed run whose best.pt was never written (a full disk right after last.pt, say)
    or was deleted: rebuilt when its best epoch is last.pt's own or LP-FT's probe (epoch 0,
    stored in last.pt); any other best epoch's weights are gone, and that is one line."""
    if state.best_epoch == state.epoch:
        save_checkpoint(paths.best, job.checkpoint(ema, state))
        return
    if state.best_epoch == 0 and probe is not None:
        model = job.model
        current = model_state(model)
        ema_current = model_state(ema.module) if ema is not None else None
        model.load_state_dict(probe)
        if ema is not None:
            ema.module.load_state_dict(probe)  # at epoch 0 the EMA is the probe
        probe_state = LoopState(
            epoch=0, history=state.history[:1], best_acc=state.best_acc, balance=state.balance
        )
        save_checkpoint(paths.best, job.checkpoint(ema, probe_state))
        model.load_state_dict(current)
        if ema is not None:
            ema.module.load_state_dict(ema_current)
        return
    raise RunDirError(
        f"{paths.best} (the best epoch, {state.best_epoch}) is missing from {paths.root}: "
        f"its weights are lost; restore the file, or start again with another --out"
    )


def swa_window(cfg: Config, epoch: int) -> bool:
    """Whether the weights at the end of this epoch go into the SWA mean (the last
    train.swa_epochs epochs; fewer than 2 is no average)."""
    return cfg.train.swa_epochs >= 2 and epoch > cfg.train.epochs - cfg.train.swa_epochs


def try_weight_averages(
    job: TrainingJob,
    paths: RunPaths,
    setup: LoopSetup,
    state: LoopState,
    ema: Any,
    probe: dict[str, torch.Tensor] | None,
    swa: dict[str, Any],
    reporter: Reporter,
) -> None:
    """SWA and WiSE-FT, each scored on val; the best one replaces best.pt's weights only if
    it beats the best epoch there (state.averages says). BatchNorm statistics are recomputed
    for the average unless training kept them frozen (LP-FT): recomputing those on the train
    images would move every feature the head was fit on (hymenoptera full: 0.78 for every
    average between a 0.948 probe and a 0.935 fine-tune)."""
    from tlcli.train.loop import evaluate_split

    cfg, model = job.cfg, job.model
    swa_state = swa["state"] if swa["count"] >= 2 else None
    probe = probe if cfg.train.wise_ft else None
    if swa_state is None and probe is None:
        return
    trained = set(job.lr_mults)

    def prepare(m: torch.nn.Module) -> None:
        if setup.frozen_norm_stats:  # LP-FT: the running statistics never moved; keep them
            return
        recompute_batchnorm(
            m,
            job.train_data.pixels,
            job.augmenter,
            job.device,
            cfg.data.batch_size * 2,
            trained,
            cfg.train.seed,
        )

    def score(m: torch.nn.Module) -> tuple[float, float]:
        return evaluate_split(setup, m, reporter, "val-average")

    recomputed = "" if setup.frozen_norm_stats else " (BatchNorm recomputed)"
    final = model_state(model)
    scored = score_averages(model, probe, final, swa_state, prepare, score)
    chosen = pick_average([c for c, _ in scored], state.best_acc)
    for candidate, _ in scored:
        reporter.note(
            f"weight average {candidate.name}{recomputed}: val {candidate.val_acc:.4f}"
            f" vs best epoch {state.best_acc:.4f}"
            + (": kept" if candidate is chosen else ": not kept")
        )
        state.averages.append({**dataclasses.asdict(candidate), "kept": candidate is chosen})
    if chosen is not None:
        weights = next(w for c, w in scored if c is chosen)
        model.load_state_dict(weights)
        state.best_acc, state.best_weights = chosen.val_acc, chosen.name
        state.best_epoch = state.epoch
        save_checkpoint(paths.best, job.checkpoint(ema, state))
        model.load_state_dict(final)


def linear_probe_first(job: TrainingJob, reporter: Reporter, world: World = SINGLE) -> LoopState:
    """LP-FT (Kumar et al., ICLR 2022): fit the head on frozen features, then fine-tune.

    A zero head's large early gradients distort the pretrained features while it learns;
    a fitted head starts near the optimum. The probe becomes epoch 0 of the history and the
    best epoch so far, so a fine-tune never ends below its own probe on val."""
    from tlcli.train.head_fit import fit_linear_probe, probe_row

    started = time.perf_counter()
    reporter.note("LP-FT: fitting the head on frozen features first (L-BFGS), then fine-tuning")
    fit, balance = fit_linear_probe(
        *job.probe_inputs(),
        reporter,
        balance=job.cfg.train.balance,
        temper=job.cfg.train.lp_ft_temper_head,
    )
    if fit.temperature != 1.0:
        reporter.note(
            f"LP-FT: the head divided by T = {fit.temperature:.3f} (its val calibration) before "
            "fine-tuning; top-1 unchanged"
        )
    if world.distributed:  # every rank fit the same head; rank 0's is the one kept
        classifier = job.model.get_classifier()
        weights = broadcast_object({k: v.cpu() for k, v in classifier.state_dict().items()}, world)
        classifier.load_state_dict(weights)
    row = probe_row(fit, 0, time.perf_counter() - started)
    reporter.epoch(row)
    return LoopState(
        epoch=0, step=0, history=[row], best_acc=fit.val_acc, best_epoch=0, balance=balance
    )


def lp_ft_lr_mults(
    lr_mults: dict[str, float], head_names: set[str], head_lr_mult: float, lr_scale: float
) -> dict[str, float]:
    """LP-FT's fine-tune stage: the fitted head at optim.lr x head_lr_mult, every LR (head
    and backbone) x lr_scale. A head tuned for speed from zero wrecks a good probe."""
    return {
        name: (head_lr_mult if name in head_names else mult) * lr_scale
        for name, mult in lr_mults.items()
    }


def resolve_balance(job: TrainingJob, reporter: Reporter) -> str:
    """--balance without LP-FT: auto is still picked by a probe's val balanced accuracy (the
    probe is fit, read, and the zero head put back)."""
    from tlcli.train.balance import class_counts, needs_balance
    from tlcli.train.head_fit import fit_linear_probe

    choice = job.cfg.train.balance
    counts = class_counts(job.train_data.labels, len(job.classes))
    if choice != "auto" or not needs_balance(counts):
        return "none" if choice == "auto" else choice
    classifier = job.model.get_classifier()
    kept = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
    _, method = fit_linear_probe(
        *job.probe_inputs(),
        NullReporter(),
        balance=choice,
    )
    classifier.load_state_dict(kept)
    reporter.note(f"balance auto: {method} (best val balanced accuracy of a linear probe)")
    return method


def calibrate_best(
    job: TrainingJob, paths: RunPaths, reporter: Reporter, also_last: bool = False
) -> dict[str, Any]:
    """Temperature scaling of best.pt's weights on the val split; T goes into best.pt."""
    from tlcli.inference import build_model, predict_logits
    from tlcli.metrics import expected_calibration_error
    from tlcli.train.calibration import fit_temperature

    payload = load_checkpoint(paths.best)
    model, _ = build_model(payload)
    model.to(job.device)
    logits = predict_logits(
        model, job.val_data.pixels, job.augmenter, job.device, job.cfg.data.batch_size * 2
    ).double()
    labels = torch.from_numpy(job.val_data.labels).long()
    temperature = fit_temperature(logits, labels)
    y = labels.numpy()
    before = expected_calibration_error(torch.softmax(logits, 1).numpy(), y)[0]
    after = expected_calibration_error(torch.softmax(logits / temperature, 1).numpy(), y)[0]
    best = Checkpoint.from_payload(payload)
    best.temperature = temperature
    save_checkpoint(paths.best, best)
    if also_last:  # head-only L-BFGS: last.pt is the same model
        last = Checkpoint.from_payload(load_checkpoint(paths.last))
        last.temperature = temperature
        save_checkpoint(paths.last, last)
    reporter.note(
        f"temperature scaling: T = {temperature:.3f} fit on val; val ECE {before:.4f} -> "
        f"{after:.4f} (15 bins); top-1 unchanged"
    )
    return {"temperature": temperature, "val_ece_before": before, "val_ece_after": after}


def selection_note(
    strategy: str, lbfgs_head: bool, cfg: Config, data_dir: Path, best: Path
) -> dict[str, Any]:
    """Honest selection: what the val split chose, so val_acc is optimistic, and the command
    that gives the unbiased number."""
    chosen = ["the head's weight decay"] if lbfgs_head or cfg.train.lp_ft else []
    if not lbfgs_head:
        chosen.append("the epoch")
        if cfg.train.swa_epochs >= 2 or (cfg.train.wise_ft and cfg.train.lp_ft):
            chosen.append("the weight averaging")
    if cfg.train.balance == "auto":
        chosen.append("the class balance")
    if cfg.train.calibrate:
        chosen.append("the temperature")
    split = "test" if (Path(data_dir) / "test").is_dir() else None
    command = (
        f"tlcli evaluate {best} {data_dir} --split test"
        if split
        else (f"tlcli evaluate {best} HELD_OUT_DIR (images no choice has seen)")
    )
    return {"selected_on_val": chosen, "unbiased_estimate": command}


def probe_summary(history: list[dict[str, Any]], best_acc: float, head_only: bool) -> dict:
    """probe_val_acc (the L-BFGS head alone on val) and gain_over_probe (what fine-tuning
    added to it); None without a probe (train.lp_ft=false)."""
    if head_only and history:
        return {"probe_val_acc": best_acc, "gain_over_probe": 0.0}
    if history and history[0].get("epoch") == 0:
        probe = history[0]["val_acc"]
        return {"probe_val_acc": probe, "gain_over_probe": best_acc - probe}
    return {"probe_val_acc": None, "gain_over_probe": None}


def out_of_memory_error(batch_size: int, last: Path, epoch: int) -> ResourceError:
    """Say which batch size to try: half, as the activations of a batch scale with it.

    We do not halve automatically: a different batch size changes the optimization (LR
    per sample, BatchNorm statistics, steps per epoch), so a run would silently differ from
    its config, and a resumed run from its first part.
    """
    kept = f"{last} keeps epoch {epoch}"
    if batch_size > 1:
        return ResourceError(
            f"out of GPU memory at batch size {batch_size} (validation uses "
            f"{2 * batch_size}); run again with --batch-size {batch_size // 2} and a new --out "
            f"({kept})"
        )
    return ResourceError(
        "out of GPU memory even at batch size 1; use a smaller --image-size, "
        f"--strategy head-only or --device cpu ({kept})"
    )
