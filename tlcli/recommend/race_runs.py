"""The race's edges: time each plan on a few batches, train each plan as a real finetune run
(RUN_DIR/race/<plan>, extended rung by rung with --resume --epochs), read its val
predictions, and continue the winner to the full epoch count in RUN_DIR itself.

`recommend --budget race` races in a temporary folder; `finetune --strategy auto` with
strategy.auto_budget=race in RUN_DIR/race, then moves the winner's run into RUN_DIR and
extends it: the winner is continued, never trained again from the start.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from tlcli.atomic import CLAIM_FILE, refuse_output_inside, release_claim, write_text_atomically
from tlcli.config import Config, apply_overrides, config_from_dict, config_to_dict
from tlcli.data.augment import PRESETS, BatchAugmenter
from tlcli.data.cache import DecodedImages, decode_images, resolve_workers
from tlcli.data.manifest import scan_data
from tlcli.data.split import load_split, train_val_samples
from tlcli.errors import Interrupted
from tlcli.interrupt import interrupted_word
from tlcli.models import create_model, data_spec_of, pick_device
from tlcli.progress import NullReporter, Reporter
from tlcli.recommend.decide import Recommendation, best_earlier_stage, decide, stages_after
from tlcli.recommend.measure import Similarity, to_plain
from tlcli.recommend.race import (
    HEAD_ONLY,
    PARTIAL_STAGES,
    Plan,
    RaceResult,
    candidate_plans,
    monotone_costs,
    race_cost,
    run_race,
    rung_epochs,
)
from tlcli.strategy import model_stages, plan_for_model
from tlcli.train.rundir import RunDir
from tlcli.train.summary import RunSummary

RACE_FOLDER = "race"
RACE_FILE = "race.json"
# Timed training steps per plan for the cost estimate (after one warm-up step).
TIMED_STEPS = 1
TIMING_BATCH = 16
# What the race runs leave out, put back for the winner's continuation: weight averages are
# tried once, at the end of the full run (each costs BatchNorm passes and a val pass).
RACE_OVERRIDES = {"train": {"swa_epochs": 0, "wise_ft": False}}


class PrefixedReporter(NullReporter):
    """The race's runs report through the user's reporter, their notes marked by plan."""

    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def start(self, task: str, total: int | None, description: str = "") -> None:
        self.inner.start(task, total, f"{self.prefix}{description}")

    def advance(self, task: str, amount: int = 1) -> None:
        self.inner.advance(task, amount)

    def finish(self, task: str) -> None:
        self.inner.finish(task)

    def epoch(self, row: dict[str, Any]) -> None:
        self.inner.epoch(row)

    def note(self, message: str, level: str = "info") -> None:
        self.inner.note(f"{self.prefix}{message}", level)


def raced_stage_counts(num_stages: int, earlier_stage_k: int | None) -> list[int]:
    """The trainable-stage counts the race times: 0 (head-only), the partial Ks, full."""
    ks = {0, num_stages, *(k for k in PARTIAL_STAGES if k < num_stages)}
    if earlier_stage_k and earlier_stage_k < num_stages:
        ks.add(earlier_stage_k)
    return sorted(ks)


@torch.no_grad()
def _time_forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.eval()
    started = time.perf_counter()
    model(x)
    return time.perf_counter() - started


def _time_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    from tlcli.strategy import set_train_mode

    set_train_mode(model)
    started = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return (time.perf_counter() - started) / steps


def time_plans(
    model: torch.nn.Module, counts: Sequence[int], image_size: int, device: torch.device
) -> dict[int, float]:
    """Seconds per train image of one epoch for each trainable-stage count (0: head-only's
    one forward pass), timed on TIMING_BATCH random images: the race's cost on this machine."""
    from tlcli.strategy import apply_plan

    model.to(device).to(memory_format=torch.channels_last)
    x = torch.randn(TIMING_BATCH, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.zeros(TIMING_BATCH, dtype=torch.long, device=device)
    n = len(model_stages(model)) - 1
    seconds: dict[int, float] = {}
    _time_forward(model, x)  # warm-up: the first pass pays for allocations
    for k in counts:
        if k == 0:
            seconds[0] = _time_forward(model, x) / TIMING_BATCH
            continue
        strategy = "full" if k >= n else "partial"
        apply_plan(model, plan_for_model(model, strategy, k, 0.1))
        _time_step(model, x, y, 1)
        seconds[k] = _time_step(model, x, y, TIMED_STEPS) / TIMING_BATCH
    return seconds


def race_candidates(
    cfg: Config, similarity: Similarity | None, rec: Recommendation, signals: Any
) -> tuple[list[Plan], dict[int, float]]:
    """The plans raced for this data and their measured cost per epoch."""
    model = create_model(cfg.model.name, 2, pretrained=False)
    stage_names = tuple(s.name for s in model_stages(model)[:-1])
    earlier = best_earlier_stage(signals) if similarity is not None else None
    earlier_k = stages_after(earlier[0], stage_names) if earlier else None
    counts = raced_stage_counts(len(stage_names), earlier_k)
    device = pick_device(cfg.train.device)
    seconds = time_plans(
        model, counts, cfg.data.image_size or data_spec_of(model).input_size, device
    )
    plans = candidate_plans(
        stage_names,
        monotone_costs(seconds),
        (rec.strategy, rec.trainable_stages),
        earlier_k,
        earlier[0] if earlier else "",
    )
    return plans, seconds


def plan_config(cfg: Config, plan: Plan, epochs: int) -> Config:
    """A race run's config: the plan's strategy, `epochs` epochs, no weight averages."""
    strategy = {"name": plan.strategy}
    if plan.strategy == "partial":
        strategy["trainable_stages"] = plan.trainable_stages
    overrides = {**RACE_OVERRIDES, "strategy": strategy}
    overrides["train"] = {**RACE_OVERRIDES["train"], "epochs": max(epochs, 1)}
    return apply_overrides(cfg, overrides, "the race")


class RaceRuns:
    """train(plan, epochs) for run_race: each plan a finetune run under `folder`, started at
    its first rung and extended (--resume --epochs) at the next."""

    def __init__(self, data_dir: Path, cfg: Config, folder: Path, reporter: Reporter) -> None:
        self.data_dir, self.cfg, self.folder, self.reporter = data_dir, cfg, folder, reporter
        self.val: DecodedImages | None = None
        self.summaries: dict[str, dict[str, Any]] = {}
        self.seconds: dict[str, float] = {}

    def run_dir(self, plan: Plan) -> Path:
        return self.folder / plan.name

    def __call__(self, plan: Plan, epochs: int) -> list[int]:
        from tlcli.train.run import finetune

        out = self.run_dir(plan)
        sub = PrefixedReporter(self.reporter, f"race {plan.name}: ")
        started = time.perf_counter()
        try:
            if not out.exists():
                summary = finetune(
                    self.data_dir, plan_config(self.cfg, plan, epochs), out, None, sub
                )
            else:
                summary = finetune(None, self.cfg, resume=out, reporter=sub, epochs=epochs)
        except Interrupted:
            raise Interrupted(
                f"{interrupted_word()} during the race ({plan.name}, to epoch {epochs}): a race "
                f"is not resumed; start again with a new --out (or delete {self.folder.parent})"
            ) from None
        self.seconds[plan.name] = self.seconds.get(plan.name, 0.0) + time.perf_counter() - started
        self.summaries[plan.name] = summary
        return self.predict(out)

    def val_images(self, run: Path) -> DecodedImages:
        """The val split every race run shares (the same data, seed and model)."""
        if self.val is None:
            scan_root = Path(json.loads((run / "split.json").read_text())["root"])
            _, splits = load_split(run / "split.json", scan_root)
            model = create_model(self.cfg.model.name, 2, pretrained=False)
            spec = data_spec_of(model, self.cfg.data.image_size)
            self.val = decode_images(
                splits["val"],
                spec.cache_size,
                spec.interpolation,
                self.cfg.data.max_pixels,
                resolve_workers(self.cfg.data.workers),
                self.cfg.data.cache,
            )
        return self.val

    def labels(self) -> list[int]:
        assert self.val is not None
        return [int(y) for y in self.val.labels]

    def predict(self, run: Path) -> list[int]:
        from tlcli.checkpoint import load_checkpoint
        from tlcli.inference import build_model, predict_logits

        val = self.val_images(run)
        ckpt = load_checkpoint(run / "best.pt")
        model, _ = build_model(ckpt)
        spec = ckpt["data"]
        augmenter = BatchAugmenter(
            PRESETS["none"], spec["input_size"], spec["mean"], spec["std"], len(ckpt["classes"])
        )
        device = pick_device(self.cfg.train.device)
        model.to(device)
        logits = predict_logits(model, val.pixels, augmenter, device, self.cfg.data.batch_size * 2)
        return logits.argmax(1).tolist()


def quick_measurement(
    data_dir: Path, cfg: Config, reporter: Reporter
) -> tuple[Similarity | None, Recommendation, Any, int, int]:
    """recommend's quick probes and decision: the race's prior and its earlier-stage plan."""
    from tlcli.recommend.advise import quick_signals

    scan = scan_data(data_dir, cfg.data.max_pixels)
    train, val = train_val_samples(scan, cfg.data.val_split, cfg.train.seed)
    model = create_model(cfg.model.name, 2, pretrained=False)
    similarity, signals = quick_signals(cfg, scan, train, model, reporter)
    return similarity, decide(signals), signals, len(train), len(val)


def estimate_note(
    plans: Sequence[Plan], final_epochs: int, num_train: int, num_val: int
) -> tuple[str, float]:
    """'race: 5 plans, ... estimated 4.0 min on this machine' and the seconds it estimates:
    the training epochs at each plan's timed cost, and a val pass (head-only's cost per image:
    a forward pass) after each; each run's start-up (scan, probe fit) is not counted."""
    rungs = rung_epochs(final_epochs)
    forward = next(p.epoch_cost for p in plans if not p.epochs_matter)
    passes = race_cost([dataclasses.replace(p, epoch_cost=1.0) for p in plans], rungs)
    seconds = race_cost(plans, rungs) * num_train + passes * num_val * forward
    shown = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    return (
        f"race: {len(plans)} plans ({', '.join(p.name for p in plans)}), successive halving "
        f"at {', '.join(map(str, rungs))} epoch(s); estimated {shown} of training on this "
        f"machine (each plan's step timed on {TIMING_BATCH} images), then the winner "
        f"continues to {final_epochs} epochs",
        seconds,
    )


def race_report(result: RaceResult, plans: Sequence[Plan], runs: RaceRuns) -> dict[str, Any]:
    """The race for --json and race.json: every plan's rungs, the paired tests, the notes."""
    return {
        "winner": result.winner,
        "best": result.best,
        "rungs": result.rungs,
        "plans": [
            {
                **dataclasses.asdict(p),
                "rungs": [
                    {"epochs": r.epochs, "val_acc": r.val_acc}
                    for r in result.results
                    if r.plan == p.name
                ],
                "epochs_trained": result.epochs_trained.get(p.name),
                "seconds": round(runs.seconds.get(p.name, 0.0), 2),
            }
            for p in plans
        ],
        "comparisons": [to_plain(c) for c in result.comparisons],
        "notes": result.notes,
    }


def race(
    data_dir: Path,
    cfg: Config,
    folder: Path,
    reporter: Reporter,
    measured: tuple[Similarity | None, Recommendation, Any, int, int] | None = None,
) -> tuple[RaceResult, dict[str, Any], RaceRuns]:
    """Measure, print the estimate, run the race in `folder` (never under DATA_DIR)."""
    refuse_output_inside(folder, [data_dir], "the race folder")
    measured = measured or quick_measurement(data_dir, cfg, reporter)
    similarity, rec, signals, num_train, num_val = measured
    plans, _ = race_candidates(cfg, similarity, rec, signals)
    note, estimate = estimate_note(plans, cfg.train.epochs, num_train, num_val)
    reporter.note(note)
    runs = RaceRuns(data_dir, cfg, folder, reporter)
    # head-only (always a candidate, and the cheapest) first: its run makes the split whose
    # val labels the race compares on.
    head_only = next(p for p in plans if not p.epochs_matter)
    first = runs(head_only, 0)

    def train(plan: Plan, epochs: int) -> list[int]:
        return first if plan is head_only else runs(plan, epochs)

    result = run_race(plans, runs.labels(), cfg.train.epochs, train)
    report = race_report(result, plans, runs)
    report["estimated_seconds"] = round(estimate, 1)
    report["seconds"] = round(sum(runs.seconds.values()), 2)
    for line in race_lines(report):
        reporter.note(line)
    return result, report, runs


def race_lines(report: dict[str, Any]) -> list[str]:
    """The race in a few lines: each plan's rungs, the winner, ties given to the cheaper."""
    lines = []
    for p in report["plans"]:
        rungs = ", ".join(f"{r['val_acc']:.4f} at {r['epochs']}" for r in p["rungs"]) or "-"
        lines.append(f"race {p['name']}: val {rungs} (cost {p['epoch_cost'] * 1000:.0f} ms/img)")
    lines += report["notes"]
    lines.append(f"race winner: {report['winner']}")
    return lines


def recommend_race(
    data_dir: Path, cfg: Config, reporter: Reporter, measured: Any = None
) -> dict[str, Any]:
    """recommend --budget race: the race in a temporary folder, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="tlcli-race-") as tmp:
        _, report, _ = race(data_dir, cfg, Path(tmp) / RACE_FOLDER, reporter, measured)
    return report


def continue_winner(
    root: Path, winner_dir: Path, cfg: Config, report: dict[str, Any]
) -> tuple[Path, int | None]:
    """Move the winner's run into root (its history, checkpoints, split and config), with the
    user's weight-average settings back, and say how far to extend it (None: finished)."""
    for item in winner_dir.iterdir():
        if item.name != CLAIM_FILE:
            shutil.move(str(item), str(root / item.name))
    shutil.rmtree(winner_dir, ignore_errors=True)
    saved = config_from_dict(yaml.safe_load((root / "config.yaml").read_text()))
    restored = dataclasses.replace(
        saved,
        train=dataclasses.replace(
            saved.train,
            swa_epochs=cfg.train.swa_epochs,
            wise_ft=cfg.train.wise_ft,
        ),
    )
    write_text_atomically(
        root / "config.yaml", yaml.safe_dump(config_to_dict(restored), sort_keys=False)
    )
    run = RunDir(root)
    reasons = [f"race winner: {report['winner']}", *report["notes"]]
    run.write_info(dataclasses.replace(run.read_info(), strategy_reasons=reasons))
    write_text_atomically(root / RACE_FILE, json.dumps(report, indent=1))
    trained = next(p for p in report["plans"] if p["name"] == report["winner"])["epochs_trained"]
    if report["winner"] == HEAD_ONLY or trained >= cfg.train.epochs:
        return root, None
    return root, cfg.train.epochs


def finetune_with_race(
    data_dir: Path,
    cfg: Config,
    out: Path | None,
    reporter: Reporter,
    tracking: Any = None,
) -> dict[str, Any]:
    """finetune --strategy auto with the race: RUN_DIR/race holds every plan's run; the
    winner's run moves to RUN_DIR and is extended to train.epochs."""
    from tlcli.train.run import create_run_dir, finetune

    paths, claim = create_run_dir(out, data_dir)
    try:
        result, report, runs = race(data_dir, cfg, paths.root / RACE_FOLDER, reporter)
        winner_dir = runs.folder / result.winner
        root, epochs = continue_winner(paths.root, winner_dir, cfg, report)
    finally:
        release_claim(paths.root, claim)
    run = RunDir(root)
    if epochs is None:  # head-only (or trained to the end in the race): the moved run's own
        text = run.summary.read_text().replace(str(winner_dir), str(root))
        summary = RunSummary.from_dict(json.loads(text))
    else:
        done = finetune(None, cfg, resume=root, reporter=reporter, tracking=tracking, epochs=epochs)
        summary = RunSummary.from_dict(done)
    summary = dataclasses.replace(summary, race=report)
    run.write_summary(summary)
    return summary.to_dict()
